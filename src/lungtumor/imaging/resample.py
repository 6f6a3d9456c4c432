"""Resampling arrays (z, y, x) to isotropic grids, whole or around sparse boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi


def iso_shape(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], spacing_mm: float
) -> tuple[int, int, int]:
    """Shape of a (z, y, x) grid resampled to ``spacing_mm`` isotropic, first and last voxels in place."""
    return tuple(  # type: ignore[return-value]
        max(2, int(round((n - 1) * s / spacing_mm)) + 1) if n > 1 else 1
        for n, s in zip(shape_zyx, spacing_zyx, strict=True)
    )


def resample(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resampling of (z, y, x) to ``shape``, first and last voxels in place (float32; scipy only, so
    it is safe in forked worker processes). Edges are extended: a last output plane whose coordinate rounds a
    hair past the last input plane (25 x 14/25 = 14.000000000000002) reads that plane, not 0 (until decision
    0035 the detector's training cubes came through here with the 0; decision 0015)."""
    a = np.asarray(a, dtype=np.float32)
    if tuple(a.shape) == tuple(shape):
        return a.copy()
    factors = [int(o) / int(i) for o, i in zip(shape, a.shape, strict=True)]
    return ndi.zoom(a, factors, order=1, mode="nearest", prefilter=False, grid_mode=False)


def resample_sparse(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """:func:`resample` of an ``a`` that is 0 outside a small box (the detector's pasted cubes): only the output
    voxels whose interpolation reaches that box are computed, the same values (to 1e-7), 0 elsewhere.
    """
    a = np.asarray(a, dtype=np.float32)
    shape = tuple(int(n) for n in shape)
    if a.shape == shape or min(shape) < 2 or min(a.shape) < 2:
        return resample(a, shape)
    out = np.zeros(shape, np.float32)
    spans = [np.flatnonzero(a.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    if any(len(s) == 0 for s in spans):
        return out
    f = np.array([(i - 1) / (o - 1) for i, o in zip(a.shape, shape, strict=True)])  # output index -> input
    o_box, i_box = [], []
    for s, fi, n_in, n_out in zip(spans, f, a.shape, shape, strict=True):
        lo, hi = int(s[0]), int(s[-1])  # outputs at input coordinates in (lo - 1, hi + 1) can be non-zero
        o0 = max(0, int(np.floor((lo - 1) / fi)))
        o1 = min(n_out, int(np.ceil((hi + 1) / fi)) + 1)
        i0 = max(0, int(np.floor(o0 * fi)))
        i1 = min(n_in, int(np.floor((o1 - 1) * fi)) + 2)
        o_box.append(slice(o0, o1))
        i_box.append(slice(i0, i1))
    offset = [b.start * fi - ib.start for b, fi, ib in zip(o_box, f, i_box, strict=True)]
    out[tuple(o_box)] = ndi.affine_transform(
        a[tuple(i_box)], f, offset=offset, output_shape=tuple(b.stop - b.start for b in o_box),
        order=1, mode="nearest", prefilter=False,
    )  # fmt: skip
    return out
