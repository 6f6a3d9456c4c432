"""Match the lesions of a baseline and a registered follow-up: by overlap, then by centroid distance.

Lesions are the 26-connected components of each mask, numbered 1..n by decreasing volume exactly as
:func:`lungtumor.evaluation.measure.measure_lesions` numbers them (:func:`lesion_labels`). The follow-up's
labels are warped onto the baseline grid (nearest neighbour) before they are compared.

1. Overlap: baseline lesion i and follow-up lesion j overlap when their common voxels are at least
   :data:`MIN_OVERLAP_FRACTION` of the smaller of the two (on the baseline grid). The groups of lesions linked by
   overlaps are one-to-one (``matched``), one-to-many (``split``), many-to-one (``merge``) or many-to-many
   (``split+merge``).
2. Distance: the lesions left are paired by the Hungarian assignment
   (:func:`scipy.optimize.linear_sum_assignment`) on the distance between their centroids in baseline space
   (world mm), pairs farther apart than the gate (:data:`GATE_MM` mm) not allowed.
3. What is left is ``vanished`` (baseline only) or ``new`` (follow-up only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from lungtumor.imaging.components import component_sizes, label_components_in_box, paint

#: Largest centroid distance (mm, baseline space) at which two lesions without overlap are the same lesion.
GATE_MM = 15.0
#: Common voxels, as a fraction of the smaller lesion, for two lesions to overlap.
MIN_OVERLAP_FRACTION = 0.1


@dataclass
class Match:
    """One row of the comparison: lesions of the baseline and of the follow-up that are the same disease.

    Attributes:
        kind: ``matched``, ``split``, ``merge``, ``split+merge``, ``new`` or ``vanished``.
        baseline: baseline lesion labels (measure's numbering), largest first; empty for ``new``.
        followup: follow-up lesion labels, largest first; empty for ``vanished``.
        by: ``overlap`` or ``distance`` (how they were matched); empty for ``new`` and ``vanished``.
        distance_mm: distance (mm, baseline space) between the volume-weighted centroids of the two sides;
            None when one side is empty.
    """

    kind: str
    baseline: tuple[int, ...]
    followup: tuple[int, ...]
    by: str = ""
    distance_mm: float | None = None


def lesion_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """int32 labels (z, y, x) of a binary mask's 26-connected lesions, numbered 1..n by decreasing volume
    (ties in scan order) like :func:`lungtumor.evaluation.measure.measure_lesions`; and n."""
    box, labels, n = label_components_in_box(mask)
    out = np.zeros(np.shape(mask), np.int32)
    if n == 0:
        return out, 0
    counts = component_sizes(labels, n)
    order = sorted(range(1, n + 1), key=lambda j: -counts[j])
    table = np.zeros(n + 1, np.int32)
    table[order] = np.arange(1, n + 1, dtype=np.int32)
    sub = np.empty(labels.shape, np.int32)
    paint(sub, labels, table)
    out[box] = sub
    return out, n


def overlap_counts(base: np.ndarray, n_base: int, fu: np.ndarray, n_fu: int) -> np.ndarray:
    """int64 (n_base + 1, n_fu + 1): voxels labelled i in ``base`` and j in ``fu`` (same grid, (z, y, x))."""
    both = (base > 0) & (fu > 0)
    pairs = base[both].astype(np.int64) * (n_fu + 1) + fu[both].astype(np.int64)
    return np.bincount(pairs, minlength=(n_base + 1) * (n_fu + 1)).reshape(n_base + 1, n_fu + 1)


def _groups(links: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Connected groups of a bipartite link matrix (bool (n_base, n_fu), 0-based) as (baseline, follow-up)
    index lists; only groups with a link."""
    n_b, n_f = links.shape
    parent = list(range(n_b + n_f))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(links), strict=True):
        parent[find(int(i))] = find(n_b + int(j))
    out: dict[int, tuple[list[int], list[int]]] = {}
    for i, j in zip(*np.nonzero(links), strict=True):
        root = find(int(i))
        g = out.setdefault(root, ([], []))
        if int(i) not in g[0]:
            g[0].append(int(i))
        if int(j) not in g[1]:
            g[1].append(int(j))
    return [(sorted(b), sorted(f)) for b, f in out.values()]


def _kind(n_b: int, n_f: int) -> str:
    if n_b == 1 and n_f == 1:
        return "matched"
    if n_b == 1:
        return "split"
    if n_f == 1:
        return "merge"
    return "split+merge"


def _weighted(centroids: np.ndarray, volumes: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    w = np.asarray([max(float(volumes[i]), 1e-12) for i in idx])
    return (centroids[list(idx)] * w[:, None]).sum(0) / w.sum()


def match_lesions(
    base_labels: np.ndarray,
    fu_labels_on_base: np.ndarray,
    base_centroids_mm: np.ndarray,
    fu_centroids_mm: np.ndarray,
    base_volumes_ml: Sequence[float],
    fu_volumes_ml: Sequence[float],
    *,
    gate_mm: float = GATE_MM,
    min_overlap: float = MIN_OVERLAP_FRACTION,
) -> list[Match]:
    """Match baseline and follow-up lesions (see the module docstring).

    Args:
        base_labels: baseline lesion labels (z, y, x), 1..n (:func:`lesion_labels`).
        fu_labels_on_base: the follow-up's lesion labels warped onto the baseline grid (z, y, x).
        base_centroids_mm: (n_base, 3) baseline lesion centroids, world (x, y, z) mm, row k = label k + 1.
        fu_centroids_mm: (n_fu, 3) follow-up lesion centroids brought into baseline world space (mm).
        base_volumes_ml, fu_volumes_ml: lesion volumes (mL), for the groups' weighted centroids.
        gate_mm: largest centroid distance (mm) of a match by distance.
        min_overlap: common voxels, as a fraction of the smaller lesion, that make an overlap.

    Returns:
        The matches: overlap and distance matches in order of their largest baseline lesion, then the
        vanished lesions, then the new ones.
    """
    n_b, n_f = len(base_centroids_mm), len(fu_centroids_mm)
    bc = np.asarray(base_centroids_mm, float).reshape(n_b, 3)
    fc = np.asarray(fu_centroids_mm, float).reshape(n_f, 3)
    bv, fv = np.asarray(base_volumes_ml, float), np.asarray(fu_volumes_ml, float)
    counts = overlap_counts(base_labels, n_b, fu_labels_on_base, n_f)
    size_b = np.bincount(base_labels.ravel(), minlength=n_b + 1)[1 : n_b + 1]
    size_f = np.bincount(fu_labels_on_base.ravel(), minlength=n_f + 1)[1 : n_f + 1]
    smaller = np.minimum(size_b[:, None], size_f[None, :])
    common = counts[1:, 1:]
    links = (common > 0) & (common >= min_overlap * np.maximum(smaller, 1))
    matches: list[Match] = []
    for gb, gf in _groups(links):
        d = float(np.linalg.norm(_weighted(bc, bv, gb) - _weighted(fc, fv, gf)))
        matches.append(
            Match(_kind(len(gb), len(gf)), tuple(i + 1 for i in gb), tuple(j + 1 for j in gf), "overlap", d)
        )
    left_b = [i for i in range(n_b) if not links[i].any()]
    left_f = [j for j in range(n_f) if not links[:, j].any()]
    used_b: set[int] = set()
    used_f: set[int] = set()
    if left_b and left_f:
        dist = np.linalg.norm(bc[left_b][:, None, :] - fc[left_f][None, :, :], axis=-1)
        cost = np.where(dist <= gate_mm, dist, 1e9)
        for r, c in zip(*linear_sum_assignment(cost), strict=True):
            if dist[r, c] <= gate_mm:
                i, j = left_b[r], left_f[c]
                used_b.add(i)
                used_f.add(j)
                matches.append(Match("matched", (i + 1,), (j + 1,), "distance", float(dist[r, c])))
    matches.sort(key=lambda m: m.baseline[0])
    matches += [Match("vanished", (i + 1,), ()) for i in left_b if i not in used_b]
    matches += [Match("new", (), (j + 1,)) for j in left_f if j not in used_f]
    return matches
