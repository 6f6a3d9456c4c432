"""Post-processing of binary tumour masks: connected components, size filters and lung gating.

All arrays are indexed (z, y, x); spacings are (x, y, z) in mm, as in :class:`lungtumor.volume.Volume`.

Connectivity: a lesion is a 3D connected component with **26-connectivity** (voxels sharing a face, an edge
or a corner belong together). A voxelised lesion often touches itself only diagonally across a thick
slice, and 6-connectivity would then split one tumour into several. ``measure`` and ``metrics`` use the
same rule through :func:`label_components`.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def remove_small_components(mask: np.ndarray, spacing_xyz: Sequence[float], min_mm3: float) -> np.ndarray:
    """Drop the components whose volume is below ``min_mm3``.

    Args:
        mask: (z, y, x) binary mask.
        spacing_xyz: voxel size (x, y, z) in mm.
        min_mm3: smallest component volume to keep, mm³ (voxel count x voxel volume).

    Returns:
        uint8 (z, y, x) mask in {0, 1}.
    """
    labels, n = label_components(mask)
    if n == 0 or min_mm3 <= 0:
        return (labels > 0).astype(np.uint8)
    voxel_mm3 = float(np.prod(np.asarray(spacing_xyz, dtype=float)))
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = counts * voxel_mm3 >= min_mm3
    keep[0] = False
    return keep[labels].astype(np.uint8)


def _edt_closing(mask: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (physical units), via two distance transforms."""
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    m = np.pad(mask, [(p, p) for p in pad])
    dilated = ndi.distance_transform_edt(~m, sampling=spacing_zyx) <= radius_mm
    closed = ndi.distance_transform_edt(dilated, sampling=spacing_zyx) > radius_mm
    return closed[tuple(slice(p, p + n) for p, n in zip(pad, mask.shape, strict=True))]


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndi.binary_fill_holes(mask[k])
    return out


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

    When the in-plane spacing is at most half of ``coarse_mm``, the mask is computed on every f-th row and column
    (f = coarse_mm // spacing) and repeated back to full size (0 disables this).

    Steps: air = HU < ``threshold_hu``; on every slice, remove the air connected to the slice border (outside
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
    ct = np.asarray(ct_hu)
    sx, sy = float(spacing[0]), float(spacing[1])
    f = max(1, int(coarse_mm // min(sx, sy)))
    if f > 1:  # a gating mask need not be finer than ~coarse_mm: 1/f² of the memory and time
        small = lung_mask_from_hu(
            ct[:, ::f, ::f],
            (sx * f, sy * f, float(spacing[2])),
            threshold_hu=threshold_hu,
            close_mm=close_mm,
            min_fraction=min_fraction,
            coarse_mm=0.0,
        )
        return small.repeat(f, axis=1).repeat(f, axis=2)[:, : ct.shape[1], : ct.shape[2]]
    spacing_zyx = tuple(float(s) for s in spacing)[::-1]
    air = ct < threshold_hu
    for k in range(air.shape[0]):
        lab, n = ndi.label(air[k])
        if n:
            border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
            air[k] &= ~np.isin(lab, border[border > 0])
    lab, n = ndi.label(air)  # 6-connectivity: do not join lungs to bowel gas through corners
    if n == 0:
        return np.zeros(ct.shape, dtype=bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    order = np.argsort(counts)[::-1]
    keep = [order[0]]
    if n > 1 and counts[order[1]] >= min_fraction * counts[order[0]]:
        keep.append(order[1])
    lung = np.isin(lab, keep)
    # Work on the bounding box (plus the closing radius) to keep the distance transforms small.
    zz, yy, xx = np.nonzero(lung)
    box = tuple(
        slice(max(0, int(lo) - int(np.ceil(close_mm / s)) - 1), int(hi) + int(np.ceil(close_mm / s)) + 2)
        for lo, hi, s in zip(
            (zz.min(), yy.min(), xx.min()), (zz.max(), yy.max(), xx.max()), spacing_zyx, strict=True
        )
    )
    sub = lung[box]
    if close_mm > 0:
        sub = _edt_closing(sub, spacing_zyx, close_mm)
    lung[box] = _fill_holes_per_slice(sub)
    return lung


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
    labels, n = label_components(mask)
    out = np.zeros(mask.shape, dtype=np.uint8)
    lung = np.asarray(lung, dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        grown = tuple(
            slice(max(0, s.start - 1), min(dim, s.stop + 1)) for s, dim in zip(sl, mask.shape, strict=True)
        )
        comp = labels[grown] == i
        near = ndi.binary_dilation(comp, structure=LESION_STRUCTURE)
        if np.any(near & lung[grown]):
            out[grown][comp] = 1
    return out
