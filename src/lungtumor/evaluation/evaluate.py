"""Evaluating a folder of predicted masks against the reference: per-case and per-lesion CSV, a summary JSON."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from lungtumor.core.errors import InputError, atomic_write_text, ensure_writable_dir
from lungtumor.evaluation.metrics import SIZE_BINS_MM, detect, dice, hd95, lesion_table_rows, match, nsd
from lungtumor.imaging.io import case_name, is_image_path, read_mask

#: Suffix that ``lungtumor predict`` appends to a case name.
PRED_SUFFIX = "_tumour"


#: Suffix of the probability maps that ``lungtumor predict --save-prob`` writes; skipped by evaluate.
PROB_SUFFIX = "_prob"


#: Suffixes that name a mask or a channel rather than the case; stripped (repeatedly, any case) from file names
#: before ground truth and predictions are matched: nnU-Net's ``_0000``, the usual label/mask names, and
#: lungtumor's own ``_tumour``.
MATCH_SUFFIXES = (PRED_SUFFIX, "_label", "_mask", "_seg", "_gt", "_0000")


CASES_CSV = "evaluation_cases.csv"


SUMMARY_JSON = "evaluation_summary.json"


LESIONS_CSV = "evaluation_lesions.csv"


@dataclass
class CaseMetrics:
    """One evaluated case. Volumes in mL, distances in mm."""

    case: str
    status: str = "ok"  # ok | no_prediction (skipped) | missing_prediction (scored empty) | no_ground_truth
    dice: float = float("nan")
    nsd: float = float("nan")
    hd95_mm: float = float("nan")
    n_gt_lesions: int = 0
    n_found: int = 0
    n_fp: int = 0
    lesion_recall: float = float("nan")
    gt_ml: float = float("nan")
    pred_ml: float = float("nan")
    pred_file: str = ""
    gt_file: str = ""
    lesions: list[dict] = field(default_factory=list, repr=False)  # lesion_rows(); JSON and lesion CSV only


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    case: str = "",
    tolerance_mm: float = 2.0,
    lesion_overlap: float = 0.1,
) -> CaseMetrics:
    """Every metric for one case (masks (z, y, x) on one grid, spacing in array order, mm)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    inter, gt_size, pred_size, _ = match(pred, gt)
    found, n_fp = detect(inter, gt_size, lesion_overlap)
    n_gt, n_found = len(found), int(found.sum())
    return CaseMetrics(
        case=case,
        dice=dice(pred, gt),
        nsd=nsd(pred, gt, spacing_zyx, tolerance_mm),
        hd95_mm=hd95(pred, gt, spacing_zyx),
        n_gt_lesions=n_gt,
        n_found=n_found,
        n_fp=n_fp,
        lesion_recall=n_found / n_gt if n_gt else float("nan"),
        gt_ml=int(np.count_nonzero(gt)) * voxel_ml,
        pred_ml=int(np.count_nonzero(pred)) * voxel_ml,
        lesions=lesion_table_rows(inter, gt_size, pred_size, found, voxel_ml),
    )


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    return {
        "mean": float(v.mean()) if v.size else None,
        "median": float(np.median(v)) if v.size else None,
        "n": int(v.size),
        "n_undefined": len(values) - int(v.size),
    }


def _by_size(rows: list[dict]) -> dict:
    """Recall and mean lesion Dice per :data:`SIZE_BINS_MM` bin (pooled over cases)."""
    out = {}
    for name, _, _ in SIZE_BINS_MM:
        r = [x for x in rows if x["size_bin"] == name]
        out[name] = {
            "n_gt": len(r),
            "n_found": sum(x["found"] for x in r),
            "recall": sum(x["found"] for x in r) / len(r) if r else None,
            "lesion_dice_mean": float(np.mean([x["dice"] for x in r])) if r else None,
        }
    return out


#: Statuses of rows that are listed but not scored.
SKIPPED = ("no_ground_truth", "no_prediction")


@dataclass
class SegmentationMetrics:
    """Accumulate per-case metrics and aggregate them at the end (MONAI style).

    Example:
        >>> acc = SegmentationMetrics(tolerance_mm=2.0)
        >>> for pred, gt, spacing_zyx in cases:
        ...     acc.update(pred, gt, spacing_zyx)
        >>> acc.aggregate()["dice"]["mean"]
    """

    tolerance_mm: float = 2.0
    lesion_overlap: float = 0.1
    cases: list[CaseMetrics] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.tolerance_mm >= 0 and math.isfinite(self.tolerance_mm)):
            raise ValueError(f"tolerance_mm must be a finite number >= 0, got {self.tolerance_mm}")
        if not 0 < self.lesion_overlap <= 1:
            raise ValueError(f"lesion_overlap must be in (0, 1], got {self.lesion_overlap}")

    def update(
        self, pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float], case: str = ""
    ) -> CaseMetrics:
        """Score one case, store it and return its metrics."""
        m = evaluate_case(
            pred,
            gt,
            spacing_zyx,
            case=case,
            tolerance_mm=self.tolerance_mm,
            lesion_overlap=self.lesion_overlap,
        )
        self.cases.append(m)
        return m

    def add(self, m: CaseMetrics) -> None:
        """Store an already computed case (e.g. a skipped ``no_ground_truth`` row, which is not aggregated)."""
        self.cases.append(m)

    def reset(self) -> None:
        """Forget every case."""
        self.cases.clear()

    def aggregate(self) -> dict:
        """Mean and median of each metric over the scored cases, with counts of undefined values."""
        scored = [c for c in self.cases if c.status not in SKIPPED]
        n_gt = sum(c.n_gt_lesions for c in scored)
        n_found = sum(c.n_found for c in scored)
        return {
            "n_cases": len(scored),
            "n_missing_prediction": sum(c.status == "missing_prediction" for c in scored),
            "n_no_ground_truth": sum(c.status == "no_ground_truth" for c in self.cases),
            "n_no_prediction": sum(c.status == "no_prediction" for c in self.cases),
            "n_both_empty": sum(c.gt_ml == 0 and c.pred_ml == 0 for c in scored),
            "tolerance_mm": self.tolerance_mm,
            "lesion_overlap": self.lesion_overlap,
            "dice": _stats([c.dice for c in scored]),
            "nsd": _stats([c.nsd for c in scored]),
            "hd95_mm": _stats([c.hd95_mm for c in scored]),
            "lesion_recall_per_case": _stats([c.lesion_recall for c in scored]),
            "fp_per_case": _stats([float(c.n_fp) for c in scored]),
            "lesions": {
                "n_gt": n_gt,
                "n_found": n_found,
                "n_fp": sum(c.n_fp for c in scored),
                "recall_pooled": n_found / n_gt if n_gt else None,
            },
            "lesions_by_size": _by_size([r for c in scored for r in c.lesions]),
        }


@dataclass
class EvaluationSummary:
    """What :func:`evaluate_dirs` returns."""

    aggregate: dict
    cases: list[CaseMetrics]
    csv_path: Path
    json_path: Path
    lesions_csv_path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # unmatched files: one line each, for stderr


def match_name(name: str) -> str:
    """The name a case is matched by: ``name`` without trailing :data:`MATCH_SUFFIXES` (``lung_001_0000_tumour``
    and ``lung_001_gt`` are both ``lung_001``)."""
    stripped = True
    while stripped:
        stripped = False
        for suf in MATCH_SUFFIXES:
            if name.lower().endswith(suf) and len(name) > len(suf):
                name, stripped = name[: -len(suf)], True
    return name


def _index(folder: Path, what: str, skip_prob: bool) -> dict[str, Path]:
    if not folder.is_dir():
        if folder.exists():
            raise InputError(folder, f"{what} path is a file, not a folder")
        raise InputError(folder, f"{what} folder does not exist")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not is_image_path(p) or p.name.startswith("."):
            continue
        if skip_prob and case_name(p).endswith(PROB_SUFFIX):
            continue  # probability maps written by ``predict --save-prob`` are not masks
        name = match_name(case_name(p))
        if name in out:
            raise InputError(p, f"two {what} files for case {name!r} (the other is {out[name].name})")
        out[name] = p
    if not out:
        raise InputError(folder, f"{what} folder holds no image files (.nii.gz, .nrrd, .mha, ...)")
    return out


def _unmatched_warnings(missing: list[str], extra: list[str], score_missing: bool) -> list[str]:
    """One warning line per kind of unmatched file (for stderr)."""
    lines = []
    if missing:
        how = (
            "scored as an empty prediction"
            if score_missing
            else "skipped, not scored (--score-missing scores them as empty)"
        )
        lines.append(f"{len(missing)} ground-truth case(s) without a prediction, {how}: {', '.join(missing)}")
    if extra:
        lines.append(f"{len(extra)} prediction(s) without ground truth, skipped: {', '.join(extra)}")
    return lines


def _score(
    gts: dict[str, Path],
    preds: dict[str, Path],
    acc: SegmentationMetrics,
    *,
    label: int | None,
    pred_label: int | None,
    score_missing: bool,
) -> None:
    """Score every ground-truth case into ``acc``; unmatched files get unscored rows (or, for ground truth
    with ``score_missing``, are scored against an empty prediction)."""
    for name, gt_path in gts.items():
        pred_path = preds.get(name)
        if pred_path is None and not score_missing:
            acc.add(CaseMetrics(case=name, status="no_prediction", gt_file=str(gt_path)))
            continue
        gt = read_mask(gt_path, label=label, label_option="--label")
        if pred_path is None:
            pred = np.zeros_like(gt.array)
        else:
            pred = read_mask(pred_path, reference=gt, label=pred_label, label_option="--pred-label").array
        m = acc.update(pred, gt.array, gt.spacing[::-1], case=name)
        m.gt_file = str(gt_path)
        if pred_path is None:
            m.status = "missing_prediction"
        else:
            m.pred_file = str(pred_path)
    for name in sorted(set(preds) - set(gts)):
        acc.add(CaseMetrics(case=name, status="no_ground_truth", pred_file=str(preds[name])))


def evaluate_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tolerance_mm: float = 2.0,
    lesion_overlap: float = 0.1,
    *,
    label: int | None = None,
    pred_label: int | None = None,
    score_missing: bool = False,
) -> EvaluationSummary:
    """Score every case of ``gt_dir`` against ``pred_dir`` and write ``evaluation_cases.csv`` and
    ``evaluation_summary.json`` into ``out_dir`` (atomically).

    Cases match by name (.nii.gz, .nii, .nrrd, .mha, ...) after :func:`match_name` strips the usual suffixes
    (``_tumour``, ``_label``, ``_mask``, ``_seg``, ``_gt``, ``_0000``) on both sides; ``<case>_prob.<ext>``
    probability maps are skipped. A file that matches nothing is skipped (listed with its status, not scored,
    and named in ``EvaluationSummary.warnings``); with ``score_missing`` a ground-truth case without a prediction
    is scored as an empty prediction instead. ``label`` / ``pred_label``: the ground truth / the predictions are
    multi-label masks whose voxels equal to it are the tumour (without them masks must be binary).

    Raises:
        InputError: a folder is missing or empty, no prediction matches a ground-truth case, two files of a
            folder match one case, a mask unreadable or not binary, a prediction not on its ground truth's
            grid, bad options, or an unwritable output folder.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError("--tolerance-mm", f"must be a finite number >= 0, got {tolerance_mm}")
    if not 0 < lesion_overlap <= 1:
        raise InputError("--lesion-overlap", f"must be in (0, 1], got {lesion_overlap}")
    gts = _index(Path(gt_dir), "ground-truth", skip_prob=False)
    preds = _index(Path(pred_dir), "prediction", skip_prob=True)
    if not set(gts) & set(preds):  # surely the wrong folder: nothing could be scored
        raise InputError(
            pred_dir,
            f"no prediction matches a ground-truth case by name (ground truth: {', '.join(list(gts)[:3])}"
            f"{', ...' if len(gts) > 3 else ''}; predictions: {', '.join(list(preds)[:3])}"
            f"{', ...' if len(preds) > 3 else ''})",
        )
    out = ensure_writable_dir(out_dir)
    acc = SegmentationMetrics(tolerance_mm=tolerance_mm, lesion_overlap=lesion_overlap)
    _score(gts, preds, acc, label=label, pred_label=pred_label, score_missing=score_missing)
    agg = acc.aggregate()
    for status in ("missing_prediction", "no_prediction", "no_ground_truth"):
        agg[status] = [c.case for c in acc.cases if c.status == status]
    agg["units"] = {"hd95_mm": "mm", "gt_ml": "mL", "pred_ml": "mL", "tolerance_mm": "mm"}
    agg["policy"] = (
        "Dice NaN when both masks are empty; HD95 NaN when either is empty; NSD NaN when both are empty, "
        "0 when one is; NaNs are excluded from mean/median and counted in n_undefined. A ground-truth case "
        "without a prediction is "
        + ("scored as an empty mask" if score_missing else "listed (no_prediction) but not scored")
        + "; a prediction without ground truth is listed but not scored."
    )
    csv_path, json_path, les_path = out / CASES_CSV, out / SUMMARY_JSON, out / LESIONS_CSV
    names = [f.name for f in fields(CaseMetrics) if f.name != "lesions"]
    atomic_write_text(csv_path, _csv(names, ({k: getattr(c, k) for k in names} for c in acc.cases)))
    les_names = ["case", "lesion", "volume_ml", "equiv_diameter_mm", "size_bin", "found", "overlap", "dice"]
    atomic_write_text(
        les_path, _csv(les_names, ({"case": c.case, **r} for c in acc.cases for r in c.lesions))
    )
    doc = {"summary": agg, "cases": [_json_safe(asdict(c)) for c in acc.cases]}
    atomic_write_text(json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    missing = agg["missing_prediction"] + agg["no_prediction"]
    return EvaluationSummary(
        aggregate=agg,
        cases=acc.cases,
        csv_path=csv_path,
        json_path=json_path,
        lesions_csv_path=les_path,
        warnings=_unmatched_warnings(missing, agg["no_ground_truth"], score_missing),
    )


def _csv(names: list[str], rows) -> str:
    """CSV text of dict rows (floats rounded to 6 digits)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _json_safe(d: dict) -> dict:
    """NaN/inf become null so the JSON is standard."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def format_summary(summary: EvaluationSummary) -> str:
    """A short human-readable summary of an evaluation (the unmatched files are in ``summary.warnings``)."""
    a = summary.aggregate

    def f(key: str, unit: str = "", digits: int = 3) -> str:
        s = a[key]
        if s["n"] == 0:
            return f"{key:<14} undefined in all {s['n_undefined']} cases"
        extra = f" ({s['n_undefined']} undefined)" if s["n_undefined"] else ""
        return f"{key:<14} mean {s['mean']:.{digits}f}{unit}  median {s['median']:.{digits}f}{unit}  n={s['n']}{extra}"

    les = a["lesions"]
    recall = f"{les['recall_pooled']:.3f}" if les["recall_pooled"] is not None else "n/a"
    lines = [
        f"evaluated {a['n_cases']} cases (NSD tolerance {a['tolerance_mm']:g} mm, "
        f"lesion overlap {a['lesion_overlap']:g}); both masks empty: {a['n_both_empty']}",
        f("dice"),
        f("nsd"),
        f("hd95_mm", " mm", 2),
        f"lesions        {les['n_found']}/{les['n_gt']} found (recall {recall}), {les['n_fp']} false positives, "
        f"{a['fp_per_case']['mean'] or 0:.2f} FP per case",
    ]
    bins = [f"{k} {v['n_found']}/{v['n_gt']}" for k, v in a.get("lesions_by_size", {}).items() if v["n_gt"]]
    if bins:
        lines.append("found by size  " + ", ".join(bins) + " (volume-equivalent diameter)")
    extra = f", {summary.lesions_csv_path.name}" if summary.lesions_csv_path else ""
    lines.append(f"wrote {summary.csv_path}{extra} and {summary.json_path}")
    return "\n".join(lines)
