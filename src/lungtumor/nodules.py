"""Nodule candidates in 3D, and how the detector's lesions join a 2D model's mask (numpy and scipy only).

The detector (``nodule_train.py``, config ``nodule``) works on the 2D recipe's prepared frame (z, H, W) in HU,
resampled to an isotropic grid of ``spacing_mm``. Candidates are local maxima of the scale-normalised
Laplacian of Gaussian (bright blobs of radius ``radii_mm``) inside the lungs: every lesion from about 5 mm
up gives at least one, and so do many vessels, which the network then tells apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

#: HU range the blob filter sees: bone and contrast count as soft tissue.
LOG_HU = (-1000.0, 100.0)
#: HU range of the patches the network sees.
PATCH_HU = (-1000.0, 400.0)


def iso_shape(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], spacing_mm: float
) -> tuple[int, int, int]:
    """Shape of a (z, y, x) grid resampled to ``spacing_mm`` isotropic, first and last voxels in place."""
    return tuple(  # type: ignore[return-value]
        max(2, int(round((n - 1) * s / spacing_mm)) + 1) if n > 1 else 1
        for n, s in zip(shape_zyx, spacing_zyx, strict=True)
    )


def resample(a: np.ndarray, shape: Sequence[int], mode: str = "constant") -> np.ndarray:
    """Linear resampling of (z, y, x) to ``shape``, first and last voxels in place (float32; scipy only, so
    it is safe in forked worker processes).

    Known quirk, kept: for some shape pairs the last output plane's coordinate rounds to a hair past the last
    input plane (e.g. 25 x 14/25 = 14.000000000000002), and scipy's default ``mode="constant"`` then gives 0
    there. The detector's training cubes are cut from frames made this way; extending the edges instead
    (``mode="nearest"``) trains other detectors: over three seeds they scored 0.538 against 0.559 on the 40
    held-out phantoms, inside the seeds' own spread of 0.09 (BENCHMARKS.md "Session 11: the resample edge"),
    and seed 0's missed one of the demo's 10 lesions. Nothing argues for the change yet (``mode`` is there
    to measure it: ``benchmarks/detector_seeds.py --resample-edge nearest``)."""
    a = np.asarray(a, dtype=np.float32)
    if tuple(a.shape) == tuple(shape):
        return a.copy()
    factors = [int(o) / int(i) for o, i in zip(shape, a.shape, strict=True)]
    return ndi.zoom(a, factors, order=1, mode=mode, prefilter=False, grid_mode=False)


def resample_sparse(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """:func:`resample` of an ``a`` that is 0 outside a small box (the detector's pasted cubes): only the output
    voxels whose interpolation reaches that box are computed, the same values (to 1e-7), 0 elsewhere; on a
    last plane that :func:`resample` reads as 0 (its quirk), this gives the interpolated value.
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


def find_candidates(
    hu_iso: np.ndarray,
    spacing_mm: float,
    radii_mm: Sequence[float],
    min_response: float,
    min_hu: float,
    threads: int = 1,
) -> np.ndarray:
    """Bright-blob centres inside the lungs.

    Args:
        hu_iso: (z, y, x) HU on an isotropic grid of ``spacing_mm``.
        threads: filter the scales in this many threads (scipy releases the GIL; the result is the same).

    Returns:
        int (N, 3) voxel indices (z, y, x): local maxima (3x3x3) of max over radii r of
        -sigma² LoG (sigma = r / sqrt(3)) of the clipped HU, at least ``min_response``, with at least
        ``min_hu`` at the centre, within 2 voxels of a lung mask computed from HU (none when no lung is found).
    """
    from lungtumor.postprocess import lung_mask_from_hu

    hu = np.asarray(hu_iso, dtype=np.float32)
    if min(hu.shape) < 3:
        return np.zeros((0, 3), np.int64)
    lung = lung_mask_from_hu(hu, (spacing_mm,) * 3, coarse_mm=0.0)
    if not lung.any():
        return np.zeros((0, 3), np.int64)
    # filter only the lungs' box plus a margin wider than the largest kernel (scipy truncates at 4 sigma) and
    # the 3x3x3 maximum: inside the box the values are those of the whole volume, at a fraction of the cost
    sigmas = [float(r) / np.sqrt(3.0) / spacing_mm for r in radii_mm]
    margin = int(4 * max(sigmas) + 0.5) + 4
    box = tuple(
        slice(max(0, int(np.flatnonzero(lung.any(axis=other)).min()) - margin),
              min(n, int(np.flatnonzero(lung.any(axis=other)).max()) + margin + 1))
        for other, n in (((1, 2), hu.shape[0]), ((0, 2), hu.shape[1]), ((0, 1), hu.shape[2]))
    )  # fmt: skip
    sub = hu[box]
    inner = ndi.binary_dilation(lung[box], iterations=2)
    clipped = np.clip(sub, *LOG_HU)

    def scale(s: float, clipped: np.ndarray = clipped) -> np.ndarray:
        x = ndi.gaussian_laplace(clipped, s)
        x *= np.float32(-(s**2))
        return x

    response: np.ndarray | None = None
    if threads > 1 and len(sigmas) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(sigmas))) as ex:
            futures = [ex.submit(scale, s) for s in sigmas]
            while futures:  # fold each map in as it is ready: few of them are alive at once
                x = futures.pop(0).result()
                response = x if response is None else np.maximum(response, x, out=response)
                del x
    else:
        for s in sigmas:
            x = scale(s)
            response = x if response is None else np.maximum(response, x, out=response)
    assert response is not None
    del clipped
    peaks = response == ndi.maximum_filter(response, size=3)
    peaks &= response >= min_response
    peaks &= inner
    peaks &= sub >= min_hu
    return np.argwhere(peaks) + np.array([b.start for b in box])


def extract_patches(vol: np.ndarray, centres: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Cubes of side ``size`` centred on ``centres`` (N, 3) of ``vol`` (z, y, x), padded with ``fill``.

    Returns (N, size, size, size) of ``vol``'s dtype; cube voxel (i, j, k) is ``vol[c - size // 2 + (i, j, k)]``.
    """
    return cut_patches(np.pad(vol, size // 2, constant_values=fill), centres, size)


def cut_patches(padded: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """:func:`extract_patches` from a volume already padded by ``size // 2`` on every side (pad once, cut in
    batches)."""
    out = np.empty((len(centres), size, size, size), dtype=padded.dtype)
    for n, (z, y, x) in enumerate(np.asarray(centres, dtype=np.int64)):
        out[n] = padded[z : z + size, y : y + size, x : x + size]
    return out


def paste_max(shape: Sequence[int], centres: np.ndarray, cubes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`extract_patches`: a float32 volume of ``shape`` holding, at each voxel, the maximum of
    the cubes that cover it (0 where none does)."""
    size = cubes.shape[1] if len(cubes) else 0
    h = size // 2
    out = np.zeros(tuple(int(n) + 2 * h for n in shape), np.float32)
    for (z, y, x), cube in zip(np.asarray(centres, dtype=np.int64), cubes, strict=True):
        view = out[z : z + size, y : y + size, x : x + size]
        np.maximum(view, cube, out=view)
    return out[h : h + shape[0], h : h + shape[1], h : h + shape[2]] if h else out


def drop_unconfirmed_small(
    prob: np.ndarray, detector_prob: np.ndarray, threshold: float, min_voxels: int
) -> np.ndarray:
    """The 2D model's small lesions stand only where the detector agrees (both (z, y, x) on one grid).

    A component of ``prob >= threshold`` of fewer than ``min_voxels`` voxels that no voxel of
    ``detector_prob >= 0.5`` touches (26-neighbourhood) is set to 0: on a few axial slices a vessel's
    cross-section looks like a small nodule, and the 3D detector is the judge of those. Larger components and
    everything else keep ``prob``. Returns float32 (z, y, x), a new array.
    """
    out = np.array(prob, dtype=np.float32, copy=True)
    if min_voxels <= 0:
        return out
    labels, n = ndi.label(out >= threshold, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return out
    small = np.bincount(labels.ravel(), minlength=n + 1) < min_voxels
    small[0] = False
    if not small.any():
        return out
    near = ndi.binary_dilation(detector_prob >= 0.5, structure=np.ones((3, 3, 3), bool))
    small[np.unique(labels[near])] = False
    out[small[labels]] = 0.0
    return out


def add_missed_lesions(
    prob: np.ndarray, detector_prob: np.ndarray, threshold: float, min_voxels: int = 0
) -> np.ndarray:
    """Join the detector's lesions to a 2D model's probabilities (both (z, y, x) on one grid).

    A component of ``detector_prob >= 0.5`` of at least ``min_voxels`` voxels that no voxel of
    ``prob >= threshold`` touches is a lesion the 2D model missed. On it and one voxel around it the result is ``max(prob, m(detector_prob))``, where m is
    piecewise linear with m(0) = 0, m(0.5) = ``threshold``, m(1) = 1: it is cut where the detector's 0.5 is,
    and the edge stays smooth when the probabilities are later resampled to the input grid. Everywhere else,
    and so on every lesion the 2D model found, the result is ``prob``. Returns float32 (z, y, x).
    """
    out = np.array(prob, dtype=np.float32, copy=True)
    found = detector_prob >= 0.5
    if not found.any():
        return out
    labels, n = ndi.label(found, structure=np.ones((3, 3, 3), bool))
    touched = np.zeros(n + 1, bool)
    touched[np.unique(labels[out >= threshold])] = True
    new = ~touched
    new[0] = False
    if min_voxels > 0:
        new &= np.bincount(labels.ravel(), minlength=n + 1) >= min_voxels
    if not new.any():
        return out
    region = ndi.binary_dilation(new[labels], structure=np.ones((3, 3, 3), bool))
    d = np.asarray(detector_prob, dtype=np.float32)[region]
    t = np.float32(threshold)
    mapped = np.where(d < 0.5, d * (2 * t), t + (d - 0.5) * (2 * (1 - t)))
    out[region] = np.maximum(out[region], mapped)
    return out
