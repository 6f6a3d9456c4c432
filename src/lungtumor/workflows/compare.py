"""``lungtumor compare``: a baseline and a follow-up CT → registration, matched lesions, RECIST 1.1 category,
volumetric change; ``response.json``, ``lesions.csv`` and ``compare.html`` (docs/followup.md).

Orchestration only: reading and checking the inputs, predicting missing masks with the public predict path,
and writing the outputs atomically. The logic lives in :mod:`lungtumor.followup`, the page in
:mod:`lungtumor.report.compare`. The result is a size measurement, not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lungtumor.core.errors import InputError, atomic_write_text, ensure_writable_dir
from lungtumor.followup.assess import Assessment, assess
from lungtumor.followup.matching import GATE_MM, MIN_OVERLAP_FRACTION, lesion_labels
from lungtumor.followup.recist import (
    DISCLAIMER,
    MAX_PER_ORGAN,
    MAX_TARGETS,
    PD_ABSOLUTE_MM,
    PD_INCREASE,
    PR_DECREASE,
    TOL,
    lung_midline_x_mm,
    min_measurable_mm,
    slice_thickness_mm,
)
from lungtumor.followup.registration import POOR_RESIDUAL_MM, Registration, register
from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.imaging.orientation import to_canonical
from lungtumor.imaging.volume import Volume
from lungtumor.report.compare import lesion_figures, render_compare_html
from lungtumor.workflows.predict import PredictOptions, predict_paths

#: A CT in HU has air: at least one voxel below this (HU); otherwise the input is a mask or another modality.
CT_AIR_HU = -500.0
LESION_FIELDS = (
    "kind", "baseline_lesions", "followup_lesions", "organ", "target", "matched_by", "centroid_distance_mm",
    "baseline_long_axis_mm", "followup_long_axis_mm", "long_axis_change_mm", "baseline_volume_ml",
    "followup_volume_ml", "volume_change_ml", "volume_change_pct", "volume_doubling_time_days",
    "baseline_slice", "followup_slice",
)  # fmt: skip


@dataclass
class CompareResult:
    """What :func:`compare` wrote and found."""

    out_dir: Path
    category: str
    rule: str
    outputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    residual_mm: float | None = None

    def summary_line(self) -> str:
        """One printable line: the category, its rule and where the outputs are."""
        res = "-" if self.residual_mm is None else f"{self.residual_mm:.1f} mm"
        return f"RECIST 1.1 size category {self.category} ({self.rule}); registration residual {res} -> {self.out_dir}"


def read_ct(path: str | os.PathLike) -> Volume:
    """Read a CT and check that it looks like one (some air below :data:`CT_AIR_HU`).

    Raises:
        InputError: missing, unreadable, or not a CT in HU (a mask, another modality).
    """
    vol = read_volume(path)
    lo = float(np.min(vol.array))
    if lo >= CT_AIR_HU:
        raise InputError(
            path,
            f"does not look like a CT in HU: no voxel below {CT_AIR_HU:g} HU, so no air and no lungs (lowest {lo:g}; "
            "a mask, another modality or a soft-tissue-only image?)",
        )
    return vol


def _check_interval(interval_days: float | None) -> None:
    if interval_days is not None and not (math.isfinite(interval_days) and interval_days > 0):
        raise InputError("--interval-days", f"must be a number of days > 0, got {interval_days}")


def study_date(ct: Volume) -> date | None:
    """The DICOM StudyDate (``YYYYMMDD``) that the reader kept in ``ct.meta``; None when absent or invalid."""
    text = str(ct.meta.get("StudyDate", "")).strip()
    try:
        return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def interval_from_study_dates(baseline: Volume, followup: Volume) -> tuple[float | None, list[str]]:
    """Days from the baseline's DICOM StudyDate to the follow-up's, and the warnings.

    None without a warning when neither CT has a StudyDate (NIfTI, NRRD, MHA); None with a warning when only
    one has a valid date, or when the follow-up's date is not later than the baseline's."""
    raw = [str(v.meta.get("StudyDate", "")).strip() for v in (baseline, followup)]
    if not any(raw):
        return None, []
    first, second = study_date(baseline), study_date(followup)
    fix = "no volume doubling times (give --interval-days)"
    if first is None or second is None:
        shown = ", ".join(f"{n} {r or 'none'!r}" for n, r in zip(("baseline", "follow-up"), raw, strict=True))
        return None, [f"DICOM StudyDate missing or not a YYYYMMDD date ({shown}): {fix}"]
    days = (second - first).days
    if days <= 0:
        return None, [
            f"the follow-up's DICOM StudyDate {raw[1]} is not later than the baseline's {raw[0]}: {fix}"
        ]
    return float(days), []


def _predicted_mask(ct_path: Path, model: Any, out: Path, device: str, progress: bool) -> Path:
    """Predict the tumour mask of ``ct_path`` into ``out`` with the public predict path; its path."""
    opts = PredictOptions(device=device, measure=False, progress=progress)
    res = predict_paths([ct_path], model, out, opts)[0]
    if res.error or res.mask_path is None:
        raise InputError(None, res.error or f"{ct_path}: no mask was predicted")
    return res.mask_path


def _masks(
    cts: tuple[Volume, Volume],
    paths: tuple[Path, Path],
    given: list[tuple[Path, Volume] | None],
    model: Any,
    out: Path,
    device: str,
    progress: bool,
) -> tuple[list[Volume], list[Path], list[str]]:
    """The two masks (on their CT's grid), their files, and where each came from: the given ones as they
    are, the missing ones predicted into ``out/masks/{baseline,followup}/``."""
    vols, files, sources = [], [], []
    for ct, ct_path, g, name in zip(cts, paths, given, ("baseline", "followup"), strict=True):
        if g is None:
            path = _predicted_mask(ct_path, model, out / "masks" / name, device, progress)
            g = (path, read_mask(path, reference=ct))
            sources.append("predicted")
        else:
            sources.append("given")
        files.append(g[0])
        vols.append(g[1])
    return vols, files, sources


def _warnings(reg: Registration) -> list[str]:
    """The registration's warnings: a CT without lungs, or a poor residual (mm)."""
    check = "check the lesion matches in compare.html"
    if reg.lungs_missing:
        which = " and the ".join(reg.lungs_missing) + (" CTs" if len(reg.lungs_missing) > 1 else " CT")
        return [
            f"no lungs found in the {which} (no air inside the body): the whole images were registered and no "
            f"residual was measured; {check}"
        ]
    if not reg.poor:
        return []
    cause = "a different patient, a wrong series or a very different breath-hold?"
    if reg.residual_mm is None:
        return [f"poor registration: the registered lungs do not overlap ({cause}); {check}"]
    return [
        f"poor registration: the lung surfaces are {reg.residual_mm:.1f} mm apart on average after registration "
        f"(threshold {POOR_RESIDUAL_MM:g} mm; {cause}); {check}"
    ]


def _document(
    a: Assessment, reg: Registration, inputs: dict[str, Any], warnings: list[str]
) -> dict[str, Any]:
    """The ``response.json`` document."""
    r = a.response
    return {
        "disclaimer": DISCLAIMER,
        "inputs": inputs,
        "recist": {
            "category": r.category,
            "rule": r.rule,
            "baseline_sum_mm": round(r.baseline_sum_mm, 3),
            "followup_sum_mm": round(r.followup_sum_mm, 3),
            "change_mm": round(r.change_mm, 3),
            "change_pct": None if r.change_pct is None else round(r.change_pct, 2),
            "new_lesions": r.n_new,
            "targets": [asdict(t) for t in a.targets],
            "non_targets": a.non_targets,
            "criteria": {
                "measurable_long_axis_mm": min_measurable_mm(a.thickness_mm),
                "slice_thickness_mm": a.thickness_mm,
                "max_targets": MAX_TARGETS,
                "max_targets_per_organ": MAX_PER_ORGAN,
                "pr_decrease": PR_DECREASE,
                "pd_increase": PD_INCREASE,
                "pd_absolute_mm": PD_ABSOLUTE_MM,
                "tolerance": TOL,
                "nadir": "baseline (two time points)",
                "organ": "left or right lung by the side of the midline the lesion centroid lies on (world x, LPS)",
                "midline_x_mm": round(a.midline_x_mm, 2),
            },
        },
        "registration": reg.summary(),
        "matching": {"gate_mm": a.gate_mm, "min_overlap_fraction": MIN_OVERLAP_FRACTION},
        "lesions": a.rows,
        "units": {
            "lengths": "mm",
            "volumes": "mL",
            "doubling time": "days (negative: shrinking; halving time)",
            "slices": "axial slice index (0-based) in canonical LPS order (feet to head)",
        },
        "warnings": warnings,
    }


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LESION_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row[k] is None else row[k]) for k in LESION_FIELDS})
    return buf.getvalue()


def compare(
    baseline_ct: str | os.PathLike,
    followup_ct: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    baseline_mask: str | os.PathLike | None = None,
    followup_mask: str | os.PathLike | None = None,
    model: str | os.PathLike | list[str | os.PathLike] | None = None,
    interval_days: float | None = None,
    affine: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> CompareResult:
    """Compare a follow-up CT with its baseline and write ``response.json``, ``lesions.csv``, ``compare.html``.

    Args:
        baseline_ct, followup_ct: CTs (NIfTI, NRRD, MHA or a DICOM series folder), HU.
        out_dir: output folder (predicted masks go to ``out_dir/masks/{baseline,followup}/``).
        baseline_mask, followup_mask: tumour masks on their CT's grid, used as they are; a missing one is
            predicted with ``model``.
        model: checkpoint or run folder (or several, averaged) for the missing masks.
        interval_days: days between the scans, for volume doubling times; None: from the two DICOM
            StudyDates when both CTs are DICOM series with valid dates, the follow-up's later.
        affine: refine the rigid registration with an affine one.
        device: ``auto``, ``cpu`` or ``cuda`` for the prediction.

    Raises:
        InputError: a missing or unreadable file, an input that is not a CT, a mask off its CT's grid, a
            missing mask without ``model``, or a bad ``interval_days``.
    """
    paths = (Path(baseline_ct), Path(followup_ct))
    masks = tuple(None if m is None else Path(m) for m in (baseline_mask, followup_mask))
    for m, opt in zip(masks, ("--baseline-mask", "--followup-mask"), strict=True):
        if m is None and not model:
            raise InputError(opt, f"not given, and no --model to predict it (give {opt} or --model)")
    _check_interval(interval_days)
    cts = (read_ct(paths[0]), read_ct(paths[1]))
    interval_source, date_warnings = ("--interval-days" if interval_days is not None else None), []
    if interval_days is None:
        interval_days, date_warnings = interval_from_study_dates(*cts)
        interval_source = None if interval_days is None else "DICOM StudyDate"
    # a bad mask fails before anything is predicted or written
    given = [None if m is None else (m, read_mask(m, reference=ct)) for m, ct in zip(masks, cts, strict=True)]
    out = Path(out_dir)
    mask_vols, mask_files, sources = _masks(cts, paths, given, model, out, device, progress)
    base_ct, _ = to_canonical(cts[0])
    fu_ct, _ = to_canonical(cts[1])
    base_m, _ = to_canonical(mask_vols[0])
    fu_m, _ = to_canonical(mask_vols[1])
    reg = register(base_ct, fu_ct, affine=affine)
    a = assess(base_m, fu_m, reg, midline_x_mm=lung_midline_x_mm(reg.baseline_lungs, base_ct),
               thickness_mm=slice_thickness_mm(cts[0]), interval_days=interval_days, gate_mm=GATE_MM)  # fmt: skip
    warnings = _warnings(reg) + date_warnings
    inputs = {"baseline_ct": str(paths[0]), "followup_ct": str(paths[1]), "baseline_mask": str(mask_files[0]),
              "followup_mask": str(mask_files[1]), "baseline_mask_source": sources[0],
              "followup_mask_source": sources[1], "interval_days": interval_days, "interval_source": interval_source,
              "study_dates": [cts[0].meta.get("StudyDate"), cts[1].meta.get("StudyDate")]}  # fmt: skip
    doc = _document(a, reg, inputs, warnings)
    figures = lesion_figures(
        base_ct, fu_ct, lesion_labels(base_m.array)[0], lesion_labels(fu_m.array)[0], a, reg
    )
    ensure_writable_dir(out)
    result = CompareResult(
        out, a.response.category, a.response.rule, warnings=warnings, residual_mm=reg.residual_mm
    )
    for name, text in (
        ("response.json", json.dumps(doc, indent=2) + "\n"),
        ("lesions.csv", _csv(a.rows)),
        ("compare.html", render_compare_html(doc, a.rows, figures)),
    ):
        atomic_write_text(out / name, text)
        result.outputs.append(out / name)
    return result
