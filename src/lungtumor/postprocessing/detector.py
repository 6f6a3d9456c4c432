"""Rules that join the nodule detector's lesions with the 2D model's mask: ``add_missed_lesions`` (docs/decisions/
0009, minimum size 0011) and ``drop_unconfirmed_small`` (``nodule.confirm_small``: 0013)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


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
