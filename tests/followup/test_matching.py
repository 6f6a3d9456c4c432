"""Lesion matching: overlap groups (matched, split, merge), distance matches within the gate, new and vanished."""

from __future__ import annotations

import numpy as np
import pytest
from lt_followup_data import LEFT_LUNG_XYZ, RIGHT_LUNG_XYZ, mask_volume, spheres

from lungtumor.evaluation.measure import measure_lesions
from lungtumor.followup import GATE_MM, assess, identity_registration, lesion_labels

R, L = RIGHT_LUNG_XYZ, LEFT_LUNG_XYZ


def _assess(base: np.ndarray, fu: np.ndarray):
    return assess(
        mask_volume(base), mask_volume(fu), identity_registration(), midline_x_mm=0.0, thickness_mm=2.5
    )


def _at(c, dx=0.0, dy=0.0, dz=0.0):
    return (c[0] + dx, c[1] + dy, c[2] + dz)


def test_labels_number_lesions_like_measure():
    m = spheres([(R, 4.0), (L, 7.0), (_at(R, dz=-30), 5.0)])
    labels, n = lesion_labels(m)
    lesions = measure_lesions(mask_volume(m))
    assert n == len(lesions) == 3
    for les in lesions:
        idx = np.argwhere(labels == les.label).mean(axis=0)
        assert idx == pytest.approx(les.centroid_index_zyx, abs=1e-3)
        assert les.voxels == int((labels == les.label).sum())


def test_split_is_reported():
    base = spheres([(R, 8.0)])
    fu = spheres([(_at(R, dy=-5), 4.0), (_at(R, dy=5), 4.0)])
    a = _assess(base, fu)
    assert [(m.kind, m.baseline, m.followup, m.by) for m in a.matches] == [("split", (1,), (1, 2), "overlap")]
    t = a.targets[0]
    fu_sum = sum(les.long_axis_mm for les in a.followup)
    assert t.followup_long_axis_mm == pytest.approx(fu_sum) and "split" in t.status


def test_merge_is_reported():
    base = spheres([(_at(R, dy=-6), 5.5), (_at(L, dy=-6), 5.5), (_at(R, dy=6), 5.5)])
    fu = spheres([(R, 11.0), (_at(L, dy=-6), 5.5)])
    a = _assess(base, fu)
    kinds = sorted((m.kind, m.baseline, m.followup) for m in a.matches)
    merged = [k for k in kinds if k[0] == "merge"]
    assert len(merged) == 1 and len(merged[0][1]) == 2 and len(merged[0][2]) == 1
    assert [k[0] for k in kinds].count("matched") == 1
    # the merged lesion counts once, for the first of the merged targets
    carried = [t for t in a.targets if t.label in merged[0][1]]
    assert sorted(t.followup_long_axis_mm > 0 for t in carried) == [False, True]
    assert "merged" in carried[0].status


def test_distance_match_within_the_gate_and_new_or_vanished_beyond():
    base = spheres([(R, 4.0)])
    near = spheres([(_at(R, dy=10.0), 3.0)])  # no overlap, centroid 10 mm away
    a = _assess(base, near)
    assert [(m.kind, m.by) for m in a.matches] == [("matched", "distance")]
    assert a.matches[0].distance_mm == pytest.approx(10.0, abs=0.5)
    far = spheres([(_at(R, dz=GATE_MM + 5.0), 3.0)])
    a = _assess(base, far)
    assert sorted(m.kind for m in a.matches) == ["new", "vanished"]


def test_hungarian_assignment_minimises_the_total_distance():
    # greedy nearest-first would pair b2-f1 (4 mm), then b1-f2 (14 mm); the assignment pairs b1-f1, b2-f2 (5 + 5)
    b1, b2, f1, f2 = (_at(R, dy=dy) for dy in (-8.0, 1.0, -3.0, 6.0))
    a = _assess(spheres([(b1, 1.5), (b2, 1.5)]), spheres([(f1, 1.5), (f2, 1.5)]))
    assert [(m.kind, m.by, m.baseline, m.followup) for m in a.matches] == [
        ("matched", "distance", (1,), (1,)),
        ("matched", "distance", (2,), (2,)),
    ]
    assert all(m.distance_mm == pytest.approx(5.0, abs=0.01) for m in a.matches)
