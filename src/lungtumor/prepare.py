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
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.config import PrepConfig, to_dict
from lungtumor.errors import InputError, atomic_path, atomic_write_text, ensure_writable_dir
from lungtumor.volume import Volume, read_mask, read_volume

CACHE_VERSION = 1
_CHUNK = 8  # slices per interpolate call (even): small reused buffers stay in cache
_MEMORY_BUDGET = 2 << 30  # bytes of input voxels kept in memory (all processes) before spilling to disk
_STATE_VERSION = 2  # per-case state format (2: the spill file holds the input voxels)
_PARALLEL_MIN_BYTES = 16 << 20  # source files (as stored) below which one process beats forking helpers
_MAX_WORKERS = 4


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


class _Slices:
    """Clip (window_zscore only) and resize chunks of ``_CHUNK`` slices of one volume, reusing buffers.

    Every slice is processed on its own (clip, float32, bilinear resize), so a slice's values do not
    depend on which chunk it is in; :func:`preprocess_volume` and the cache writer share this code.
    """

    def __init__(self, a: np.ndarray, prep: PrepConfig, geom: PrepGeometry) -> None:
        self.a, self.prep, self.geom = a, prep, geom
        z, y, x = geom.orig_shape
        H, W = geom.size
        n = min(_CHUNK, z)
        self.identity = geom.resized == (y, x) == (H, W)
        self.rs, self.rd = _overlap(geom.resized[0], H, geom.offset[0])
        self.cs, self.cd = _overlap(geom.resized[1], W, geom.offset[1])
        self.covered = (self.rd.stop - self.rd.start, self.cd.stop - self.cd.start) == (H, W)
        self.clip = prep.norm == "window_zscore"
        lo, hi = float(prep.window_hu[0]), float(prep.window_hu[1])
        self.lo, self.hi = lo, hi
        int_clip = (
            a.dtype.kind in "iu"
            and lo.is_integer()
            and hi.is_integer()
            and np.iinfo(a.dtype).min <= lo
            and hi <= np.iinfo(a.dtype).max
        )
        # buffers reused across chunks: fresh large allocations cost page faults on every chunk
        self.fbuf = np.empty((n, y, x), np.float32)
        self.ibuf = np.empty((n, y, x), a.dtype) if self.clip and int_clip else None
        self.frame = None if self.identity else np.full((n, H, W), _pad_hu(prep), np.float32)

    def resized(self, src: np.ndarray) -> np.ndarray:
        """(n, y, x) input slices → clipped, resized float32 HU (n, y', x'); valid until the next call."""
        n = src.shape[0]
        buf = self.fbuf[:n]
        if self.ibuf is not None:  # integer HU: clip in the stored type, then convert (faster, same values)
            np.copyto(buf, np.clip(src, int(self.lo), int(self.hi), out=self.ibuf[:n]), casting="unsafe")
        else:
            np.copyto(buf, src, casting="unsafe")
            if self.clip:
                np.clip(buf, self.lo, self.hi, out=buf)
        if self.identity:
            return buf
        import torch

        return _resize(torch.from_numpy(buf), self.geom.resized).numpy()

    def framed(self, r: np.ndarray) -> np.ndarray:
        """Resized HU (n, y', x') → padded/cropped (n, H, W); valid until the next call."""
        if self.frame is None:
            return r
        out = self.frame[: r.shape[0]]
        out[:, self.rd, self.cd] = r[:, self.rs, self.cs]
        return out

    def chunks(self):
        """Yield (first slice, prepared HU (n, H, W) float32) for every chunk of the volume."""
        for i in range(0, self.a.shape[0], _CHUNK):
            yield i, self.framed(self.resized(self.a[i : i + _CHUNK]))

    def accumulate(self, acc: list[float]) -> None:
        """Add the statistics of the resized HU (before padding) on a deterministic 1-in-8 subsample
        (even slices, rows and columns) to ``acc`` = [n, sum, sum of squares]; resizes even slices only."""
        even = self.a[::2]
        for i in range(0, even.shape[0], _CHUNK):
            sub = self.resized(even[i : i + _CHUNK])[:, ::2, ::2]
            acc[0] += sub.size
            acc[1] += float(sub.sum(dtype=np.float64))
            acc[2] += float(np.square(sub, dtype=np.float64).sum())


def _prepared_hu(
    vol: Volume, prep: PrepConfig, acc: list[float] | None = None
) -> tuple[np.ndarray, PrepGeometry]:
    """Clip (window_zscore only), resize and pad/crop; returns HU as float32 (z, H, W), not yet normalised.

    ``acc`` ([n, sum, sum of squares]) accumulates statistics of the resized HU before padding, on a
    deterministic 1-in-8 subsample (every other slice, row and column).
    """
    geom = _geometry(vol, prep)
    z = geom.orig_shape[0]
    s = _Slices(vol.array, prep, geom)
    out = np.empty((z, *geom.size), np.float32)
    for i, part in s.chunks():
        out[i : i + part.shape[0]] = part
    if acc is not None:
        s.accumulate(acc)
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
    return _mask_into(mask, geom, np.zeros((geom.orig_shape[0], *geom.size), dtype=np.uint8))


def _mask_into(mask: np.ndarray, geom: PrepGeometry, out: np.ndarray) -> np.ndarray:
    """:func:`preprocess_mask` into ``out`` (uint8 (z, H, W), all 0); returns ``out``."""
    if tuple(mask.shape) != tuple(geom.orig_shape):
        raise ValueError(f"mask shape {mask.shape} differs from the geometry's {geom.orig_shape}")
    z, y, x = geom.orig_shape
    H, W = geom.size
    rs, rd = _overlap(geom.resized[0], H, geom.offset[0])
    cs, cd = _overlap(geom.resized[1], W, geom.offset[1])
    iy = _nearest_index(y, geom.resized[0])[rs]
    ix = _nearest_index(x, geom.resized[1])[cs]
    for k in np.flatnonzero(mask.reshape(z, -1).any(axis=1)):
        out[k, rd, cd] = (mask[k][iy[:, None], ix[None, :]] != 0).view(np.uint8)
    return out


def _restored_chunks(prob: np.ndarray, geom: PrepGeometry):
    """Yield (first slice, float32 (n, y, x)) of ``prob`` (z, H, W) mapped back onto the input grid, in
    chunks of ``_CHUNK`` slices; each chunk is valid until the next one is asked for."""
    import torch

    z, y, x = geom.orig_shape
    if tuple(prob.shape) != (z, *geom.size):
        raise ValueError(f"array shape {prob.shape} differs from the prepared shape {(z, *geom.size)}")
    h, w = geom.resized
    rs, rd = _overlap(h, geom.size[0], geom.offset[0])
    cs, cd = _overlap(w, geom.size[1], geom.offset[1])
    for i in range(0, z, _CHUNK):
        part = prob[i : i + _CHUNK]
        canvas = np.zeros((part.shape[0], h, w), dtype=np.float32)
        canvas[:, rs, cs] = part[:, rd, cd]
        yield i, _resize(torch.from_numpy(canvas), (y, x), "bilinear").numpy()


def restore_geometry(prob: np.ndarray, geom: PrepGeometry) -> np.ndarray:
    """Map a prepared-frame array (z, H, W) back onto the input grid: float32 (z, y, x).

    Undoes the pad/crop (regions that were cropped away, i.e. outside the model's field of view, get 0),
    then resizes back with bilinear interpolation.
    """
    out = np.empty(geom.orig_shape, dtype=np.float32)
    for i, part in _restored_chunks(prob, geom):
        out[i : i + part.shape[0]] = part
    return out


def restore_mask(prob: np.ndarray, geom: PrepGeometry, threshold: float) -> np.ndarray:
    """``(restore_geometry(prob, geom) >= threshold)`` as uint8 {0, 1} (z, y, x), bit for bit, without the
    float32 map on the input grid: each chunk of slices is restored and thresholded on its own."""
    out = np.empty(geom.orig_shape, dtype=np.bool_)
    for i, part in _restored_chunks(prob, geom):
        out[i : i + part.shape[0]] = part >= threshold
    return out.view(np.uint8)


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


def _save_npy_chunks(path: Path, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray]) -> None:
    """Write an .npy file from C-ordered chunks along its first axis, atomically (the bytes of np.save)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(v) for v in shape),
    }
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for c in chunks:
                f.write(memoryview(np.ascontiguousarray(c)).cast("B"))
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


def _fixed_stats(prep: PrepConfig) -> dict[str, float] | None:
    """The normalisation when it does not depend on the data (``divide``), else None."""
    return {"mean": 0.0, "std": float(prep.hu_divisor)} if prep.norm == "divide" else None


class _Writer:
    """Writes the cases of one cache folder; per-case state lives in ``OUT/.state/<name>.json``.

    A case is read once (:meth:`first_pass`: seg file, statistics, the input voxels held in memory or
    spilled to ``.state``), then written as model input when the statistics are known (:meth:`finish`).
    When the normalisation does not depend on the data (``divide``) the first pass finishes the case.
    """

    def __init__(self, out: Path, prep: PrepConfig, memory_budget: int) -> None:
        self.out, self.prep = out, prep
        self.prep_dict = to_dict(prep)
        self.fixed = _fixed_stats(prep)
        self.cases_dir = out / "cases"
        self.state_dir = out / ".state"
        self.memory: dict[str, np.ndarray] = {}
        self.memory_left = memory_budget
        self.n_read = 0
        self.seg_buf = np.empty(0, np.uint8)

    def img(self, name: str) -> Path:
        return self.cases_dir / f"{name}_img.npy"

    def seg(self, name: str) -> Path:
        return self.cases_dir / f"{name}_seg.npy"

    def spill(self, name: str) -> Path:
        return self.state_dir / f"{name}_raw.npy"

    def state_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.json"

    def load_state(self, case) -> dict[str, Any] | None:
        """The saved state of ``case`` when it matches the sources, the recipe and the seg file."""
        try:
            st = json.loads(self.state_path(case.name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        fp = [_fingerprint(case.image), _fingerprint(case.label)]
        if (
            not isinstance(st, dict)
            or st.get("v") != _STATE_VERSION
            or st.get("fingerprint") != json.loads(json.dumps(fp))
            or st.get("prep") != self.prep_dict
        ):
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

    def read_case(self, case, stats_pass: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """Read one case; write its seg; return (input voxels (z, y, x), state)."""
        vol = read_volume(case.image)
        mask = read_mask(case.label, reference=vol)
        self.n_read += 1
        geom = _geometry(vol, self.prep)
        acc = [0, 0.0, 0.0]
        if stats_pass and self.fixed is None:
            _Slices(vol.array, self.prep, geom).accumulate(acc)
        # into a buffer reused across cases: writing freshly allocated pages costs more than the write
        n = int(np.prod((geom.orig_shape[0], *geom.size)))
        if self.seg_buf.size < n:
            self.seg_buf = np.empty(n, np.uint8)
        seg = self.seg_buf[:n].reshape(geom.orig_shape[0], *geom.size)
        seg.fill(0)
        _mask_into(mask.array, geom, seg)
        self.seg(case.name).parent.mkdir(exist_ok=True)
        _save_npy(self.seg(case.name), seg)
        entry = {
            "name": case.name,
            "n_slices": int(geom.orig_shape[0]),
            "prepared_shape": [int(geom.orig_shape[0]), *(int(v) for v in geom.size)],
            "orig_shape": [int(v) for v in vol.shape],
            "orig_spacing": [float(v) for v in vol.spacing],
            "tumour_slices": [int(i) for i in np.flatnonzero(seg.reshape(seg.shape[0], -1).any(axis=1))],
            "tumour_ml": float(np.count_nonzero(mask.array)) * vol.voxel_volume_mm3 / 1000.0,
        }
        st = {
            "v": _STATE_VERSION,
            "fingerprint": [_fingerprint(case.image), _fingerprint(case.label)],
            "prep": self.prep_dict,
            "geometry": geom.to_dict(),
            "entry": entry,
            "partial": acc,
            "final": None,
        }
        return vol.array, st

    def first_pass(self, case) -> dict[str, Any]:
        """Read ``case``, write its seg and state; hold its voxels (or, with fixed statistics, finish it)."""
        raw, st = self.read_case(case)
        if self.fixed is not None:
            self.write_img(case.name, raw, st, self.fixed)
            st["final"] = self.fixed
        else:
            self.keep(case.name, raw)
        self.save_state(case.name, st)
        return st

    def finish(self, case, st: dict[str, Any], stats: dict[str, float]) -> dict[str, Any]:
        """Write the model input of ``case`` with ``stats``; returns the updated state."""
        self.write_img(case.name, self.take(case), st, stats)
        st["final"] = stats
        self.save_state(case.name, st)
        with contextlib.suppress(FileNotFoundError):
            self.spill(case.name).unlink()
        return st

    def write_img(self, name: str, raw: np.ndarray, st: dict[str, Any], stats: Mapping[str, float]) -> None:
        """Preprocess ``raw`` chunk by chunk (the steps and values of :func:`preprocess_volume`) into
        ``<name>_img.npy`` as float16, with reused buffers and without holding the whole result."""
        import torch

        geom = PrepGeometry.from_dict(st["geometry"])
        z = geom.orig_shape[0]
        if tuple(raw.shape) != tuple(geom.orig_shape):
            raise ValueError(f"{name}: held voxels {raw.shape} differ from {geom.orig_shape}")
        s = _Slices(raw, self.prep, geom)
        f32 = np.empty((min(_CHUNK, z), *geom.size), np.float32)
        f16 = np.empty(f32.shape, np.float16)

        def chunks():
            for _, part in s.chunks():
                n = part.shape[0]
                x = _normalise(np.copyto(f32[:n], part) or f32[:n], self.prep, stats)
                torch.from_numpy(f16[:n]).copy_(torch.from_numpy(x))  # as _to_float16
                yield f16[:n]

        _save_npy_chunks(self.img(name), (z, *geom.size), np.float16, chunks())

    def keep(self, name: str, raw: np.ndarray) -> None:
        """Hold the input voxels until the statistics are known: in memory, or spilled to disk."""
        if raw.nbytes <= self.memory_left:
            self.memory[name] = raw
            self.memory_left -= raw.nbytes
        else:
            _save_npy(self.spill(name), raw)

    def take(self, case) -> np.ndarray:
        """The input voxels of ``case`` (from memory, the spill file, or by reading the case again)."""
        if case.name in self.memory:
            raw = self.memory.pop(case.name)
            self.memory_left += raw.nbytes
            return raw
        if self.spill(case.name).exists():
            try:
                return np.load(self.spill(case.name))
            except (OSError, ValueError):
                pass
        return self.read_case(case, stats_pass=False)[0]


# ----------------------------------------------------------------------------- parallel helpers


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _n_workers(workers: int | None, todo: list) -> int:
    """Processes for the read pass: ``workers``, or (None) one per CPU up to 4 when there is enough to read.

    Extra processes are forked (Linux only): a fork costs milliseconds, a fresh interpreter seconds.
    """
    if workers is None:
        size = sum(_fingerprint(p)[1] for c in todo for p in (c.image, c.label))
        workers = 1 if size < _PARALLEL_MIN_BYTES else min(_cpus(), _MAX_WORKERS)
    n = max(1, min(int(workers), len(todo)))
    if n > 1 and not (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()):
        return 1
    return n


class _Counter:
    """Hands out case indices 0..n-1 once each, across forked processes."""

    def __init__(self, n: int, shared: bool) -> None:
        self.n = n
        self.value = mp.get_context("fork").Value("q", 0) if shared else None
        self.local = 0

    def next(self) -> int | None:
        if self.value is None:
            k, self.local = self.local, self.local + 1
        else:
            with self.value.get_lock():
                k = self.value.value
                self.value.value = k + 1
        return k if k < self.n else None


def _helper(w: _Writer, todo: list, counter: _Counter, conn) -> None:
    """A forked worker: the read pass on the cases it claims, then :meth:`_Writer.finish` on those and on
    the cases it is sent. Reports every state, and any error, through ``conn``; never raises."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds, so temporary files are removed
    signal.signal(signal.SIGINT, lambda *_: sys.exit(1))  # Ctrl-C: the parent reports it
    try:
        import torch

        torch.set_num_threads(1)  # one thread per process; keeps OpenMP out of the forked child
        held = []
        while (k := counter.next()) is not None:
            st = w.first_pass(todo[k])
            if st["final"] is None:
                held.append((todo[k], st))
            conn.send(("state", todo[k].name, st))
        conn.send(("read", None))
        msg = conn.recv()
        if msg[0] == "finish":
            for case, st in held + msg[2]:
                conn.send(("state", case.name, w.finish(case, st, msg[1])))
        conn.send(("done", w.n_read))
    except InputError as e:
        _send_quietly(conn, ("error", e.where, e.problem))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        import traceback

        _send_quietly(conn, ("crash", traceback.format_exc()))


def _send_quietly(conn, msg: tuple) -> None:
    with contextlib.suppress(OSError, ValueError):
        conn.send(msg)


class _Team:
    """``n - 1`` forked helper processes that share the read pass, then the writing, with this one."""

    def __init__(self, w: _Writer, todo: list, n: int) -> None:
        ctx = mp.get_context("fork")
        self.w, self.counter = w, _Counter(len(todo), shared=True)
        self.procs: list = []
        self.conns: list = []
        self.seen: list[set[str]] = []  # kinds of message received from each helper
        self.n_read = 0
        try:
            for _ in range(n - 1):
                a, b = ctx.Pipe()
                p = ctx.Process(target=_helper, args=(w, todo, self.counter, b), daemon=True)
                p.start()
                b.close()
                self.procs.append(p)
                self.conns.append(a)
                self.seen.append(set())
        except BaseException:
            self.close(abort=True)
            raise

    def _recv(self, i: int) -> tuple:
        try:
            msg = self.conns[i].recv()
        except (EOFError, OSError):
            self.procs[i].join(timeout=5)
            code = self.procs[i].exitcode
            raise RuntimeError(f"prepare: a worker process ended unexpectedly (exit code {code})") from None
        if msg[0] == "error":
            raise InputError(msg[1], msg[2])
        if msg[0] == "crash":
            raise RuntimeError(f"prepare: a worker process failed:\n{msg[1]}")
        if msg[0] == "done":
            self.n_read += msg[1]
        self.seen[i].add(msg[0])
        return msg

    def poll(self, states: dict[str, Any], on_state) -> None:
        """Take the states that have arrived, without waiting."""
        for i, c in enumerate(self.conns):
            while "done" not in self.seen[i] and c.poll():
                msg = self._recv(i)
                if msg[0] == "state":
                    states[msg[1]] = msg[2]
                    on_state()

    def wait(self, until: str, states: dict[str, Any], on_state) -> None:
        """Take states until every helper has sent ``until`` ("read": read pass over, or "done")."""
        for i in range(len(self.conns)):
            while until not in self.seen[i]:
                msg = self._recv(i)
                if msg[0] == "state":
                    states[msg[1]] = msg[2]
                    on_state()

    def finish(self, stats: dict[str, float], extra: list[list]) -> None:
        """Start the writing pass: each helper writes the cases it holds, and those in its ``extra``."""
        for c, e in zip(self.conns, extra, strict=True):
            c.send(("finish", stats, e))

    def close(self, abort: bool) -> None:
        """Wait for the helpers (``abort``: stop them first) and remove anything they left half-written."""
        for p in self.procs:
            if abort and p.is_alive():
                p.terminate()
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
            for d in (self.w.cases_dir, self.w.state_dir):
                for f in d.glob(f".tmp-{p.pid}-*"):
                    with contextlib.suppress(OSError):
                        f.unlink()
        for c in self.conns:
            c.close()


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
    workers: int | None = None,
) -> str:
    """Write the training cache for ``dataset`` into ``out`` (format in docs/design.md); returns a summary.

    Each labelled case is read once: its seg file and its share of the training statistics are written
    and its input voxels held (in memory up to ``memory_budget`` bytes in all, then spilled to
    ``out/.state``) until the statistics are known; then it is preprocessed and written as float16.
    ``workers`` processes share the work (None: one per CPU, up to 4, when the dataset is larger than
    a few MB; extra processes are forked, on Linux only). Every file is written atomically and cache.json
    last; a rerun skips cases already done; the bytes do not depend on ``workers``.

    Raises:
        InputError: bad dataset or case (nothing is left behind when ``out`` was created by this call),
            or ``out`` cannot be written.
    """
    import torch
    from tqdm import tqdm

    from lungtumor.dataset import load_dataset

    ds = load_dataset(dataset)
    splits = make_splits([c.name for c in ds.cases], val_cases, folds, seed)
    _preflight(ds.cases)
    out = Path(out)
    created = not out.exists()
    ensure_writable_dir(out)
    w = _Writer(out, prep, memory_budget)
    team: _Team | None = None
    threads = torch.get_num_threads()
    try:
        with contextlib.suppress(FileNotFoundError):
            (out / "cache.json").unlink()
        w.cases_dir.mkdir(exist_ok=True)
        w.state_dir.mkdir(exist_ok=True)
        states: dict[str, dict[str, Any]] = {}
        todo = []
        for case in ds.cases:
            st = w.load_state(case)
            if st is None:
                todo.append(case)
            else:
                states[case.name] = st
        n = _n_workers(workers, todo)
        w.memory_left = memory_budget // n
        if n > 1:
            torch.set_num_threads(1)
            team = _Team(w, todo, n)
        counter = team.counter if team else _Counter(len(todo), shared=False)

        # read pass: every process claims the next unread case
        with tqdm(total=len(todo), desc="prepare", unit="case", disable=not progress) as bar:
            mine = []
            while (k := counter.next()) is not None:
                states[todo[k].name] = st = w.first_pass(todo[k])
                if st["final"] is None:
                    mine.append(todo[k])
                bar.update()
                if team:
                    team.poll(states, bar.update)
            if team:
                team.wait("read", states, bar.update)
        stats = w.fixed or _stats(prep, [states[c.name] for c in ds.cases])

        # writing pass: each process writes the cases it holds; cases read before are shared out
        read_now = {c.name for c in todo}
        need = [
            c
            for c in ds.cases
            if not (
                states[c.name]["final"] == stats
                and _npy_ok(w.img(c.name), states[c.name]["entry"]["prepared_shape"], "float16")
            )
        ]
        again = [(c, states[c.name]) for c in need if c.name not in read_now]
        with tqdm(total=len(need), desc="normalise", unit="case", disable=not progress) as bar:
            if team:
                team.finish(stats, [again[i + 1 :: n] for i in range(n - 1)])
            for case, st in [(c, states[c.name]) for c in mine] + again[::n]:
                states[case.name] = w.finish(case, st, stats)
                bar.update()
                if team:
                    team.poll(states, bar.update)
            if team:
                team.wait("done", states, bar.update)
                team.close(abort=False)
                w.n_read += team.n_read
                team = None
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
    except (InputError, OSError, RuntimeError) as e:
        if team:
            team.close(abort=True)
            team = None
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, OSError):
            raise InputError(
                getattr(e, "filename", None) or out, f"cannot write cache ({e.strerror or e})"
            ) from None
        raise
    finally:
        if team:
            team.close(abort=True)
        torch.set_num_threads(threads)
    return (
        f"prepared {len(entries)} cases into {out} ({w.n_read} read, {len(entries) - w.n_read} reused): "
        f"{n_slices} slices, {n_tumour} with tumour ({cache['tumour_slice_fraction']:.1%}); "
        f"split {len(splits['train'])}/{len(splits['val'])} train/val, {len(splits['folds'])} folds; "
        f"normalisation (HU - {stats['mean']:.4g}) / {stats['std']:.4g}"
    )
