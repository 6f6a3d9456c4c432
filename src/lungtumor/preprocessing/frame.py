"""Preprocessing shared by ``prepare`` (the 2D cache) and ``predict``, and its inverse.

Recipes (:class:`lungtumor.core.config.PrepConfig`):

* ``norm="divide"``: HU / ``hu_divisor`` (the seed's recipe; no clipping).
* ``norm="window_zscore"``: clip HU to ``window_hu``, then ``(HU - mean) / std`` with the training set's
  statistics (``stats``), computed by :func:`lungtumor.preprocessing.prepare.prepare_dataset` over the in-plane resampled,
  clipped HU of every training case (padding excluded).
* ``resize="size"``: every axial slice is resized to ``size`` (y, x) pixels.
* ``resize="spacing"``: slices are resampled in-plane to ``spacing_mm``, then centre padded (with air: the
  window's low value, or -1000 HU for ``divide``) or centre cropped to ``size``.

z is never resampled. The array axes stay as stored: the in-plane resize works in voxel space using the
x and y spacing, whatever the direction matrix, so :func:`restore_geometry` gives back exactly the input's
(z, y, x) grid. Images are resized with bilinear interpolation (``align_corners=False``), masks with
``nearest-exact``. Everything works on chunks of ``CHUNK`` slices, each slice on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungtumor.core.config import PrepConfig
from lungtumor.imaging.volume import Volume
from lungtumor.preprocessing.blobness import blobness

CHUNK = 8  # slices per interpolate call (even): small reused buffers stay in cache


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


def geometry(vol: Volume, prep: PrepConfig) -> PrepGeometry:
    return geometry_of(vol.shape, vol.spacing, prep)


def geometry_of(shape_zyx: Sequence[int], spacing_xyz: Sequence[float], prep: PrepConfig) -> PrepGeometry:
    """The :class:`PrepGeometry` of a (z, y, x) volume with voxel size (x, y, z) mm under ``prep``."""
    z, y, x = (int(v) for v in shape_zyx)
    size = (int(prep.size[0]), int(prep.size[1]))
    if prep.resize == "size":
        return PrepGeometry((z, y, x), size, (0, 0), size)
    if prep.resize != "spacing":
        raise ValueError(f"unknown resize {prep.resize!r}")
    sx, sy = spacing_xyz[0], spacing_xyz[1]
    h = max(1, int(round(y * sy / prep.spacing_mm)))
    w = max(1, int(round(x * sx / prep.spacing_mm)))
    return PrepGeometry((z, y, x), (h, w), ((size[0] - h) // 2, (size[1] - w) // 2), size)


def overlap(n_src: int, n_dst: int, off: int) -> tuple[slice, slice]:
    """Source and destination slices along one axis when source index i lands at i + off."""
    a = max(0, -off)
    b = min(n_src, n_dst - off)
    if b <= a:
        return slice(0, 0), slice(0, 0)
    return slice(a, b), slice(a + off, b + off)


def resize(t, hw: tuple[int, int], mode: str = "bilinear"):
    """Resize a (n, y, x) float32 torch tensor in-plane to ``hw``; identity sizes are returned unchanged."""

    if tuple(t.shape[-2:]) == tuple(hw):
        return t
    return F.interpolate(t[:, None], size=hw, mode=mode, align_corners=False)[:, 0]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing ("nearest-exact" convention)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp), n_in - 1)


def pad_hu(prep: PrepConfig) -> float:
    return float(prep.window_hu[0]) if prep.norm == "window_zscore" else -1000.0


class Slices:
    """Clip (window_zscore only) and resize chunks of ``CHUNK`` slices of one volume, reusing buffers.

    Every slice is processed on its own (clip, float32, bilinear resize), so a slice's values do not
    depend on which chunk it is in; :func:`preprocess_volume` and the cache writer share this code.
    """

    def __init__(self, a: np.ndarray, prep: PrepConfig, geom: PrepGeometry) -> None:
        self.a, self.prep, self.geom = a, prep, geom
        z, y, x = geom.orig_shape
        H, W = geom.size
        n = min(CHUNK, z)
        self.identity = geom.resized == (y, x) == (H, W)
        self.rs, self.rd = overlap(geom.resized[0], H, geom.offset[0])
        self.cs, self.cd = overlap(geom.resized[1], W, geom.offset[1])
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
        self.frame = None if self.identity else np.full((n, H, W), pad_hu(prep), np.float32)

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

        return resize(torch.from_numpy(buf), self.geom.resized).numpy()

    def framed(self, r: np.ndarray) -> np.ndarray:
        """Resized HU (n, y', x') → padded/cropped (n, H, W); valid until the next call."""
        if self.frame is None:
            return r
        out = self.frame[: r.shape[0]]
        out[:, self.rd, self.cd] = r[:, self.rs, self.cs]
        return out

    def chunks(self):
        """Yield (first slice, prepared HU (n, H, W) float32) for every chunk of the volume."""
        for i in range(0, self.a.shape[0], CHUNK):
            yield i, self.framed(self.resized(self.a[i : i + CHUNK]))

    def whole(self) -> np.ndarray:
        """The prepared HU of the whole volume, float32 (z, H, W)."""
        out = np.empty((self.a.shape[0], *self.geom.size), np.float32)
        for i, part in self.chunks():
            out[i : i + part.shape[0]] = part
        return out

    def accumulate(self, acc: list[float]) -> None:
        """Add the statistics of the resized HU (before padding) on a deterministic 1-in-8 subsample
        (even slices, rows and columns) to ``acc`` = [n, sum, sum of squares]; resizes even slices only."""
        even = self.a[::2]
        for i in range(0, even.shape[0], CHUNK):
            sub = self.resized(even[i : i + CHUNK])[:, ::2, ::2]
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
    geom = geometry(vol, prep)
    s = Slices(vol.array, prep, geom)
    out = s.whole()
    if acc is not None:
        s.accumulate(acc)
    return out, geom


def normalise(hu: np.ndarray, prep: PrepConfig, stats: Mapping[str, float] | None) -> np.ndarray:
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


def hu_scale(prep: PrepConfig, stats: Mapping[str, float] | None) -> tuple[float, float, float]:
    """How :func:`normalise` maps HU: (model-input units per HU, the window's low and high edge in those
    units; -inf / inf when the norm does not clip)."""
    if prep.norm == "divide":
        return 1.0 / float(prep.hu_divisor), -np.inf, np.inf
    lo, hi = (normalise(np.array(prep.window_hu, np.float32), prep, stats)).tolist()
    return 1.0 / float(stats["std"]), float(lo), float(hi)  # type: ignore[index]


def preprocess_volume(
    vol: Volume, prep: PrepConfig, stats: Mapping[str, float] | None = None
) -> tuple[np.ndarray, PrepGeometry]:
    """A CT volume (HU, (z, y, x)) → model input float32 (z, H, W) and the geometry to undo it.

    ``stats`` ({"mean", "std"} in HU, as stored in cache.json) is required for ``window_zscore`` and
    ignored for ``divide``.
    """
    hu, geom = _prepared_hu(vol, prep)
    return normalise(hu, prep, stats), geom


def frame_spacing(geom: PrepGeometry, spacing_xyz: tuple[float, ...]) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of the prepared frame of an input with spacing (x, y, z) mm."""
    z, y, x = geom.orig_shape
    h, w = geom.resized
    return float(spacing_xyz[2]), float(spacing_xyz[1]) * y / h, float(spacing_xyz[0]) * x / w


def prepared_blob(hu: np.ndarray, geom: PrepGeometry, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """The blobness channel (``prep.blob``) of prepared HU (z, H, W) → float16 (z, H, W); see blobness.py."""

    return blobness(hu, frame_spacing(geom, spacing_xyz))


def preprocess_inputs(
    vol: Volume, prep: PrepConfig, stats: Mapping[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray | None, PrepGeometry]:
    """:func:`preprocess_volume`, plus the blobness channel float16 (z, H, W) when ``prep.blob`` (else None)."""
    hu, geom = _prepared_hu(vol, prep)
    blob = prepared_blob(hu, geom, vol.spacing) if prep.blob else None
    return normalise(hu, prep, stats), blob, geom


def preprocess_mask(mask: np.ndarray, geom: PrepGeometry) -> np.ndarray:
    """A {0, 1} mask (z, y, x) on the input grid → uint8 (z, H, W), nearest neighbour, padding = 0.

    Only slices holding foreground are resized (the rest stay 0), so typical masks cost little.
    """
    return mask_into(mask, geom, np.zeros((geom.orig_shape[0], *geom.size), dtype=np.uint8))


def mask_into(mask: np.ndarray, geom: PrepGeometry, out: np.ndarray) -> np.ndarray:
    """:func:`preprocess_mask` into ``out`` (uint8 (z, H, W), all 0); returns ``out``."""
    if tuple(mask.shape) != tuple(geom.orig_shape):
        raise ValueError(f"mask shape {mask.shape} differs from the geometry's {geom.orig_shape}")
    z, y, x = geom.orig_shape
    H, W = geom.size
    rs, rd = overlap(geom.resized[0], H, geom.offset[0])
    cs, cd = overlap(geom.resized[1], W, geom.offset[1])
    iy = _nearest_index(y, geom.resized[0])[rs]
    ix = _nearest_index(x, geom.resized[1])[cs]
    for k in np.flatnonzero(mask.reshape(z, -1).any(axis=1)):
        out[k, rd, cd] = (mask[k][iy[:, None], ix[None, :]] != 0).view(np.uint8)
    return out


def restored_chunks(prob, geom: PrepGeometry, chunk: int = CHUNK):
    """Yield (first slice, float32 torch tensor (n, y, x)) of ``prob`` (z, H, W; numpy, or a torch tensor on
    any device: the chunks are on that device) mapped back onto the input grid, ``chunk`` slices at a time;
    each chunk is valid until the next one is asked for."""

    z, y, x = geom.orig_shape
    if tuple(prob.shape) != (z, *geom.size):
        raise ValueError(f"array shape {prob.shape} differs from the prepared shape {(z, *geom.size)}")
    t = prob if torch.is_tensor(prob) else torch.from_numpy(prob)
    h, w = geom.resized
    rs, rd = overlap(h, geom.size[0], geom.offset[0])
    cs, cd = overlap(w, geom.size[1], geom.offset[1])
    for i in range(0, z, chunk):
        part = t[i : i + chunk]
        canvas = torch.zeros((part.shape[0], h, w), dtype=torch.float32, device=t.device)
        canvas[:, rs, cs] = part[:, rd, cd]
        yield i, resize(canvas, (y, x), "bilinear")


def restore_geometry(prob: np.ndarray, geom: PrepGeometry) -> np.ndarray:
    """Map a prepared-frame array (z, H, W) back onto the input grid: float32 (z, y, x).

    Undoes the pad/crop (regions that were cropped away, i.e. outside the model's field of view, get 0),
    then resizes back with bilinear interpolation.
    """
    out = np.empty(geom.orig_shape, dtype=np.float32)
    for i, part in restored_chunks(prob, geom):
        out[i : i + part.shape[0]] = part.numpy()
    return out


def restore_mask(prob: np.ndarray, geom: PrepGeometry, threshold: float) -> np.ndarray:
    """``(restore_geometry(prob, geom) >= threshold)`` as uint8 {0, 1} (z, y, x), bit for bit, without the
    float32 map on the input grid: each chunk of slices is restored and thresholded on its own."""
    out = np.empty(geom.orig_shape, dtype=np.bool_)
    for i, part in restored_chunks(prob, geom):
        out[i : i + part.shape[0]] = (part >= threshold).numpy()
    return out.view(np.uint8)
