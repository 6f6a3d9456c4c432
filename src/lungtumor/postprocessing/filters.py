"""Component filters on binary tumour masks (z, y, x): drop components under a volume, and flat ones.

``remove_flat_components`` drops the one-slice false positives of a 2D model (docs/decisions), but always keeps a
component that spans at least ``DEEP_SLICES`` slices and ``DEEP_MM`` mm. ``postprocess_mask`` applies the
checkpoint's rules in order: small components (docs/decisions/0003), flat components (0005, 0006), the lung
gate (0004).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungtumor.imaging.components import component_sizes, label_components_in_box, paint
from lungtumor.imaging.volume import Volume
from lungtumor.postprocessing.lung_gate import gate_to_lungs_hu


def postprocess_mask(
    mask: np.ndarray,
    ct: Volume,
    *,
    min_lesion_mm3: float,
    lung_gate: bool,
    min_z_extent_ratio: float = 0.0,
    lung_air: tuple[np.ndarray, int] | None = None,
) -> np.ndarray:
    """Drop components under ``min_lesion_mm3``, those flatter along z than ``min_z_extent_ratio`` allows
    (:func:`remove_flat_components`) and, optionally, those away from the lungs. (z, y, x) uint8.
    ``lung_air``: ``imaging.lungs.lung_air_hu`` of ``ct`` when already computed (the gate closes it in place)."""

    if min_lesion_mm3 > 0 or min_z_extent_ratio > 0:  # one labelling for both filters
        mask = filter_components(mask, ct.spacing, min_mm3=min_lesion_mm3, min_z_ratio=min_z_extent_ratio)
    if lung_gate and mask.any():
        gated = gate_to_lungs_hu(mask, ct.array, ct.spacing, air=lung_air)  # lung mask on its coarse grid
        if gated is not None:  # None: no lungs found (e.g. not in HU); gating would delete every lesion
            mask = gated
    return mask.astype(np.uint8, copy=False)


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
    paint(out[box], labels, keep.astype(np.uint8))
    return out
