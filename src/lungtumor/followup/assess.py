"""A baseline/follow-up comparison from two masks and a registration: lesions, matches, targets, category.

Lengths in mm, volumes in mL; arrays (z, y, x), world points (x, y, z) mm LPS. The long axes are those of
:func:`lungtumor.evaluation.measure.measure_lesions`, each lesion measured in its own scan's geometry; the
registration is used only to match the lesions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lungtumor.evaluation.measure import Lesion, measure_lesions
from lungtumor.followup.matching import GATE_MM, MIN_OVERLAP_FRACTION, Match, lesion_labels, match_lesions
from lungtumor.followup.recist import (
    Response,
    classify,
    min_measurable_mm,
    organ_of,
    select_targets,
    volume_change,
)
from lungtumor.followup.registration import Registration
from lungtumor.imaging.orientation import to_canonical
from lungtumor.imaging.volume import Volume


@dataclass
class Target:
    """A target lesion: its long axis at baseline and what it counts for at follow-up (mm)."""

    label: int
    organ: str
    baseline_long_axis_mm: float
    followup_long_axis_mm: float
    status: str
    followup_lesions: tuple[int, ...] = ()


@dataclass
class Assessment:
    """Everything :func:`assess` found (the lesions are numbered as ``measure_lesions`` numbers them)."""

    baseline: list[Lesion]
    followup: list[Lesion]
    matches: list[Match]
    organs: dict[int, str]
    targets: list[Target]
    non_targets: list[dict]
    response: Response
    rows: list[dict]
    thickness_mm: float
    midline_x_mm: float
    interval_days: float | None
    gate_mm: float = GATE_MM
    followup_organs: dict[int, str] = field(default_factory=dict)


def _join(labels: Sequence[int]) -> str:
    return ";".join(str(v) for v in labels)


def _rounded(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def _target_status(m: Match, label: int, group_targets: list[int]) -> tuple[str, bool]:
    """(status text, whether this target carries the group's follow-up diameter)."""
    fu = ", ".join(str(j) for j in m.followup)
    if m.kind == "vanished":
        return "vanished", False
    first = label == group_targets[0]
    if m.kind == "matched":
        return f"matched to follow-up lesion {fu} (by {m.by})", True
    if m.kind == "split":
        return f"split into follow-up lesions {fu} (their long axes are summed)", True
    others = ", ".join(str(i) for i in m.baseline if i != label)
    if first:
        return (
            f"merged with baseline lesion(s) {others} into follow-up lesion(s) {fu} (counted once, here)",
            True,
        )
    return f"merged into follow-up lesion(s) {fu}: counted with target {group_targets[0]}", False


def _targets(
    base: dict[int, Lesion],
    fu: dict[int, Lesion],
    matches: list[Match],
    chosen: list[int],
    organs: dict[int, str],
) -> list[Target]:
    """The target rows: each target's follow-up long axis as RECIST counts splits, merges and vanishing."""
    of = {i: m for m in matches for i in m.baseline}
    out = []
    for label in chosen:
        m = of[label]
        group_targets = [i for i in m.baseline if i in chosen]
        group_targets.sort(key=chosen.index)
        status, carries = _target_status(m, label, group_targets)
        f_mm = sum(fu[j].long_axis_mm for j in m.followup) if carries else 0.0
        out.append(Target(label, organs[label], base[label].long_axis_mm, round(f_mm, 3), status, m.followup))
    return out


def _non_targets(lesions: list[Lesion], chosen: list[int], limit_mm: float) -> list[dict]:
    out = []
    for les in lesions:
        if les.label in chosen:
            continue
        if les.long_axis_mm < limit_mm:
            why = f"not measurable (long axis {les.long_axis_mm:.1f} mm < {limit_mm:g} mm)"
        else:
            why = "measurable, not chosen (at most 2 targets per lung and 5 in all, largest first)"
        out.append({"label": les.label, "long_axis_mm": les.long_axis_mm, "reason": why})
    return out


def _row(
    m: Match,
    base: dict[int, Lesion],
    fu: dict[int, Lesion],
    organ: str,
    targets: list[int],
    interval_days: float | None,
) -> dict:
    """One lesions.csv row: a matched group, a new lesion or a vanished one (sums over the group's lesions)."""
    b_ax = sum(base[i].long_axis_mm for i in m.baseline)
    f_ax = sum(fu[j].long_axis_mm for j in m.followup)
    b_ml = sum(base[i].volume_ml for i in m.baseline)
    f_ml = sum(fu[j].volume_ml for j in m.followup)
    vc = volume_change(b_ml, f_ml, interval_days)
    tg = [i for i in m.baseline if i in targets]
    return {
        "kind": m.kind,
        "baseline_lesions": _join(m.baseline),
        "followup_lesions": _join(m.followup),
        "organ": organ,
        "target": _join(tg),
        "matched_by": m.by,
        "centroid_distance_mm": _rounded(m.distance_mm, 2),
        "baseline_long_axis_mm": round(b_ax, 3) if m.baseline else None,
        "followup_long_axis_mm": round(f_ax, 3) if m.followup else None,
        "long_axis_change_mm": round(f_ax - b_ax, 3),
        "baseline_volume_ml": round(b_ml, 4) if m.baseline else None,
        "followup_volume_ml": round(f_ml, 4) if m.followup else None,
        "volume_change_ml": round(float(vc["change_ml"] or 0.0), 4),
        "volume_change_pct": _rounded(vc["change_pct"], 2),
        "volume_doubling_time_days": _rounded(vc["doubling_time_days"], 1),
        "baseline_slice": base[m.baseline[0]].long_axis_slice if m.baseline else None,
        "followup_slice": fu[m.followup[0]].long_axis_slice if m.followup else None,
    }


def assess(
    baseline_mask: Volume,
    followup_mask: Volume,
    reg: Registration,
    *,
    midline_x_mm: float,
    thickness_mm: float,
    interval_days: float | None = None,
    gate_mm: float = GATE_MM,
    min_overlap: float = MIN_OVERLAP_FRACTION,
) -> Assessment:
    """Measure, match and categorise the lesions of two binary masks.

    Args:
        baseline_mask, followup_mask: {0, 1} Volumes (z, y, x), each on its own CT's grid.
        reg: the follow-up → baseline registration (:func:`~lungtumor.followup.registration.register`, or
            :func:`~lungtumor.followup.registration.identity_registration`).
        midline_x_mm: the patient's midline, world x (mm), for the organ of each lesion.
        thickness_mm: the baseline's slice thickness (mm), for measurability.
        interval_days: days between the scans, for volume doubling times (None: not computed).
        gate_mm: largest centroid distance (mm) of a match without overlap.
        min_overlap: common voxels, as a fraction of the smaller lesion, that make an overlap.
    """
    base_mask, _ = to_canonical(baseline_mask)
    fu_mask, _ = to_canonical(followup_mask)
    base_l, fu_l = measure_lesions(base_mask), measure_lesions(fu_mask)
    base = {les.label: les for les in base_l}
    fu = {les.label: les for les in fu_l}
    b_lab, _ = lesion_labels(base_mask.array)
    f_lab, _ = lesion_labels(fu_mask.array)
    f_on_b = reg.warp(fu_mask.with_array(f_lab), base_mask, nearest=True)
    bc = np.array([les.centroid_world_mm for les in base_l], float).reshape(-1, 3)
    fc = reg.to_baseline(np.array([les.centroid_world_mm for les in fu_l], float).reshape(-1, 3))
    matches = match_lesions(b_lab, f_on_b, bc, fc, [le.volume_ml for le in base_l], [le.volume_ml for le in fu_l],
                            gate_mm=gate_mm, min_overlap=min_overlap)  # fmt: skip
    organs = {les.label: organ_of(les.centroid_world_mm, midline_x_mm) for les in base_l}
    fu_organs = {j: organ_of(fc[j - 1], midline_x_mm) for j in fu}
    chosen = select_targets(base_l, organs, thickness_mm)
    targets = _targets(base, fu, matches, chosen, organs)
    n_new = sum(1 for m in matches if m.kind == "new")
    response = classify(sum(t.baseline_long_axis_mm for t in targets),
                        sum(t.followup_long_axis_mm for t in targets), len(targets), n_new)  # fmt: skip
    rows = []
    for m in matches:
        organ = organs[m.baseline[0]] if m.baseline else fu_organs[m.followup[0]]
        rows.append(_row(m, base, fu, organ, chosen, interval_days))
    return Assessment(
        baseline=base_l,
        followup=fu_l,
        matches=matches,
        organs=organs,
        targets=targets,
        non_targets=_non_targets(base_l, chosen, min_measurable_mm(thickness_mm)),
        response=response,
        rows=rows,
        thickness_mm=thickness_mm,
        midline_x_mm=midline_x_mm,
        interval_days=interval_days,
        gate_mm=gate_mm,
        followup_organs=fu_organs,
    )
