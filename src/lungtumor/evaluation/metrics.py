"""Segmentation metrics: Dice, NSD and HD95 in mm (MONAI), lesion-wise detection, and folder evaluation.

Arrays are binary masks indexed (z, y, x); ``spacing_zyx`` is the voxel size in mm **in array axis order**,
i.e. ``Volume.spacing[::-1]``. MONAI measures surface distances in the units of the spacing it is given
(without one, in voxels), so every surface metric here passes it.

Empty masks:
- Dice is NaN when both masks are empty (as nnU-Net does); those cases are counted apart, not averaged.
- HD95 is NaN when either mask is empty (MONAI gives inf or NaN there); such cases are counted.
- NSD is NaN when both are empty and 0 when only one is.
- Lesion recall is NaN for a case without ground-truth lesions; false positives still count.

Folder evaluation (:func:`evaluate_dirs`): cases match by name with the usual suffixes stripped. A ground-truth
case without a prediction gets a row with status ``no_prediction`` and is not scored (a warning names it); with
``score_missing`` (``evaluate --score-missing``) it has status ``missing_prediction`` and is scored as an empty
prediction (so it lowers Dice and recall). A prediction without ground truth gets a row with status
``no_ground_truth`` and is not scored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from lungtumor.imaging.components import label_components


def _as_bool(a: np.ndarray) -> np.ndarray:
    return np.asarray(a) != 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks of the same shape; NaN when both are empty."""
    a, b = _as_bool(a), _as_bool(b)
    s = int(a.sum()) + int(b.sum())
    if s == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(a & b)) / s


def _tensor(m: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)[None, None])


def _quiet_monai() -> None:
    """Silence MONAI's internal deprecation notice about its own ``always_return_as_numpy`` argument."""
    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the surfaces of ``a`` and ``b``
    (MONAI, max of the two directed 95th percentiles). NaN when either mask is empty."""

    a, b = _as_bool(a), _as_bool(b)
    if not a.any() or not b.any():
        return float("nan")
    with warnings.catch_warnings():
        _quiet_monai()
        v = compute_hausdorff_distance(
            _tensor(a),
            _tensor(b),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing_zyx],
        )
    return float(v.item())


def nsd(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float], tol_mm: float = 2.0) -> float:
    """Normalised surface Dice at tolerance ``tol_mm`` (MONAI, surfel areas as in DeepMind's surface-distance,
    distances in mm). NaN when both masks are empty, 0 when only one is."""

    a, b = _as_bool(a), _as_bool(b)
    if not a.any() and not b.any():
        return float("nan")
    if not a.any() or not b.any():
        return 0.0
    with warnings.catch_warnings():
        _quiet_monai()
        v = compute_surface_dice(
            _tensor(a),
            _tensor(b),
            [float(tol_mm)],
            include_background=True,
            spacing=[float(s) for s in spacing_zyx],
            use_subvoxels=True,
        )
    return float(v.item())


#: Lesion size bins by volume-equivalent sphere diameter (mm): the T1a/T1b/T1c steps of 1, 2 and 3 cm.
SIZE_BINS_MM: tuple[tuple[str, float, float], ...] = (
    ("<10 mm", 0.0, 10.0),
    ("10-20 mm", 10.0, 20.0),
    ("20-30 mm", 20.0, 30.0),
    (">=30 mm", 30.0, math.inf),
)


def size_bin(equiv_diameter_mm: float) -> str:
    """The :data:`SIZE_BINS_MM` label of a lesion of this volume-equivalent diameter."""
    for name, lo, hi in SIZE_BINS_MM:
        if lo <= equiv_diameter_mm < hi:
            return name
    raise ValueError(f"bad diameter {equiv_diameter_mm}")


def match(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """26-connected components of both masks and their overlaps.

    Returns (inter, gt_size, pred_size, n_pred): ``inter[g, p]`` voxels shared by ground-truth lesion g and
    predicted component p (row/column 0 = background), and each component's voxel count.
    """
    lg, ng = label_components(gt)
    lp, npred = label_components(pred)
    both = (lg > 0) & (lp > 0)
    pairs = np.bincount(lg[both].astype(np.int64) * (npred + 1) + lp[both], minlength=(ng + 1) * (npred + 1))
    gt_size = np.bincount(lg.ravel(), minlength=ng + 1)
    pred_size = np.bincount(lp.ravel(), minlength=npred + 1)
    return pairs.reshape(ng + 1, npred + 1), gt_size, pred_size, npred


def detect(inter: np.ndarray, gt_size: np.ndarray, overlap: float) -> tuple[np.ndarray, int]:
    """Which ground-truth lesions are found (bool per lesion) and how many predicted components are FPs."""
    found = inter[1:, 1:].max(axis=1, initial=0) >= overlap * gt_size[1:]
    fp = int(np.count_nonzero(inter[:, 1:].sum(axis=0) == 0))
    return found, fp


def lesion_detection(pred: np.ndarray, gt: np.ndarray, overlap: float = 0.1) -> tuple[int, int, int]:
    """Lesion-wise detection with 26-connected components.

    A ground-truth lesion is found when one predicted component covers at least ``overlap`` of its voxels.
    A predicted component that touches no ground-truth voxel is a false positive.

    Returns:
        (n_gt lesions, n_found, n_fp).
    """
    inter, gt_size, _, _ = match(pred, gt)
    found, fp = detect(inter, gt_size, overlap)
    return len(found), int(found.sum()), fp


def lesion_rows(
    pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float], overlap: float = 0.1
) -> list[dict]:
    """One row per ground-truth lesion: id, volume_ml, equiv_diameter_mm, size_bin, found, overlap
    (share of its voxels in the best predicted component) and dice (against the union of the predicted
    components that touch it; 0 when none does). Masks (z, y, x), spacing in mm in array order.
    """
    inter, gt_size, pred_size, _ = match(pred, gt)
    found, _ = detect(inter, gt_size, overlap)
    return lesion_table_rows(inter, gt_size, pred_size, found, float(np.prod(spacing_zyx)) / 1000.0)


def lesion_table_rows(
    inter: np.ndarray, gt_size: np.ndarray, pred_size: np.ndarray, found: np.ndarray, voxel_ml: float
) -> list[dict]:
    """:func:`lesion_rows` from an already computed :func:`match` / :func:`detect`."""
    rows = []
    for g in range(1, len(gt_size)):
        touching = np.flatnonzero(inter[g, 1:]) + 1
        tp = int(inter[g, touching].sum())
        denom = int(gt_size[g]) + int(pred_size[touching].sum())
        ml = int(gt_size[g]) * voxel_ml
        d_mm = (6.0 * ml * 1000.0 / math.pi) ** (1 / 3)
        rows.append(
            {
                "lesion": g,
                "volume_ml": ml,
                "equiv_diameter_mm": d_mm,
                "size_bin": size_bin(d_mm),
                "found": bool(found[g - 1]),
                "overlap": float(inter[g, 1:].max(initial=0)) / int(gt_size[g]),
                "dice": 2.0 * tp / denom,
            }
        )
    return rows
