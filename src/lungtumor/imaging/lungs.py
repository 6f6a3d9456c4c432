"""Lung masks from HU: air inside the body, closed and filled, on a coarse grid; the lungs' z range."""

from __future__ import annotations

import os
from collections.abc import Sequence

import edt
import numpy as np
from scipy import ndimage as ndi

from lungtumor.imaging.components import component_sizes, label_compact, slab


def _edt_at_most(a: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """bool (z, y, x): voxels of ``a`` whose Euclidean distance in mm (``spacing_zyx``) to the nearest False
    voxel is at most ``radius_mm``, the edges not counting as False (scipy's ``distance_transform_edt``).

    The ``edt`` package computes the distances in float32 in a few threads (4 bytes per voxel, about 4x faster
    than scipy's feature transform here); ``radius_mm`` gets 1e-4 mm of slack so that float32 rounding cannot
    drop a voxel lying exactly on the ball's surface. So the decisions are scipy's except for a voxel whose
    distance lies in (radius, radius + 1e-4 mm], which it adds (none on the grids tested)."""

    d = edt.edt(
        np.ascontiguousarray(a, dtype=bool),
        anisotropy=tuple(float(s) for s in spacing_zyx),  # in the array's axis order
        black_border=False,
        parallel=_edt_threads(),
    )
    return np.less_equal(d, np.float32(radius_mm + 1e-4))


def _edt_threads() -> int:
    """Threads for the distance transform: the CPUs this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _edt_closing(mask: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (physical units), via two distance transforms."""
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    m = np.pad(mask, [(p, p) for p in pad])
    np.logical_not(m, out=m)
    dilated = _edt_at_most(m, spacing_zyx, radius_mm)
    del m
    closed = _edt_at_most(dilated, spacing_zyx, radius_mm)
    np.logical_not(closed, out=closed)
    return closed[tuple(slice(p, p + n) for p, n in zip(pad, mask.shape, strict=True))]


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndi.binary_fill_holes(mask[k])
    return out


def lung_grid_step(spacing: Sequence[float], coarse_mm: float = 1.5) -> int:
    """In-plane step f of the lung mask's coarse grid: round(coarse_mm / smallest in-plane pixel), at least 1
    (0.8 mm pixels: f = 2, a 1.6 mm grid); 1 when ``coarse_mm`` <= 0. ``spacing`` is (x, y, z) in mm."""
    if coarse_mm <= 0:
        return 1
    return max(1, int(np.floor(coarse_mm / min(float(spacing[0]), float(spacing[1])) + 0.5)))


def _air_on_grid(ct: np.ndarray, f: int, threshold_hu: float) -> np.ndarray:
    """bool (z, ceil(y / f), ceil(x / f)): the f x f in-plane blocks of ``ct`` whose mean is below
    ``threshold_hu`` (edge blocks may be smaller), summed in float32 a slab of slices at a time. Block means,
    not every f-th pixel, keep the coarse mask centred on the full-size one."""
    if f == 1:
        return ct < threshold_hu
    ny, nx = -(-ct.shape[1] // f), -(-ct.shape[2] // f)
    area = np.diff(np.arange(0, ct.shape[1], f), append=ct.shape[1])[:, None] * np.diff(
        np.arange(0, ct.shape[2], f), append=ct.shape[2]
    )
    limit = (threshold_hu * area).astype(np.float32)
    air = np.empty((ct.shape[0], ny, nx), dtype=bool)
    step = slab(ct)
    acc = np.empty((min(step, ct.shape[0]), ny, nx), dtype=np.float32)
    for k in range(0, ct.shape[0], step):
        a = acc[: len(ct[k : k + step])]
        a[...] = 0
        for dy in range(f):
            for dx in range(f):
                part = ct[k : k + step, dy::f, dx::f]
                a[:, : part.shape[1], : part.shape[2]] += part
        np.less(a, limit, out=air[k : k + step])
    return air


def _lung_air(ct: np.ndarray, f: int, threshold_hu: float, min_fraction: float) -> np.ndarray:
    """bool (z, ceil(y / f), ceil(x / f)): on the f-grid (:func:`_air_on_grid`), the largest 3D component of
    the air not connected to a slice border, and the second largest when it holds at least ``min_fraction``
    of the largest (the lungs before closing)."""
    air = _air_on_grid(ct, f, threshold_hu)
    # in-plane (4-connected) components of every slice at once; drop those touching the slice border
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(air, structure=plane)
    if n:
        border = np.zeros(n + 1, dtype=bool)
        for edge in (lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]):
            border[edge] = True
        border[0] = False
        step = slab(lab)
        for k in range(0, len(lab), step):
            air[k : k + step] &= ~border[lab[k : k + step]]
    del lab
    lab, n = label_compact(air)  # 6-connectivity: do not join lungs to bowel gas through corners
    if n == 0:
        return air
    counts = component_sizes(lab, n)
    counts[0] = 0
    order = np.argsort(counts)[::-1]
    np.equal(lab, order[0], out=air)
    if n > 1 and counts[order[1]] >= min_fraction * counts[order[0]]:
        air |= lab == order[1]
    return air


def close_and_fill(
    lung: np.ndarray, spacing_zyx: Sequence[float], close_mm: float, zs: slice | None = None
) -> np.ndarray:
    """Close ``lung`` (bool, z, y, x) with a ball of ``close_mm`` and fill holes slice by slice, in place, on the
    bounding box plus the closing radius (to keep the distance transforms small).

    With ``zs``, only the slices ``zs`` are closed and filled, from the slices within twice the closing radius
    of them (all a closing looks at): the same values there as for the whole volume, at a fraction of the cost.
    """
    pad = [int(np.ceil(close_mm / s)) + 1 if close_mm > 0 else 0 for s in spacing_zyx]
    zz = np.flatnonzero(lung.any(axis=(1, 2)))
    if len(zz) == 0:
        return lung
    sub = lung[zz[0] : zz[-1] + 1]
    yy = np.flatnonzero(sub.any(axis=(0, 2)))
    xx = np.flatnonzero(sub.any(axis=(0, 1)))
    box = tuple(
        slice(max(0, int(r[0]) - p), int(r[-1]) + p + 1) for r, p in zip((zz, yy, xx), pad, strict=True)
    )
    keep = slice(box[0].start, min(box[0].stop, len(lung)))  # slices to write, in lung's z indices
    if zs is not None:
        keep = slice(max(keep.start, zs.start), min(keep.stop, zs.stop))
        if keep.start >= keep.stop:
            return lung  # zs lies outside the closed box, where the lung stays empty
        reach = 2 * pad[0]  # slices farther than 2 x close_mm
        box = (slice(max(box[0].start, keep.start - reach), min(box[0].stop, keep.stop + reach)), *box[1:])
    sub = lung[box]
    if close_mm > 0:
        sub = _edt_closing(sub, spacing_zyx, close_mm)
    z0 = box[0].start
    lung[(keep, *box[1:])] = _fill_holes_per_slice(sub[keep.start - z0 : keep.stop - z0])
    return lung


def _upsample(small: np.ndarray, f: int, shape: Sequence[int]) -> np.ndarray:
    """Full-size (z, y, x) array with ``out[z, y, x] = small[z, y // f, x // f]``."""
    out = np.empty(tuple(shape), dtype=small.dtype)
    for dy in range(f):
        for dx in range(f):
            part = out[:, dy::f, dx::f]
            part[...] = small[:, : part.shape[1], : part.shape[2]]
    return out


def coarse_lung_mask(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold_hu: float = -400.0,
    close_mm: float = 10.0,
    min_fraction: float = 0.1,
    coarse_mm: float = 1.5,
) -> tuple[np.ndarray, int]:
    """:func:`lung_mask_from_hu` on its coarse grid, not repeated back to full size.

    Returns:
        (lung bool (z, ceil(y / f), ceil(x / f)), f): full-size voxel (z, y, x) is lung when
        ``lung[z, y // f, x // f]``; f = :func:`lung_grid_step`.
    """
    lung, f = lung_air_hu(
        ct_hu, spacing, threshold_hu=threshold_hu, min_fraction=min_fraction, coarse_mm=coarse_mm
    )
    spacing_zyx = (float(spacing[2]), float(spacing[1]) * f, float(spacing[0]) * f)
    return close_and_fill(lung, spacing_zyx, close_mm), f


def lung_mask_from_hu(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold_hu: float = -400.0,
    close_mm: float = 10.0,
    min_fraction: float = 0.1,
    coarse_mm: float = 1.5,
) -> np.ndarray:
    """A coarse lung mask from a CT in Hounsfield units, meant for gating lesions, not for lung volumetry.

    The mask is computed on f x f in-plane blocks (their mean HU), f = round(``coarse_mm`` / in-plane pixel) (so
    about ``coarse_mm``; 0.8 mm pixels give a 1.6 mm grid; 0 disables this), and repeated back to full size: a
    gating mask need not be finer, and it costs 1/f² of the memory and time.

    Steps: air = block mean HU < ``threshold_hu``; on every slice, remove the air connected to the slice border (outside
    the body, the table, the field-of-view padding); keep the largest 3D component and the second largest when
    it holds at least ``min_fraction`` of the largest (the two lungs, whether or not they are joined); close
    with a ball of ``close_mm`` mm and fill holes slice by slice, so vessels, nodules and tumours that abut
    the chest wall or mediastinum fall inside the mask.

    Args:
        ct_hu: (z, y, x) CT in HU.
        spacing: voxel size (x, y, z) in mm.

    Returns:
        bool (z, y, x). Empty when no lung-like air is found (for example when the image is not in HU);
        callers should check ``lung.any()`` before gating with it.
    """
    lung, f = coarse_lung_mask(
        ct_hu,
        spacing,
        threshold_hu=threshold_hu,
        close_mm=close_mm,
        min_fraction=min_fraction,
        coarse_mm=coarse_mm,
    )
    return lung if f == 1 else _upsample(lung, f, np.shape(ct_hu))


def lung_air_hu(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold_hu: float = -400.0,
    min_fraction: float = 0.1,
    coarse_mm: float = 1.5,
) -> tuple[np.ndarray, int]:
    """The lungs' air before closing, on the coarse grid, and its step f: what :func:`gate_to_lungs_hu` starts
    from (the same defaults), for callers that also want :func:`lung_z_range` from it.

    Returns:
        (bool (z, ceil(y / f), ceil(x / f)), f); ``spacing`` is (x, y, z) in mm.
    """
    f = lung_grid_step(spacing, coarse_mm)
    return _lung_air(np.asarray(ct_hu), f, threshold_hu, min_fraction), f


def lung_z_range(
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    margin_mm: float = 30.0,
    air: tuple[np.ndarray, int] | None = None,
) -> tuple[int, int] | None:
    """Slices [lo, hi) that hold the lungs' air plus ``margin_mm`` each side; None when no lung-like air is
    found. ``spacing`` is (x, y, z) in mm; ``air``: :func:`lung_air_hu` of ``ct_hu`` when already computed.

    The air is :func:`gate_to_lungs_hu`'s own, and the lung mask the gate tests lesions against is that air
    closed and filled, which adds no slice beyond the air's. So a lesion the gate keeps has voxels inside this
    range, and predicting only these slices changes at most the part of a lesion lying more than ``margin_mm``
    above or below every lung voxel; and when this finds no lungs, neither does the gate (which then keeps
    everything: predict then runs on every slice)."""
    a, _ = air if air is not None else lung_air_hu(ct_hu, spacing)
    zz = np.flatnonzero(a.any(axis=(1, 2)))
    if len(zz) == 0:
        return None
    m = int(np.ceil(margin_mm / float(spacing[2])))
    return max(0, int(zz[0]) - m), min(len(a), int(zz[-1]) + m + 1)


def lung_window(lung: np.ndarray, f: int, window: tuple[slice, ...]) -> np.ndarray:
    """Full-resolution bool crop ``window`` (z, y, x slices of the full grid) of a lung mask on the f-grid."""
    if f == 1:
        return lung[window]
    zs, ys, xs = window
    r0, c0 = ys.start // f, xs.start // f
    sub = lung[zs, r0 : (ys.stop - 1) // f + 1, c0 : (xs.stop - 1) // f + 1]
    up = sub.repeat(f, axis=1).repeat(f, axis=2)
    return up[:, ys.start - r0 * f : ys.stop - r0 * f, xs.start - c0 * f : xs.stop - c0 * f]
