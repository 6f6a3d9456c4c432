"""RECIST 1.1 on target lesions, and volumetric change: a size measurement, not a diagnosis.

Rules (docs/followup.md, docs/decisions/0027):

- Organ: the lung a lesion lies in is decided by the side of the patient's midline its centroid lies on, in
  world (LPS) coordinates: x above the midline is the patient's left. The midline is the middle of the
  baseline lungs' left-right extent (the field of view's middle when no lungs are found).
- Measurable: a long axis (longest in-plane axial diameter, :mod:`lungtumor.evaluation.measure`) of at least
  :data:`MIN_LONG_AXIS_MM` mm and at least twice the slice thickness.
- Targets: the measurable baseline lesions, largest long axis first, at most :data:`MAX_PER_ORGAN` per organ
  and :data:`MAX_TARGETS` in all.
- Sums: the sum of the targets' long axes (mm) at baseline and at follow-up. A target that split counts the
  sum of its fragments; targets that merged count the merged lesion once; a vanished target counts 0.
  With two time points the baseline is the nadir.
- Category: PD when a new lesion appears, or the sum grew by at least 20 % and at least 5 mm; else CR when every
  target is gone; else PR when the sum fell by at least 30 %; else SD. NE when the baseline has no target and
  nothing is new. Comparisons allow :data:`TOL` (so exactly 30 % is PR and exactly 20 % and 5 mm is PD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lungtumor.evaluation.measure import Lesion
from lungtumor.imaging.volume import Volume

#: Smallest long axis (mm) of a measurable lesion (RECIST 1.1, CT).
MIN_LONG_AXIS_MM = 10.0
#: Target lesions at most, in all and per organ (RECIST 1.1).
MAX_TARGETS = 5
MAX_PER_ORGAN = 2
#: Relative decrease of the sum for PR; relative and absolute increase for PD (RECIST 1.1).
PR_DECREASE = 0.30
PD_INCREASE = 0.20
PD_ABSOLUTE_MM = 5.0
#: Tolerance of the comparisons, as a fraction (percentages) and in mm (absolute change).
TOL = 1e-6

DISCLAIMER = (
    "A size measurement of the given or predicted tumour masks following RECIST 1.1's arithmetic on target "
    "lesions; it is not a diagnosis and not a clinical response assessment: non-target lesions, lymph nodes "
    "and unequivocal progression are not assessed, and the masks may be wrong."
)


def lung_midline_x_mm(lungs: Volume | None, ct: Volume) -> float:
    """World x (mm, LPS) of the patient's midline: the middle of the lungs' left-right extent, or of the
    CT's field of view when ``lungs`` (bool (z, y, x)) is None or empty."""
    ref = lungs if lungs is not None and np.any(lungs.array) else None
    if ref is None:
        corners = np.array([[z, y, x] for z in (0, ct.shape[0] - 1) for y in (0, ct.shape[1] - 1)
                            for x in (0, ct.shape[2] - 1)], float)  # fmt: skip
        xs = ct.index_to_world(corners)[:, 0]
    else:
        xs = ref.index_to_world(np.argwhere(ref.array))[:, 0]
    return float((xs.min() + xs.max()) / 2.0)


def organ_of(centroid_xyz_mm: Sequence[float], midline_x_mm: float) -> str:
    """``"left lung"`` when the centroid's world x (LPS: +x is the patient's left) is above the midline,
    else ``"right lung"``."""
    return "left lung" if float(centroid_xyz_mm[0]) > midline_x_mm else "right lung"


def slice_thickness_mm(ct: Volume) -> float:
    """The slice thickness (mm): DICOM SliceThickness when the reader kept it, else the z spacing."""
    try:
        t = float(ct.meta.get("SliceThickness", ""))
        if math.isfinite(t) and t > 0:
            return t
    except ValueError:
        pass
    return float(ct.spacing[2])


def min_measurable_mm(thickness_mm: float) -> float:
    """The smallest measurable long axis (mm): 10 mm, or twice the slice thickness when that is more."""
    return max(MIN_LONG_AXIS_MM, 2.0 * thickness_mm)


def select_targets(lesions: Sequence[Lesion], organs: dict[int, str], thickness_mm: float) -> list[int]:
    """Labels of the target lesions: measurable ones, largest long axis first, <= 2 per organ, <= 5 in all."""
    limit = min_measurable_mm(thickness_mm)
    chosen: list[int] = []
    per_organ: dict[str, int] = {}
    for les in sorted(lesions, key=lambda le: (-le.long_axis_mm, le.label)):
        if les.long_axis_mm < limit - TOL or len(chosen) >= MAX_TARGETS:
            continue
        organ = organs[les.label]
        if per_organ.get(organ, 0) >= MAX_PER_ORGAN:
            continue
        per_organ[organ] = per_organ.get(organ, 0) + 1
        chosen.append(les.label)
    return chosen


@dataclass
class Response:
    """The RECIST 1.1 category from the sums of the targets' long axes (mm)."""

    category: str
    rule: str
    baseline_sum_mm: float
    followup_sum_mm: float
    n_targets: int
    n_new: int

    @property
    def change_mm(self) -> float:
        return self.followup_sum_mm - self.baseline_sum_mm

    @property
    def change_pct(self) -> float | None:
        return 100.0 * self.change_mm / self.baseline_sum_mm if self.baseline_sum_mm > 0 else None


def _sums(b: float, f: float) -> str:
    pct = 100.0 * (f - b) / b
    return (
        f"the sum of the target long axes went from {b:.1f} mm to {f:.1f} mm ({pct:+.1f} %, {f - b:+.1f} mm)"
    )


def classify(baseline_sum_mm: float, followup_sum_mm: float, n_targets: int, n_new: int) -> Response:
    """The category (CR, PR, SD, PD or NE) and the rule that decided it, in words.

    Args:
        baseline_sum_mm: sum of the targets' long axes at baseline (mm), the nadir.
        followup_sum_mm: the same targets at follow-up (mm).
        n_targets: number of target lesions.
        n_new: number of new lesions at follow-up.
    """
    b, f = float(baseline_sum_mm), float(followup_sum_mm)
    r = Response("", "", b, f, n_targets, n_new)
    if n_targets == 0:
        if n_new:
            r.category, r.rule = (
                "PD",
                f"PD: {n_new} new lesion(s) at follow-up (no target lesion at baseline)",
            )
        else:
            r.category = "NE"
            r.rule = "NE: no measurable target lesion at baseline and no new lesion; the category cannot be assessed"
        return r
    change = f - b
    frac = change / b
    grew = frac >= PD_INCREASE - TOL and change >= PD_ABSOLUTE_MM - TOL
    if n_new or grew:
        why = []
        if n_new:
            why.append(f"{n_new} new lesion(s) at follow-up (any new lesion is progression)")
        if grew:
            why.append(f"{_sums(b, f)}: an increase of at least 20 % and at least 5 mm")
        r.category, r.rule = "PD", "PD: " + "; and ".join(why)
    elif f <= TOL:
        r.category, r.rule = (
            "CR",
            f"CR: all {n_targets} target lesion(s) are gone at follow-up (sum {b:.1f} mm -> 0 mm)",
        )
    elif frac <= -PR_DECREASE + TOL:
        r.category, r.rule = "PR", f"PR: {_sums(b, f)}: a decrease of at least 30 %"
    else:
        because = "neither a decrease of at least 30 % nor an increase of at least 20 % and 5 mm"
        if frac >= PD_INCREASE - TOL:
            because = f"an increase of at least 20 % but under {PD_ABSOLUTE_MM:g} mm, which PD also requires"
        r.category, r.rule = "SD", f"SD: {_sums(b, f)}: {because}"
    return r


def volume_change(
    baseline_ml: float, followup_ml: float, interval_days: float | None
) -> dict[str, float | None]:
    """Volume change of one lesion or group: ``change_ml``, ``change_pct`` (None from 0 mL) and
    ``doubling_time_days`` = interval x ln 2 / ln(V1 / V0) (None without an interval or when a volume is 0 or
    unchanged; negative when the lesion shrinks: its magnitude is then the halving time)."""
    v0, v1 = float(baseline_ml), float(followup_ml)
    pct = 100.0 * (v1 - v0) / v0 if v0 > 0 else None
    vdt = None
    if interval_days is not None and v0 > 0 and v1 > 0 and not math.isclose(v0, v1, rel_tol=1e-9):
        vdt = float(interval_days) * math.log(2.0) / math.log(v1 / v0)
    return {"change_ml": v1 - v0, "change_pct": pct, "doubling_time_days": vdt}
