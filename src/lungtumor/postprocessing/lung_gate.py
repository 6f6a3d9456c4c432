"""The lung gate: keep only the lesions inside or touching the lungs (docs/decisions/0004; with it on, predict
runs the model only on the lungs' slices + 30 mm: 0007)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from lungtumor.imaging.components import LESION_STRUCTURE, label_components_in_box
from lungtumor.imaging.lungs import close_and_fill, lung_air_hu, lung_window


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
            if np.any(near & lung_window(lung, f, window)):
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
    return _gate(mask, [lambda zs: (air, f), lambda zs: (close_and_fill(air, spacing_zyx, close_mm, zs), f)])
