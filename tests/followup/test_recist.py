"""RECIST 1.1 on analytic shapes (identity geometry) and at the rules' boundaries, and volumetric change."""

from __future__ import annotations

import math

import pytest
from lt_followup_data import LEFT_LUNG_XYZ, RIGHT_LUNG_XYZ, mask_volume, spheres

from lungtumor.evaluation.measure import Lesion
from lungtumor.followup import assess, classify, identity_registration, select_targets, volume_change
from lungtumor.followup.recist import lung_midline_x_mm, organ_of

R, L = RIGHT_LUNG_XYZ, LEFT_LUNG_XYZ


def _category(base, fu, **kw):
    a = assess(
        mask_volume(base), mask_volume(fu), identity_registration(), midline_x_mm=0.0, thickness_mm=2.5, **kw
    )
    return a.response.category, a


def test_sphere_shrunk_by_half_is_pr():
    cat, a = _category(spheres([(R, 10.0)]), spheres([(R, 5.0)]))
    assert cat == "PR" and "30 %" in a.response.rule
    assert a.response.change_pct == pytest.approx(-50.0, abs=5.0)


def test_sphere_grown_25_percent_and_over_5_mm_is_pd():
    cat, a = _category(spheres([(R, 12.0)]), spheres([(R, 15.0)]))
    assert cat == "PD", a.response.rule
    assert a.response.change_mm > 5.0 and a.response.change_pct >= 20.0


def test_new_nodule_is_pd():
    cat, a = _category(spheres([(R, 8.0)]), spheres([(R, 8.0), (L, 3.0)]))
    assert cat == "PD" and "new lesion" in a.response.rule
    assert [r["kind"] for r in a.rows] == ["matched", "new"]
    assert a.rows[1]["organ"] == "left lung"


def test_emptied_mask_is_cr():
    cat, a = _category(spheres([(R, 8.0), (L, 7.0)]), spheres([]))
    assert cat == "CR"
    assert sorted(r["kind"] for r in a.rows) == ["vanished", "vanished"]


def test_small_change_is_sd():
    cat, _ = _category(spheres([(R, 8.0)]), spheres([(R, 8.5)]))
    assert cat == "SD"


def test_no_target_is_ne():
    cat, a = _category(spheres([(R, 3.0)]), spheres([(R, 3.0)]))
    assert cat == "NE" and not a.targets
    assert "not measurable" in a.non_targets[0]["reason"]


@pytest.mark.parametrize(
    ("b", "f", "category"),
    [
        (20.0, 14.0, "PR"),  # exactly -30 %
        (16.5, 11.55, "PR"),  # exactly -30 % with float rounding (16.5 * 0.7)
        (33.3, 23.31, "PR"),
        (20.0, 14.02, "SD"),  # -29.9 %
        (20.0, 24.0, "SD"),  # +20 % but +4 mm: not PD
        (25.0, 30.0, "PD"),  # exactly +20 % and exactly +5 mm
        (30.0, 35.99, "SD"),  # +19.97 %, +5.99 mm
        (20.0, 0.0, "CR"),
    ],
)
def test_boundaries(b, f, category):
    r = classify(b, f, n_targets=1, n_new=0)
    assert r.category == category, r.rule
    assert r.rule.startswith(category)


def test_new_lesion_beats_cr():
    assert classify(20.0, 0.0, n_targets=1, n_new=1).category == "PD"


def _lesion(label: int, long_mm: float, x_mm: float) -> Lesion:
    return Lesion(
        label,
        100,
        1.0,
        long_mm,
        long_mm / 2,
        10,
        long_mm,
        (x_mm, 0.0, 50.0),
        (20.0, 32.0, 32.0),
        18,
        22,
        "T1a",
    )


def test_targets_at_most_5_and_2_per_organ_and_at_least_10_mm():
    lesions = [_lesion(1, 40, -10), _lesion(2, 35, -12), _lesion(3, 30, -14), _lesion(4, 28, 10),
               _lesion(5, 26, 11), _lesion(6, 24, 12), _lesion(7, 9.9, -20), _lesion(8, 9.99, 20)]  # fmt: skip
    organs = {les.label: organ_of(les.centroid_world_mm, 0.0) for les in lesions}
    assert organs[1] == "right lung" and organs[4] == "left lung"
    assert select_targets(lesions, organs, thickness_mm=1.0) == [1, 2, 4, 5]
    # with 7 mm slices, measurable means a long axis of at least twice 7 mm
    assert select_targets([_lesion(1, 13.9, -10)], {1: "right lung"}, thickness_mm=7.0) == []
    assert select_targets([_lesion(1, 14.0, -10)], {1: "right lung"}, thickness_mm=7.0) == [1]
    # 6 measurable lesions in 6 organs: 5 targets, the largest
    six = [_lesion(i, 30 - i, 0.0) for i in range(1, 7)]
    organs6 = {les.label: f"organ {les.label}" for les in six}
    assert select_targets(six, organs6, thickness_mm=1.0) == [1, 2, 3, 4, 5]


def test_midline_from_lungs():
    from lt_followup_data import chest

    from lungtumor.imaging.lungs import lung_mask_from_hu

    ct = chest()
    lungs = ct.with_array(lung_mask_from_hu(ct.array, ct.spacing))
    assert lung_midline_x_mm(lungs, ct) == pytest.approx(0.0, abs=2.0)
    assert lung_midline_x_mm(None, ct) == pytest.approx(-0.5, abs=1e-6)


def test_volume_change_and_doubling_time():
    v = volume_change(1.0, 2.0, 90.0)
    assert v["change_ml"] == pytest.approx(1.0) and v["change_pct"] == pytest.approx(100.0)
    assert v["doubling_time_days"] == pytest.approx(90.0)
    assert volume_change(2.0, 1.0, 60.0)["doubling_time_days"] == pytest.approx(-60.0)
    assert volume_change(1.0, 2.0, None)["doubling_time_days"] is None
    assert volume_change(1.0, 0.0, 30.0)["doubling_time_days"] is None
    assert volume_change(0.0, 1.0, 30.0)["change_pct"] is None
    assert math.isfinite(volume_change(1.0, 1.5, 30.0)["doubling_time_days"])


def test_interval_gives_doubling_times_in_rows():
    _, a = _category(spheres([(R, 8.0)]), spheres([(R, 10.0)]), interval_days=100.0)
    row = a.rows[0]
    expected = 100.0 * math.log(2) / math.log(row["followup_volume_ml"] / row["baseline_volume_ml"])
    assert row["volume_doubling_time_days"] == pytest.approx(expected, abs=0.1)
