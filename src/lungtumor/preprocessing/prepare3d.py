"""The 3D recipe's preprocessing and cache (nnU-Net's CT scheme).

* Resampling: every case to one target spacing (x, y, z) mm, by default the training set's median spacing;
  images trilinear, masks trilinear on {0, 1} then >= 0.5. The output shape is ``round(n * s / target)``
  per axis and the inverse (:func:`restore_3d`) resizes back to the input's exact (z, y, x) grid.
* Normalisation: clip HU to the 0.5 and 99.5 percentiles of the training set's tumour voxels, then
  ``(HU - mean) / std`` with the mean/std of those (clipped) voxels. The four numbers are the ``stats``
  stored in cache.json and in every checkpoint.

Cache layout (its own folder; ``lungtumor prepare --preset 3d`` writes it)::

    CACHE/cache.json   {"version": 1, "kind": "3d", "spacing": [x, y, z], "stats": {clip_lo, clip_hi, mean, std},
                        "vol3d": {...}, "cases": [{"name", "shape": [z, y, x], "orig_shape", "orig_spacing",
                        "n_fg", "tumour_ml"}], "source": {...} (data.msd.dataset_source), "complete": true}
    CACHE/cases3d/<name>_img.npy  float16 (z, y, x) normalised, at the target spacing (np.load mmap_mode="r")
    CACHE/cases3d/<name>_seg.npy  uint8   (z, y, x) {0, 1}
    CACHE/cases3d/<name>_fg.npy   int32   (n, 3) (z, y, x) indices of up to 20000 tumour voxels (sampling)
    CACHE/splits.json  same as the 2D cache's (train, val, folds)

Resumable: per-case state in ``CACHE/.state``; a rerun reads only cases whose source or plan changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungtumor.core.config import Vol3DConfig
from lungtumor.core.config_io import to_dict
from lungtumor.core.errors import (
    InputError,
    atomic_path,
    atomic_write_text,
    check_subdirs,
    ensure_writable_dir,
)
from lungtumor.core.progress import tqdm
from lungtumor.data.msd import dataset_source, load_dataset
from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.imaging.orientation import canonical_pair
from lungtumor.imaging.volume import Volume
from lungtumor.preprocessing.cache_writer import fingerprint, save_npy, to_float16
from lungtumor.preprocessing.prepare import json_text, make_splits, npy_ok, preflight

CACHE_KIND = "3d"
_FG_SAMPLES = 10000  # tumour voxels per case kept for the intensity statistics
_FG_COORDS = 20000  # tumour voxel indices per case kept for patch sampling


# ----------------------------------------------------------------------------- pure steps


def resampled_shape(
    shape_zyx: tuple[int, ...], spacing_xyz: tuple[float, ...], target_xyz: tuple[float, ...]
) -> tuple[int, int, int]:
    """Shape (z, y, x) of a (z, y, x) array at ``spacing_xyz`` mm resampled to ``target_xyz`` mm."""
    sz = spacing_xyz[::-1]
    tz = target_xyz[::-1]
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape_zyx, sz, tz, strict=True))  # type: ignore[return-value]


def resize_3d(a: np.ndarray, shape: tuple[int, int, int], mode: str = "trilinear") -> np.ndarray:
    """Resize a (z, y, x) array to ``shape`` with torch (``align_corners=False``); float32 out, always a new
    C-contiguous array (callers normalise it in place: the input, perhaps a flipped view of a CT, must stay)."""

    if tuple(a.shape) == tuple(shape):
        return np.array(a, dtype=np.float32, order="C")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()


def normalise_ct(hu: np.ndarray, stats: Mapping[str, float]) -> np.ndarray:
    """In place where possible: clip float32 HU to [clip_lo, clip_hi], then (HU - mean) / std."""
    hu = np.asarray(hu, dtype=np.float32)
    np.clip(hu, stats["clip_lo"], stats["clip_hi"], out=hu)
    hu -= np.float32(stats["mean"])
    hu /= np.float32(stats["std"])
    return hu


def preprocess_3d(vol: Volume, spacing_xyz: tuple[float, ...], stats: Mapping[str, float]) -> np.ndarray:
    """CT volume (HU, (z, y, x)) -> model input float32 (z', y', x') at ``spacing_xyz`` mm."""
    shape = resampled_shape(vol.shape, vol.spacing, spacing_xyz)
    return normalise_ct(resize_3d(vol.array, shape), stats)


def preprocess_mask_3d(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """{0, 1} mask (z, y, x) -> uint8 ``shape`` (trilinear on the mask, then >= 0.5)."""
    if tuple(mask.shape) == tuple(shape):
        return (mask != 0).astype(np.uint8)
    return (resize_3d((mask != 0).astype(np.float32), shape) >= 0.5).astype(np.uint8)


def restore_3d(prob: np.ndarray, orig_shape: tuple[int, int, int]) -> np.ndarray:
    """Probabilities (z', y', x') at the target spacing -> float32 (z, y, x) on the input grid (trilinear)."""
    return np.clip(resize_3d(prob, orig_shape), 0.0, 1.0)


def ct_stats(fg_hu: np.ndarray, percentiles: tuple[float, float]) -> dict[str, float]:
    """nnU-Net CT statistics of foreground HU samples: clip percentiles, then mean/std of the clipped values."""
    v = np.asarray(fg_hu, dtype=np.float64).ravel()
    if v.size == 0:
        raise InputError(None, "no tumour voxels in the training cases: cannot compute CT statistics")
    lo, hi = (float(x) for x in np.percentile(v, percentiles))
    c = np.clip(v, lo, hi)
    std = float(c.std())
    return {"clip_lo": lo, "clip_hi": hi, "mean": float(c.mean()), "std": std if std > 1e-3 else 1.0}


def median_spacing(spacings: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Per-axis median of (x, y, z) spacings in mm."""
    m = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    return (float(m[0]), float(m[1]), float(m[2]))


# ----------------------------------------------------------------------------- the cache


class _State:
    """Per-case state files in ``OUT/.state``: the survey (pass 1) and the final write (pass 2)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / ".state"
        self.cases = out / "cases3d"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, case) -> dict[str, Any] | None:
        try:
            st = json.loads(self.path(case.name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        fp = json.loads(json.dumps([fingerprint(case.image), fingerprint(case.label)]))
        if (
            st.get("fingerprint") != fp
            or st.get("order") != "lps"  # surveyed before arrays were put in canonical order
            or not (self.dir / f"{case.name}_fghu.npy").is_file()
        ):
            return None
        return st

    def save(self, name: str, st: dict[str, Any]) -> None:
        with atomic_path(self.path(name)) as tmp:
            tmp.write_text(json.dumps(st), encoding="utf-8")


def _survey(case, state: _State, seed: int) -> dict[str, Any]:
    """Read one case; keep its spacing, shape and a deterministic sample of tumour HU."""
    vol = read_volume(case.image)
    vol, mask = canonical_pair(vol, read_mask(case.label, reference=vol))  # LPS order, as predict sees it
    fg = vol.array[mask.array != 0]
    rng = np.random.default_rng(seed)
    if fg.size > _FG_SAMPLES:
        fg = fg[np.sort(rng.choice(fg.size, _FG_SAMPLES, replace=False))]
    save_npy(state.dir / f"{case.name}_fghu.npy", fg.astype(np.float32))
    st = {
        "fingerprint": [fingerprint(case.image), fingerprint(case.label)],
        "order": "lps",  # the shape and spacing below are those of the canonical order
        "orig_shape": [int(v) for v in vol.shape],
        "orig_spacing": [float(v) for v in vol.spacing],
        "tumour_ml": float(np.count_nonzero(mask.array)) * vol.voxel_volume_mm3 / 1000.0,
        "final": None,
    }
    state.save(case.name, st)
    return st


def _write_case(case, st: dict[str, Any], state: _State, plan: dict, shape: tuple, seed: int) -> int:
    """Resample and write one case's img/seg/fg arrays unless done for this ``plan``; 1 when it was read."""
    img_p, seg_p, fg_p = (state.cases / f"{case.name}_{k}.npy" for k in ("img", "seg", "fg"))
    done = st.get("final") == json.loads(json.dumps(plan))
    if done and npy_ok(img_p, shape, "float16") and npy_ok(seg_p, shape, "uint8") and fg_p.is_file():
        return 0
    vol = read_volume(case.image)
    vol, mask = canonical_pair(vol, read_mask(case.label, reference=vol))
    seg = preprocess_mask_3d(mask.array, shape)
    img = preprocess_3d(vol, tuple(plan["spacing"]), plan["stats"])
    idx = np.argwhere(seg != 0).astype(np.int32)
    if len(idx) > _FG_COORDS:
        idx = idx[np.random.default_rng(seed).choice(len(idx), _FG_COORDS, replace=False)]
    save_npy(img_p, to_float16(img))
    save_npy(seg_p, seg)
    save_npy(fg_p, idx)
    st["final"] = plan
    st["n_fg"] = int(np.count_nonzero(seg))
    state.save(case.name, st)
    return 1


def prepare_dataset_3d(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    cfg: Vol3DConfig,
    val_cases: int | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> str:
    """Write the 3D cache for ``dataset`` into ``out`` (layout in the module docstring); returns a summary.

    Spacing and statistics come from every labelled case (nnU-Net's dataset fingerprint; the same for every
    fold of a cross-validation); ``cfg.target_spacing`` overrides the median spacing when non-zero.

    Raises:
        InputError: bad dataset, case or option; ``out`` not writable.
    """

    ds = load_dataset(dataset)
    splits = make_splits([c.name for c in ds.cases], val_cases, folds, seed, ds.validation)
    preflight(ds.cases)
    lo, hi = cfg.clip_percentiles
    if not 0 <= lo < hi <= 100:
        raise InputError("vol3d.clip_percentiles", f"need 0 <= low < high <= 100, got {cfg.clip_percentiles}")
    out = Path(out)
    created = not out.exists()
    ensure_writable_dir(out)
    state = _State(out)
    check_subdirs(out, state.dir.name, state.cases.name)  # before anything is written: no link out of OUT
    try:
        with contextlib.suppress(FileNotFoundError):
            (out / "cache.json").unlink()
        state.dir.mkdir(exist_ok=True)
        state.cases.mkdir(exist_ok=True)
        states: dict[str, dict[str, Any]] = {}
        n_read = 0
        for i, case in enumerate(tqdm(ds.cases, desc="survey", unit="case", disable=not progress)):
            st = state.load(case)
            if st is None:
                st = _survey(case, state, seed * 100003 + i)
                n_read += 1
            states[case.name] = st
        train = sorted(states)
        if any(v > 0 for v in cfg.target_spacing):
            if min(cfg.target_spacing) <= 0:
                raise InputError(
                    "vol3d.target_spacing", "give all three spacings (x, y, z) in mm, or all zeros"
                )
            spacing = tuple(float(v) for v in cfg.target_spacing)
        else:
            spacing = median_spacing([tuple(states[n]["orig_spacing"]) for n in train])  # type: ignore[misc]
        fg = [np.load(state.dir / f"{n}_fghu.npy") for n in train]
        stats = ct_stats(np.concatenate(fg) if fg else np.zeros(0), (lo, hi))
        plan = {"spacing": list(spacing), "stats": stats}
        entries = []
        for i, case in enumerate(tqdm(ds.cases, desc="resample", unit="case", disable=not progress)):
            st = states[case.name]
            shape = resampled_shape(tuple(st["orig_shape"]), tuple(st["orig_spacing"]), spacing)
            n_read += _write_case(case, st, state, plan, shape, seed + i)
            entries.append(
                {
                    "name": case.name,
                    "shape": list(shape),
                    "orig_shape": st["orig_shape"],
                    "orig_spacing": st["orig_spacing"],
                    "n_fg": int(st.get("n_fg", 0)),
                    "tumour_ml": st["tumour_ml"],
                }
            )
        cache = {
            "version": 1,
            "kind": CACHE_KIND,
            "spacing": list(spacing),
            "stats": stats,
            "vol3d": to_dict(cfg),
            "cases": entries,
            "source": dataset_source(ds),  # where the data came from: the model card reads it
            "complete": True,
        }
        atomic_write_text(out / "splits.json", json_text(splits))
        atomic_write_text(out / "cache.json", json_text(cache))
    except InputError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    except OSError as e:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise InputError(
            getattr(e, "filename", None) or out, f"cannot write cache ({e.strerror or e})"
        ) from None
    sp = ", ".join(f"{v:.3g}" for v in spacing)
    return (
        f"prepared {len(entries)} cases (3D) into {out} ({n_read} reads): spacing ({sp}) mm; "
        f"split {len(splits['train'])}/{len(splits['val'])} train/val, {len(splits['folds'])} folds; "
        f"HU clipped to [{stats['clip_lo']:.4g}, {stats['clip_hi']:.4g}], (HU - {stats['mean']:.4g}) / {stats['std']:.4g}"
    )


def is_3d_cache(root: str | os.PathLike) -> bool:
    """True when ``root/cache.json`` is a 3D cache."""
    try:
        return json.loads((Path(root) / "cache.json").read_text(encoding="utf-8")).get("kind") == CACHE_KIND
    except (OSError, ValueError, AttributeError):
        return False
