"""Post-processing of binary tumour masks: connected components, size filters and lung gating.

All arrays are indexed (z, y, x); spacings are (x, y, z) in mm, as in :class:`lungtumor.volume.Volume`.

Connectivity: a lesion is a 3D connected component with **26-connectivity** (voxels sharing a face, an edge
or a corner belong together). A voxelised lesion often touches itself only diagonally across a thick
slice, and 6-connectivity would then split one tumour into several. ``measure`` and ``metrics`` use the
same rule through :func:`label_components_in_box` and :func:`label_components`.

Memory (issue #4): the filters label only the bounding box of the mask, in uint16 when the labels fit
(:func:`label_components_in_box`), and the lung gate works on the lung mask's coarse grid and closes it only
where needed (:func:`gate_to_lungs_hu`): postprocessing a 512x512x300 CT allocates about half the input's
float32 size (BENCHMARKS.md, "predict speed (CPU)").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

#: Structuring element for lesion components: 26-connectivity in 3D.
LESION_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a binary mask.

    Args:
        mask: (z, y, x), any dtype; non-zero is foreground.

    Returns:
        (labels int32 (z, y, x) with 0 = background and 1..n, n).
    """
    labels, n = ndi.label(np.asarray(mask) != 0, structure=LESION_STRUCTURE)
    return labels.astype(np.int32, copy=False), int(n)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """(z, y, x) slices of the box around the non-zero voxels, grown by ``margin`` and clipped; None if empty."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if len(zs) == 0:
        return None
    sub = mask[zs[0] : zs[-1] + 1]
    ranges = (zs, np.flatnonzero(sub.any(axis=(0, 2))), np.flatnonzero(sub.any(axis=(0, 1))))
    return tuple(
        slice(max(0, int(r[0]) - margin), min(dim, int(r[-1]) + 1 + margin))
        for r, dim in zip(ranges, mask.shape, strict=True)
    )


def _few_runs(a: np.ndarray, limit: int = 1 << 16) -> bool:
    """Whether ``a`` (z, y, x) has fewer than ``limit`` runs of non-zero voxels along x (counted a slab at a
    time); ``ndi.label`` opens at most one provisional label per run."""
    if np.count_nonzero(a) < limit:
        return True
    runs, step = 0, _slab(a)
    for k in range(0, len(a), step):
        b = a[k : k + step] != 0
        runs += np.count_nonzero(b[..., 0]) + np.count_nonzero(b[..., 1:] > b[..., :-1])
        if runs >= limit:
            return False
    return True


def _label_compact(a: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``ndi.label`` (non-zero = foreground) into uint16 labels when they surely fit, else int32.

    A failed uint16 attempt would cost scipy an int32 copy on top of it, so uint16 is only tried when there are
    fewer than 65536 runs along x."""
    if _few_runs(a):
        try:
            labels, n = ndi.label(a, structure=structure, output=np.uint16)
            return labels, int(n)
        except RuntimeError:  # scipy refuses labels that do not fit the requested dtype
            pass
    labels, n = ndi.label(a, structure=structure, output=np.int32)  # outside the except: its frames are freed
    return labels, int(n)


def label_components_in_box(mask: np.ndarray, margin: int = 0) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """The 26-connected components of a binary mask, labelled only inside the bounding box of its voxels.

    Same components and numbering as :func:`label_components` restricted to the box, without a full-volume
    int32 array: 2 bytes per box voxel (uint16; int32 beyond 65535 components).

    Args:
        mask: (z, y, x), any dtype; non-zero is foreground.
        margin: voxels added to the box on every side (clipped to the volume).

    Returns:
        (box: (z, y, x) slices into ``mask``; labels of the box's shape, 0 = background and 1..n; n). An empty
        mask gives zero-size slices and n = 0.
    """
    m = np.asarray(mask)
    box = _bbox(m, margin)
    if box is None:
        return (slice(0, 0),) * m.ndim, np.zeros((0,) * m.ndim, np.uint16), 0
    labels, n = _label_compact(m[box], LESION_STRUCTURE)
    return box, labels, n


def _slab(a: np.ndarray, elements: int = 1 << 20) -> int:
    """Number of leading-axis planes of ``a`` in a slab of about ``elements`` elements (at least one)."""
    return max(1, elements // max(1, a[0].size)) if len(a) else 1


def component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of each label 0..n of a label array (int64, length n + 1), a slab at a time, so that the
    labels are never copied to int64 as a whole (``np.bincount`` converts its input to intp)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    step = _slab(labels)
    for k in range(0, len(labels), step):
        counts += np.bincount(labels[k : k + step].ravel(), minlength=n + 1)
    return counts


def _paint(out: np.ndarray, labels: np.ndarray, table: np.ndarray) -> None:
    """``out[...] = table[labels]`` a slab at a time (fancy indexing would copy the labels to intp)."""
    step = _slab(labels)
    for k in range(0, len(labels), step):
        out[k : k + step] = table[labels[k : k + step]]


def remove_small_components(mask: np.ndarray, spacing_xyz: Sequence[float], min_mm3: float) -> np.ndarray:
    """Drop the components whose volume is below ``min_mm3``.

    Args:
        mask: (z, y, x) binary mask.
        spacing_xyz: voxel size (x, y, z) in mm.
        min_mm3: smallest component volume to keep, mm³ (voxel count x voxel volume).

    Returns:
        uint8 (z, y, x) mask in {0, 1}.
    """
    return filter_components(mask, spacing_xyz, min_mm3=min_mm3)


#: :func:`remove_flat_components` keeps every component on at least this many slices ...
DEEP_SLICES = 3
#: ... and at least this deep (mm), whatever its width.
DEEP_MM = 10.0


def remove_flat_components(mask: np.ndarray, spacing_xyz: Sequence[float], min_ratio: float) -> np.ndarray:
    """Drop the components that are much thinner along z than they are wide in the axial plane.

    A tumour is a 3D object about as deep as it is wide (median depth / width 1.2 over the phantoms' and the
    28 real labelled lesions here, 0.44 at the lowest); a 2D model's false positives are often drawn on one or
    two slices only. A component is kept when its z extent (the number of slices it touches x the z spacing,
    mm) is at least ``min_ratio`` x the equivalent diameter of its largest axial cross-section (mm). On thick
    slices a small lesion on one slice passes: with 5 mm slices and ``min_ratio`` 0.5, anything up to 10 mm wide.
    A component on at least :data:`DEEP_SLICES` slices and :data:`DEEP_MM` mm deep is always kept: that is no
    one-or-two-slice artefact, but often the part of a large tumour that the model found (a 56 mm wide, 21 mm
    deep piece of a real 156 mL tumour; on the held-out phantoms every flat component lay on 1 or 2 slices).

    Args:
        mask: (z, y, x) binary mask.
        spacing_xyz: voxel size (x, y, z) in mm.
        min_ratio: smallest z extent / axial diameter to keep; 0 keeps everything.

    Returns:
        uint8 (z, y, x) mask in {0, 1}.
    """
    return filter_components(mask, spacing_xyz, min_z_ratio=min_ratio)


def filter_components(
    mask: np.ndarray, spacing_xyz: Sequence[float], min_mm3: float = 0.0, min_z_ratio: float = 0.0
) -> np.ndarray:
    """Both component filters with one labelling of the mask's box: keep a component when its volume is at
    least ``min_mm3`` (mm³) and its z extent at least ``min_z_ratio`` x its largest axial equivalent diameter
    (see :func:`remove_small_components`, :func:`remove_flat_components`; 0 turns a filter off).

    Returns:
        uint8 (z, y, x) mask in {0, 1}.
    """
    m = np.asarray(mask)
    if min_mm3 <= 0 and min_z_ratio <= 0:
        return (m != 0).view(np.uint8)
    out = np.zeros(m.shape, dtype=np.uint8)
    box, labels, n = label_components_in_box(m)
    if n == 0:
        return out
    sx, sy, sz = (float(v) for v in spacing_xyz)
    keep = np.ones(n + 1, dtype=bool)
    if min_z_ratio > 0:  # one pass over the planes gives the sizes too
        sizes = np.zeros(n + 1, dtype=np.int64)
        n_slices = np.zeros(n + 1, dtype=np.int64)
        largest = np.zeros(n + 1, dtype=np.int64)  # voxels of each component's largest axial cross-section
        for plane in labels:
            counts = np.bincount(plane.ravel(), minlength=n + 1)
            sizes += counts
            n_slices += counts > 0
            np.maximum(largest, counts, out=largest)
        deep = (n_slices >= DEEP_SLICES) & (n_slices * sz >= DEEP_MM)  # never flat, whatever its width
        keep &= deep | (n_slices * sz >= min_z_ratio * 2.0 * np.sqrt(largest * sx * sy / np.pi))
    else:
        sizes = component_sizes(labels, n)
    if min_mm3 > 0:
        keep &= sizes * (sx * sy * sz) >= min_mm3
    keep[0] = False
    _paint(out[box], labels, keep.astype(np.uint8))
    return out


def _edt_at_most(a: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """bool (z, y, x): voxels of ``a`` whose Euclidean distance in mm (``spacing_zyx``) to the nearest False
    voxel is at most ``radius_mm``, the edges not counting as False (scipy's ``distance_transform_edt``).

    The ``edt`` package computes the distances in float32 in a few threads (4 bytes per voxel, about 4x faster
    than scipy's feature transform here); ``radius_mm`` gets 1e-4 mm of slack so that float32 rounding cannot
    drop a voxel lying exactly on the ball's surface. So the decisions are scipy's except for a voxel whose
    distance lies in (radius, radius + 1e-4 mm], which it adds (none on the grids tested)."""
    import edt

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
    step = _slab(ct)
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
        step = _slab(lab)
        for k in range(0, len(lab), step):
            air[k : k + step] &= ~border[lab[k : k + step]]
    del lab
    lab, n = _label_compact(air)  # 6-connectivity: do not join lungs to bowel gas through corners
    if n == 0:
        return air
    counts = component_sizes(lab, n)
    counts[0] = 0
    order = np.argsort(counts)[::-1]
    np.equal(lab, order[0], out=air)
    if n > 1 and counts[order[1]] >= min_fraction * counts[order[0]]:
        air |= lab == order[1]
    return air


def _close_and_fill(
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
    return _close_and_fill(lung, spacing_zyx, close_mm), f


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


def _lung_window(lung: np.ndarray, f: int, window: tuple[slice, ...]) -> np.ndarray:
    """Full-resolution bool crop ``window`` (z, y, x slices of the full grid) of a lung mask on the f-grid."""
    if f == 1:
        return lung[window]
    zs, ys, xs = window
    r0, c0 = ys.start // f, xs.start // f
    sub = lung[zs, r0 : (ys.stop - 1) // f + 1, c0 : (xs.stop - 1) // f + 1]
    up = sub.repeat(f, axis=1).repeat(f, axis=2)
    return up[:, ys.start - r0 * f : ys.stop - r0 * f, xs.start - c0 * f : xs.stop - c0 * f]


def _gate(mask: np.ndarray, lungs: Sequence[Callable[[slice], tuple[np.ndarray, int]]]) -> np.ndarray:
    """Keep the components whose 26-neighbourhood touches a lung mask.

    ``lungs`` are called with the z range that the remaining components need and give (lung, f): a mask on
    the f-grid (see :func:`coarse_lung_mask`), correct at least in that range, each containing the previous
    one; a component is checked against the next one only if it missed the previous one, and a mask is only
    built when some component needs it."""
    m = np.asarray(mask)
    out = np.zeros(m.shape, dtype=np.uint8)
    box, labels, n = label_components_in_box(m, margin=1)  # the margin holds every component's dilation
    if n == 0:
        return out
    pending = []
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n), start=1):
        if sl is not None:
            grown = tuple(
                slice(max(0, s.start - 1), min(dim, s.stop + 1))
                for s, dim in zip(sl, labels.shape, strict=True)
            )
            window = tuple(
                slice(b.start + g.start, b.start + g.stop) for b, g in zip(box, grown, strict=True)
            )
            pending.append((i, grown, window))
    for get_lung in lungs:
        if not pending:
            break
        lung, f = get_lung(
            slice(min(w[0].start for _, _, w in pending), max(w[0].stop for _, _, w in pending))
        )
        missed = []
        for i, grown, window in pending:
            comp = labels[grown] == i
            near = ndi.binary_dilation(comp, structure=LESION_STRUCTURE)
            if np.any(near & _lung_window(lung, f, window)):
                out[window][comp] = 1
            else:
                missed.append((i, grown, window))
        pending = missed
    return out


def gate_to_lungs(mask: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Keep the lesion components that lie inside the lung mask or touch it (26-neighbourhood).

    Args:
        mask: (z, y, x) binary lesion mask.
        lung: (z, y, x) bool lung mask on the same grid. An empty lung mask removes every lesion.

    Returns:
        uint8 (z, y, x) mask in {0, 1}.
    """
    if mask.shape != lung.shape:
        raise ValueError(f"mask shape {mask.shape} differs from lung mask shape {lung.shape}")
    lung = np.asarray(lung, dtype=bool)
    return _gate(mask, [lambda zs: (lung, 1)])


def gate_to_lungs_hu(
    mask: np.ndarray,
    ct_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold_hu: float = -400.0,
    close_mm: float = 10.0,
    min_fraction: float = 0.1,
    coarse_mm: float = 1.5,
    air: tuple[np.ndarray, int] | None = None,
) -> np.ndarray | None:
    """``gate_to_lungs(mask, lung_mask_from_hu(ct_hu, spacing, ...))`` without a full-size lung mask.

    The lung mask stays on its coarse grid (:func:`coarse_lung_mask`), and its closing and hole filling, which
    only add voxels, run only when some component does not touch the lungs' air before them (a tumour inside
    or abutting a lung is kept without them), and then only on the slices those components need. Same
    decisions as the full-size mask.

    Args:
        mask: (z, y, x) binary lesion mask.
        ct_hu: (z, y, x) CT in HU, the mask's grid.
        spacing: voxel size (x, y, z) in mm.
        air: :func:`lung_air_hu` of ``ct_hu`` with these settings, when already computed (it is closed in
            place here).

    Returns:
        uint8 (z, y, x) mask in {0, 1}, or None when no lung-like air is found (gating would remove every
        lesion; callers keep the mask then).
    """
    ct = np.asarray(ct_hu)
    if mask.shape != ct.shape:
        raise ValueError(f"mask shape {mask.shape} differs from CT shape {ct.shape}")
    if air is None:
        air = lung_air_hu(
            ct, spacing, threshold_hu=threshold_hu, min_fraction=min_fraction, coarse_mm=coarse_mm
        )
    air, f = air
    if not air.any():
        return None
    spacing_zyx = (float(spacing[2]), float(spacing[1]) * f, float(spacing[0]) * f)
    return _gate(mask, [lambda zs: (air, f), lambda zs: (_close_and_fill(air, spacing_zyx, close_mm, zs), f)])
