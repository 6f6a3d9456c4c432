"""Preprocessing (shared by ``prepare`` and ``predict``) and the prepared training cache.

Recipes (:class:`lungtumor.config.PrepConfig`):

* ``norm="divide"``: HU / ``hu_divisor`` (the seed's recipe; no clipping).
* ``norm="window_zscore"``: clip HU to ``window_hu``, then ``(HU - mean) / std`` with the training set's
  statistics (``stats``), computed by :func:`prepare_dataset` over the in-plane resampled, clipped HU of
  every training case (padding excluded).
* ``resize="size"``: every axial slice is resized to ``size`` (y, x) pixels.
* ``resize="spacing"``: slices are resampled in-plane to ``spacing_mm``, then centre padded (with air: the
  window's low value, or -1000 HU for ``divide``) or centre cropped to ``size``.

z is never resampled. The array axes stay as stored: the in-plane resize works in voxel space using the
x and y spacing, whatever the direction matrix, so :func:`restore_geometry` gives back exactly the input's
(z, y, x) grid. Images are resized with bilinear interpolation (``align_corners=False``), masks with
``nearest-exact``. The cache format is described in ``docs/design.md``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.config import PrepConfig, to_dict
from lungtumor.errors import InputError, atomic_path, atomic_write_text, ensure_writable_dir
from lungtumor.volume import Volume, read_mask, read_volume

CACHE_VERSION = 1
_CHUNK = 32  # slices per interpolate call: bounds temporary memory
_MEMORY_BUDGET = 2 << 30  # bytes of prepared HU kept in memory before spilling to disk


@dataclass(frozen=True)
class PrepGeometry:
    """How a (z, y, x) volume maps onto the prepared (z, H, W) frame; primitives only.

    Attributes:
        orig_shape: input array shape (z, y, x).
        resized: in-plane shape (y', x') after the resize, before padding/cropping.
        offset: (row, col) of the resized slice's pixel (0, 0) in the output frame; negative = cropped.
        size: output in-plane shape (H, W).
    """

    orig_shape: tuple[int, int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrepGeometry:
        return cls(*(tuple(int(v) for v in d[k]) for k in ("orig_shape", "resized", "offset", "size")))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- pure preprocessing


def _geometry(vol: Volume, prep: PrepConfig) -> PrepGeometry:
    z, y, x = vol.shape
    size = (int(prep.size[0]), int(prep.size[1]))
    if prep.resize == "size":
        return PrepGeometry((z, y, x), size, (0, 0), size)
    if prep.resize != "spacing":
        raise ValueError(f"unknown resize {prep.resize!r}")
    sx, sy = vol.spacing[0], vol.spacing[1]
    h = max(1, int(round(y * sy / prep.spacing_mm)))
    w = max(1, int(round(x * sx / prep.spacing_mm)))
    return PrepGeometry((z, y, x), (h, w), ((size[0] - h) // 2, (size[1] - w) // 2), size)


def _overlap(n_src: int, n_dst: int, off: int) -> tuple[slice, slice]:
    """Source and destination slices along one axis when source index i lands at i + off."""
    a = max(0, -off)
    b = min(n_src, n_dst - off)
    if b <= a:
        return slice(0, 0), slice(0, 0)
    return slice(a, b), slice(a + off, b + off)


def _resize(t, hw: tuple[int, int], mode: str = "bilinear"):
    """Resize a (n, y, x) float32 torch tensor in-plane to ``hw``; identity sizes are returned unchanged."""
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) == tuple(hw):
        return t
    return F.interpolate(t[:, None], size=hw, mode=mode, align_corners=False)[:, 0]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing ("nearest-exact" convention)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def _pad_hu(prep: PrepConfig) -> float:
    return float(prep.window_hu[0]) if prep.norm == "window_zscore" else -1000.0


def _prepared_hu(
    vol: Volume, prep: PrepConfig, acc: list[float] | None = None
) -> tuple[np.ndarray, PrepGeometry]:
    """Clip (window_zscore only), resize and pad/crop; returns HU as float32 (z, H, W), not yet normalised.

    ``acc`` ([n, sum, sum of squares]) accumulates statistics of the resized HU before padding, on a
    deterministic 1-in-8 subsample (every other slice, row and column).
    """
    import torch

    geom = _geometry(vol, prep)
    z, y, x = geom.orig_shape
    H, W = geom.size
    identity = geom.resized == (y, x) == (H, W)
    rs, rd = _overlap(geom.resized[0], H, geom.offset[0])
    cs, cd = _overlap(geom.resized[1], W, geom.offset[1])
    covered = (rd.stop - rd.start, cd.stop - cd.start) == (H, W)  # no padding needed
    out = np.empty((z, H, W), np.float32) if covered else np.full((z, H, W), _pad_hu(prep), np.float32)
    a = vol.array
    clip = prep.norm == "window_zscore"
    lo, hi = float(prep.window_hu[0]), float(prep.window_hu[1])
    int_clip = (
        a.dtype.kind in "iu"
        and lo.is_integer()
        and hi.is_integer()
        and np.iinfo(a.dtype).min <= lo
        and hi <= np.iinfo(a.dtype).max
    )
    # buffers reused across chunks: fresh large allocations cost page faults on every chunk
    fbuf = None if identity else np.empty((min(_CHUNK, z), y, x), np.float32)
    ibuf = np.empty((min(_CHUNK, z), y, x), a.dtype) if clip and int_clip else None
    for i in range(0, z, _CHUNK):
        src = a[i : i + _CHUNK]
        n = src.shape[0]
        buf = out[i : i + _CHUNK] if fbuf is None else fbuf[:n]
        if ibuf is not None:  # integer HU: clip in the stored type, then convert (3x faster, same values)
            np.copyto(buf, np.clip(src, int(lo), int(hi), out=ibuf[:n]), casting="unsafe")
        else:
            np.copyto(buf, src, casting="unsafe")
            if clip:
                np.clip(buf, lo, hi, out=buf)
        r = buf if identity else _resize(torch.from_numpy(buf), geom.resized).numpy()
        if acc is not None:
            sub = r[::2, ::2, ::2]  # _CHUNK is even, so these are the volume's even slices
            acc[0] += sub.size
            acc[1] += float(sub.sum(dtype=np.float64))
            acc[2] += float(np.square(sub, dtype=np.float64).sum())
        if not identity:
            out[i : i + _CHUNK, rd, cd] = r[:, rs, cs]
    return out, geom


def _normalise(hu: np.ndarray, prep: PrepConfig, stats: Mapping[str, float] | None) -> np.ndarray:
    """In place: float32 HU → model input (``(HU - mean) / std`` or ``HU / hu_divisor``)."""
    if prep.norm == "divide":
        hu /= np.float32(prep.hu_divisor)
        return hu
    if prep.norm != "window_zscore":
        raise ValueError(f"unknown norm {prep.norm!r}")
    if not stats or "mean" not in stats or "std" not in stats:
        raise ValueError("norm='window_zscore' needs stats {'mean', 'std'} from the prepared cache")
    hu -= np.float32(stats["mean"])
    hu /= np.float32(stats["std"])
    return hu


def preprocess_volume(
    vol: Volume, prep: PrepConfig, stats: Mapping[str, float] | None = None
) -> tuple[np.ndarray, PrepGeometry]:
    """A CT volume (HU, (z, y, x)) → model input float32 (z, H, W) and the geometry to undo it.

    ``stats`` ({"mean", "std"} in HU, as stored in cache.json) is required for ``window_zscore`` and
    ignored for ``divide``.
    """
    hu, geom = _prepared_hu(vol, prep)
    return _normalise(hu, prep, stats), geom


def preprocess_mask(mask: np.ndarray, geom: PrepGeometry) -> np.ndarray:
    """A {0, 1} mask (z, y, x) on the input grid → uint8 (z, H, W), nearest neighbour, padding = 0.

    Only slices holding foreground are resized (the rest stay 0), so typical masks cost little.
    """
    if tuple(mask.shape) != tuple(geom.orig_shape):
        raise ValueError(f"mask shape {mask.shape} differs from the geometry's {geom.orig_shape}")
    z, y, x = geom.orig_shape
    H, W = geom.size
    out = np.zeros((z, H, W), dtype=np.uint8)
    rs, rd = _overlap(geom.resized[0], H, geom.offset[0])
    cs, cd = _overlap(geom.resized[1], W, geom.offset[1])
    iy = _nearest_index(y, geom.resized[0])[rs]
    ix = _nearest_index(x, geom.resized[1])[cs]
    for k in np.flatnonzero(mask.reshape(z, -1).any(axis=1)):
        out[k, rd, cd] = (mask[k][iy[:, None], ix[None, :]] != 0).view(np.uint8)
    return out


def restore_geometry(prob: np.ndarray, geom: PrepGeometry) -> np.ndarray:
    """Map a prepared-frame array (z, H, W) back onto the input grid: float32 (z, y, x).

    Undoes the pad/crop (regions that were cropped away, i.e. outside the model's field of view, get 0),
    then resizes back with bilinear interpolation.
    """
    import torch

    z, y, x = geom.orig_shape
    if tuple(prob.shape) != (z, *geom.size):
        raise ValueError(f"array shape {prob.shape} differs from the prepared shape {(z, *geom.size)}")
    h, w = geom.resized
    rs, rd = _overlap(h, geom.size[0], geom.offset[0])
    cs, cd = _overlap(w, geom.size[1], geom.offset[1])
    out = np.empty((z, y, x), dtype=np.float32)
    for i in range(0, z, _CHUNK):
        part = prob[i : i + _CHUNK]
        canvas = np.zeros((part.shape[0], h, w), dtype=np.float32)
        canvas[:, rs, cs] = part[:, rd, cd]
        out[i : i + _CHUNK] = _resize(torch.from_numpy(canvas), (y, x), "bilinear").numpy()
    return out


# ----------------------------------------------------------------------------- splits


def default_val_cases(n: int) -> int:
    """About 10 % of ``n`` patients (64 → 6, the seed's 58/6), at least 1, leaving at least 1 for training."""
    return min(max(1, round(0.1 * n)), n - 1)


def make_splits(
    names: list[str], val_cases: int | None = None, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Patient-level split and k folds (k capped at the number of patients; no folds when k < 2).

    Returns:
        {"seed", "train", "val", "folds": [{"train", "val"}, ...]}; each name is in exactly one fold's val.
    """
    names = sorted(names)
    n = len(names)
    if n < 2:
        raise InputError(None, f"a patient-level split needs at least 2 labelled cases, the dataset has {n}")
    n_val = default_val_cases(n) if val_cases is None else int(val_cases)
    if not 1 <= n_val < n:
        raise InputError("--val-cases", f"must be between 1 and {n - 1} for {n} cases, got {n_val}")
    if folds < 0:
        raise InputError("--folds", f"must be >= 0, got {folds}")
    rng = np.random.default_rng(seed)
    perm = [names[i] for i in rng.permutation(n)]
    val = sorted(perm[:n_val])
    k = min(folds, n)
    fold_list = []
    if k >= 2:
        perm_f = [names[i] for i in rng.permutation(n)]
        for chunk in np.array_split(np.arange(n), k):
            fval = sorted(perm_f[j] for j in chunk)
            fold_list.append({"train": [m for m in names if m not in fval], "val": fval})
    return {"seed": seed, "train": [m for m in names if m not in val], "val": val, "folds": fold_list}


# ----------------------------------------------------------------------------- cache writing


def _fingerprint(p: Path) -> list[Any]:
    """Cheap identity of a source file or DICOM folder: path, total size, newest mtime."""
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        st = [q.stat() for q in files]
        return [str(p), sum(s.st_size for s in st), max((s.st_mtime_ns for s in st), default=0), len(files)]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def _npy_ok(path: Path, shape: tuple[int, ...], dtype: str) -> bool:
    try:
        a = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return tuple(a.shape) == tuple(shape) and a.dtype == np.dtype(dtype)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save atomically (temp name, then rename)."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    except OSError as e:
        raise InputError(path, f"cannot write ({e.strerror or e})") from None


def _preflight(cases: list) -> None:
    """Cheap checks of every case before anything is written: labelled, and both files exist.

    Everything else (format, 3D, grid, values) is found by the single full read of each file.
    """
    for c in cases:
        if c.label is None:
            raise InputError(c.image, "no label with the same name in labelsTr")
        for p in (c.image, c.label):
            if not p.exists():
                raise InputError(p, "no such file or folder")


class _Writer:
    """Writes one cache folder; per-case state lives in ``OUT/.state/<name>.json``."""

    def __init__(self, out: Path, prep: PrepConfig, memory_budget: int) -> None:
        self.out, self.prep = out, prep
        self.prep_dict = to_dict(prep)
        self.cases_dir = out / "cases"
        self.state_dir = out / ".state"
        self.memory: dict[str, np.ndarray] = {}
        self.memory_left = memory_budget
        self.n_read = 0

    def img(self, name: str) -> Path:
        return self.cases_dir / f"{name}_img.npy"

    def seg(self, name: str) -> Path:
        return self.cases_dir / f"{name}_seg.npy"

    def spill(self, name: str) -> Path:
        return self.state_dir / f"{name}_hu.npy"

    def state_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def load_state(self, case) -> dict[str, Any] | None:
        """The saved state of ``case`` when it matches the sources, the recipe and the seg file."""
        try:
            st = json.loads(self.state_path(case.name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        fp = [_fingerprint(case.image), _fingerprint(case.label)]
        if st.get("fingerprint") != json.loads(json.dumps(fp)) or st.get("prep") != self.prep_dict:
            return None
        if not _npy_ok(self.seg(case.name), st["entry"]["prepared_shape"], "uint8"):
            return None
        return st

    def save_state(self, name: str, st: dict[str, Any]) -> None:
        try:
            with atomic_path(self.state_path(name)) as tmp:
                tmp.write_text(json.dumps(st), encoding="utf-8")  # no fsync: cheap, still atomic
        except OSError as e:
            raise InputError(self.state_path(name), f"cannot write ({e.strerror or e})") from None

    def read_case(self, case) -> tuple[np.ndarray, dict[str, Any]]:
        """Read and preprocess one case; write its seg; return (prepared HU, state)."""
        vol = read_volume(case.image)
        mask = read_mask(case.label, reference=vol)
        self.n_read += 1
        acc = [0, 0.0, 0.0]
        hu, geom = _prepared_hu(vol, self.prep, acc if self.prep.norm == "window_zscore" else None)
        seg = preprocess_mask(mask.array, geom)
        self.seg(case.name).parent.mkdir(exist_ok=True)
        _save_npy(self.seg(case.name), seg)
        entry = {
            "name": case.name,
            "n_slices": int(geom.orig_shape[0]),
            "prepared_shape": [int(v) for v in hu.shape],
            "orig_shape": [int(v) for v in vol.shape],
            "orig_spacing": [float(v) for v in vol.spacing],
            "tumour_slices": [int(i) for i in np.flatnonzero(seg.reshape(seg.shape[0], -1).any(axis=1))],
            "tumour_ml": float(np.count_nonzero(mask.array)) * vol.voxel_volume_mm3 / 1000.0,
        }
        st = {
            "fingerprint": [_fingerprint(case.image), _fingerprint(case.label)],
            "prep": self.prep_dict,
            "geometry": geom.to_dict(),
            "entry": entry,
            "partial": acc,
            "final": None,
        }
        return hu, st

    def keep(self, name: str, hu: np.ndarray) -> None:
        """Hold the prepared HU until the statistics are known: in memory, or spilled to disk."""
        if hu.nbytes <= self.memory_left:
            self.memory[name] = hu
            self.memory_left -= hu.nbytes
        else:
            _save_npy(self.spill(name), hu)

    def take(self, case) -> np.ndarray:
        """The prepared HU of ``case`` (from memory, the spill file, or by reading the case again)."""
        if case.name in self.memory:
            return self.memory.pop(case.name)
        if self.spill(case.name).exists():
            try:
                return np.load(self.spill(case.name))
            except (OSError, ValueError):
                pass
        return self.read_case(case)[0]


def _to_float16(a: np.ndarray) -> np.ndarray:
    """float32 → float16 (round to nearest even, like numpy's astype, but vectorised in torch)."""
    import torch

    return torch.from_numpy(a).to(torch.float16).numpy()


def _json_text(d: dict[str, Any]) -> str:
    """JSON with one top-level key per line and one list item (case, fold) per line."""

    def val(v: Any) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return "[\n" + ",\n".join("  " + json.dumps(x) for x in v) + "\n ]"
        return json.dumps(v)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {val(v)}" for k, v in d.items()) + "\n}\n"


def _stats(prep: PrepConfig, states: list[dict[str, Any]]) -> dict[str, float]:
    """The affine normalisation actually applied: model input = (HU - mean) / std."""
    if prep.norm == "divide":
        return {"mean": 0.0, "std": float(prep.hu_divisor)}
    n = sum(s["partial"][0] for s in states)
    total = math.fsum(s["partial"][1] for s in states)
    sq = math.fsum(s["partial"][2] for s in states)
    mean = total / n
    std = math.sqrt(max(sq / n - mean * mean, 0.0))
    return {"mean": mean, "std": std if std > 1e-3 else 1.0}


def prepare_dataset(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    prep: PrepConfig,
    val_cases: int | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
    memory_budget: int = _MEMORY_BUDGET,
) -> str:
    """Write the training cache for ``dataset`` into ``out`` (format in docs/design.md); returns a summary.

    Each labelled case is read once. Prepared HU is held (in memory up to ``memory_budget`` bytes, then
    spilled to ``out/.state``) until the training statistics are known, then normalised and written as
    float16. Every file is written atomically and cache.json last; a rerun skips cases already done and
    gives byte-identical arrays.

    Raises:
        InputError: bad dataset or case (nothing is left behind when ``out`` was created by this call),
            or ``out`` cannot be written.
    """
    from tqdm import tqdm

    from lungtumor.dataset import load_dataset

    ds = load_dataset(dataset)
    splits = make_splits([c.name for c in ds.cases], val_cases, folds, seed)
    _preflight(ds.cases)
    out = Path(out)
    created = not out.exists()
    ensure_writable_dir(out)
    w = _Writer(out, prep, memory_budget)
    try:
        with contextlib.suppress(FileNotFoundError):
            (out / "cache.json").unlink()
        w.cases_dir.mkdir(exist_ok=True)
        w.state_dir.mkdir(exist_ok=True)
        states: dict[str, dict[str, Any]] = {}
        for case in tqdm(ds.cases, desc="prepare", unit="case", disable=not progress):
            st = w.load_state(case)
            if st is None:
                hu, st = w.read_case(case)
                w.keep(case.name, hu)
                w.save_state(case.name, st)
            states[case.name] = st
        stats = _stats(prep, [states[c.name] for c in ds.cases])
        for case in tqdm(ds.cases, desc="normalise", unit="case", disable=not progress):
            st = states[case.name]
            if st["final"] == stats and _npy_ok(w.img(case.name), st["entry"]["prepared_shape"], "float16"):
                w.memory.pop(case.name, None)
                continue
            hu = _normalise(w.take(case), prep, stats)
            _save_npy(w.img(case.name), _to_float16(hu))
            st["final"] = stats
            w.save_state(case.name, st)
            with contextlib.suppress(FileNotFoundError):
                w.spill(case.name).unlink()
        entries = [states[c.name]["entry"] for c in ds.cases]
        n_slices = sum(e["n_slices"] for e in entries)
        n_tumour = sum(len(e["tumour_slices"]) for e in entries)
        cache = {
            "version": CACHE_VERSION,
            "prep": w.prep_dict,
            "stats": stats,
            "cases": entries,
            "tumour_slice_fraction": n_tumour / max(n_slices, 1),
            "complete": True,
        }
        atomic_write_text(out / "splits.json", _json_text(splits))
        atomic_write_text(out / "cache.json", _json_text(cache))
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
    return (
        f"prepared {len(entries)} cases into {out} ({w.n_read} read, {len(entries) - w.n_read} reused): "
        f"{n_slices} slices, {n_tumour} with tumour ({cache['tumour_slice_fraction']:.1%}); "
        f"split {len(splits['train'])}/{len(splits['val'])} train/val, {len(splits['folds'])} folds; "
        f"normalisation (HU - {stats['mean']:.4g}) / {stats['std']:.4g}"
    )
