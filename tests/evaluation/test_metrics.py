"""Metric invariants (Dice, HD95 and NSD in mm, lesion detection) and the evaluate command."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.evaluation.evaluate import SegmentationMetrics, evaluate_dirs
from lungtumor.evaluation.metrics import dice, hd95, lesion_detection, lesion_rows, nsd
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

SPACING_ZYX = (2.5, 0.7, 0.7)


def sphere(shape=(30, 80, 80), centre=(15, 40, 40), r_mm=12.0, spacing_zyx=SPACING_ZYX):
    g = np.indices(shape, dtype=float)
    d2 = sum(((g[i] - centre[i]) * spacing_zyx[i]) ** 2 for i in range(3))
    return (d2 <= r_mm**2).astype(np.uint8)


def test_dice_invariants():
    a = sphere()
    assert dice(a, a) == 1.0
    b = np.zeros_like(a)
    b[:2, :2, :2] = 1
    assert dice(a, b) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    assert dice(a, np.zeros_like(a)) == 0.0


@pytest.mark.parametrize(("axis", "k"), [(0, 1), (0, 2), (1, 3), (2, 4)])
def test_shifted_sphere_hd95_and_nsd_in_mm(axis, k):
    a = sphere()
    c = [15, 40, 40]
    c[axis] += k
    b = sphere(centre=tuple(c))
    shift_mm = k * SPACING_ZYX[axis]
    h = hd95(b, a, SPACING_ZYX)
    # the 95th percentile of surface distances of a shifted sphere is close to (at most) the shift
    assert 0.8 * shift_mm <= h <= shift_mm + 1e-6
    assert nsd(b, a, SPACING_ZYX, tol_mm=shift_mm) == pytest.approx(1.0)
    assert nsd(b, a, SPACING_ZYX, tol_mm=0.5 * shift_mm) < 0.95
    # distances scale with the spacing passed (mm in, mm out)
    assert hd95(b, a, tuple(2 * s for s in SPACING_ZYX)) == pytest.approx(2 * h, rel=1e-5)


def test_empty_surface_metrics():
    a = sphere()
    z = np.zeros_like(a)
    assert math.isnan(hd95(a, z, SPACING_ZYX)) and math.isnan(hd95(z, z, SPACING_ZYX))
    assert nsd(a, z, SPACING_ZYX) == 0.0 and math.isnan(nsd(z, z, SPACING_ZYX))
    assert hd95(a, a, SPACING_ZYX) == 0.0 and nsd(a, a, SPACING_ZYX) == 1.0


def _two_lesions():
    gt = np.zeros((20, 60, 60), np.uint8)
    gt[5:10, 5:15, 5:15] = 1
    gt[5:10, 40:50, 40:50] = 1
    return gt


def test_lesion_detection_missed_and_false_positive():
    gt = _two_lesions()
    assert lesion_detection(gt, gt) == (2, 2, 0)
    pred = np.zeros_like(gt)
    pred[5:10, 5:15, 5:15] = 1  # finds lesion 1, misses lesion 2
    assert lesion_detection(pred, gt) == (2, 1, 0)
    pred[15:18, 25:30, 25:30] = 1  # spurious blob
    assert lesion_detection(pred, gt) == (2, 1, 1)
    small = np.zeros_like(gt)
    small[5, 40, 40] = 1  # overlaps 1 of 500 voxels: below the 10% overlap, not found, not an FP either
    assert lesion_detection(small, gt, overlap=0.1) == (2, 0, 0)
    assert lesion_detection(small, gt, overlap=0.001) == (2, 1, 0)


def test_lesion_rows_volume_size_bin_and_lesion_dice():
    """A 12 mm-radius sphere (24 mm, 20-30 mm bin) found exactly, a 3 mm-radius one missed; lesion Dice per lesion."""
    big = sphere(r_mm=12.0)
    small = sphere(centre=(15, 8, 8), r_mm=3.0)
    gt = big | small
    rows = lesion_rows(big, gt, SPACING_ZYX)
    by_bin = {r["size_bin"]: r for r in rows}
    assert set(by_bin) == {"20-30 mm", "<10 mm"}
    b, s = by_bin["20-30 mm"], by_bin["<10 mm"]
    assert b["found"] and b["dice"] == 1.0 and b["overlap"] == 1.0
    assert not s["found"] and s["dice"] == 0.0
    assert b["volume_ml"] == pytest.approx(4 / 3 * math.pi * 12.0**3 / 1000, rel=0.03)
    assert b["equiv_diameter_mm"] == pytest.approx(24.0, rel=0.02)
    # half of the big lesion predicted: Dice 2/3, still found; a blob elsewhere does not change the lesion's Dice
    half = big.copy()
    half[:15] = 0
    half[0, 70:, 70:] = 1
    r = {x["size_bin"]: x for x in lesion_rows(half, gt, SPACING_ZYX)}["20-30 mm"]
    assert r["found"] and r["dice"] == pytest.approx(2 * half[15:].sum() / (big.sum() + half[15:].sum()))


def test_accumulator_aggregates():
    gt = _two_lesions()
    acc = SegmentationMetrics(tolerance_mm=2.0)
    acc.update(gt, gt, (1.0, 1.0, 1.0), case="a")
    half = gt.copy()
    half[:, 30:, 30:] = 0
    m = acc.update(half, gt, (1.0, 1.0, 1.0), case="b")
    assert m.lesion_recall == 0.5
    acc.update(np.zeros_like(gt), np.zeros_like(gt), (1.0, 1.0, 1.0), case="empty")
    agg = acc.aggregate()
    assert agg["n_cases"] == 3 and agg["n_both_empty"] == 1
    assert agg["dice"]["n"] == 2 and agg["dice"]["n_undefined"] == 1
    assert agg["dice"]["mean"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert agg["lesions"] == {"n_gt": 4, "n_found": 3, "n_fp": 0, "recall_pooled": 0.75}
    acc.reset()
    assert acc.aggregate()["n_cases"] == 0
    with pytest.raises(ValueError):
        SegmentationMetrics(lesion_overlap=0)


def _write(folder, name, arr, spacing=(0.7, 0.7, 2.5)):
    folder.mkdir(parents=True, exist_ok=True)
    return write_volume(Volume(arr, spacing=spacing), folder / name)


def test_evaluate_cli_writes_csv_and_json(tmp_path, capsys):
    gt = _two_lesions()
    pred = gt.copy()
    pred[:, 30:, 30:] = 0
    _write(tmp_path / "gt", "c1.nii.gz", gt)
    _write(tmp_path / "gt", "c2.nii.gz", gt)
    _write(tmp_path / "gt", "c3.nii.gz", gt)  # no prediction: with --score-missing, scored as empty
    _write(tmp_path / "pred", "c1_tumour.nii.gz", gt)
    _write(tmp_path / "pred", "c2.nii.gz", pred)
    _write(tmp_path / "pred", "extra_tumour.nrrd", gt)  # no ground truth: listed, not scored
    _write(tmp_path / "pred", "c1_prob.nii.gz", gt.astype(np.float32))  # probability map: skipped
    argv = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "ev"), "-q"]
    rc = main([*argv, "--score-missing"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "evaluated 3 cases" in out and "warning" not in out and "error" not in err
    assert "warning: 1 ground-truth case(s) without a prediction, scored as an empty prediction: c3" in err
    assert "warning: 1 prediction(s) without ground truth, skipped: extra" in err
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "ev" / "evaluation_cases.csv").open())}
    assert set(rows) == {"c1", "c2", "c3", "extra"}
    assert float(rows["c1"]["dice"]) == 1.0
    assert rows["c3"]["status"] == "missing_prediction" and float(rows["c3"]["dice"]) == 0.0
    assert rows["extra"]["status"] == "no_ground_truth"
    doc = json.loads((tmp_path / "ev" / "evaluation_summary.json").read_text())
    s = doc["summary"]
    assert s["n_cases"] == 3 and s["missing_prediction"] == ["c3"] and s["no_ground_truth"] == ["extra"]
    assert s["lesions"]["n_gt"] == 6 and s["lesions"]["n_found"] == 3
    assert s["hd95_mm"]["n_undefined"] == 1  # c3: empty prediction
    # one row per ground-truth lesion; c2 found the first lesion of each pair and missed the second
    les = list(csv.DictReader((tmp_path / "ev" / "evaluation_lesions.csv").open()))
    assert [(r["case"], r["found"]) for r in les if r["case"] == "c2"] == [("c2", "True"), ("c2", "False")]
    assert len(les) == 6 and all(r["size_bin"] == "10-20 mm" for r in les)  # 500 voxels of 2 mm³ -> 12.6 mm
    assert s["lesions_by_size"]["10-20 mm"] == {
        "n_gt": 6,
        "n_found": 3,
        "recall": 0.5,
        "lesion_dice_mean": 0.5,
    }
    assert "found by size  10-20 mm 3/6" in out


def test_evaluate_grid_mismatch_exits_2(tmp_path, capsys):
    gt = _two_lesions()
    _write(tmp_path / "gt", "c1.nii.gz", gt)
    _write(tmp_path / "pred", "c1.nii.gz", gt, spacing=(1.0, 1.0, 2.5))
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error:") and "c1.nii.gz" in err and "spacing" in err


def test_evaluate_empty_folder_is_input_error(tmp_path):
    (tmp_path / "p").mkdir()
    _write(tmp_path / "g", "c1.nii.gz", _two_lesions())
    with pytest.raises(InputError, match="no image files"):
        evaluate_dirs(tmp_path / "p", tmp_path / "g", tmp_path / "o")


def test_evaluate_with_no_matching_names_is_input_error(tmp_path, capsys):
    _write(tmp_path / "gt", "c1.nii.gz", _two_lesions())
    _write(tmp_path / "pred", "other_tumour.nii.gz", _two_lesions())
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "no prediction matches a ground-truth case" in err and "c1" in err and "other" in err
    assert not (tmp_path / "ev").exists()
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt" / "c1.nii.gz")])
    assert rc == 2 and "ground-truth path is a file, not a folder" in capsys.readouterr().err


def test_evaluate_skips_unmatched_files_by_default(tmp_path, capsys):
    gt = _two_lesions()
    for name in ("c1", "c2", "c3"):
        _write(tmp_path / "gt", f"{name}.nii.gz", gt)
    _write(tmp_path / "pred", "c1_tumour.nii.gz", gt)
    _write(tmp_path / "pred", "c2_tumour.nii.gz", gt)
    _write(tmp_path / "pred", "stray_tumour.nii.gz", gt)
    rc = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(tmp_path / "ev")])
    out, err = capsys.readouterr()
    assert rc == 0
    warnings = err.strip().splitlines()
    assert warnings == [
        "warning: 1 ground-truth case(s) without a prediction, skipped, not scored (--score-missing scores "
        "them as empty): c3",
        "warning: 1 prediction(s) without ground truth, skipped: stray",
    ]
    assert "evaluated 2 cases" in out and "dice           mean 1.000" in out
    doc = json.loads((tmp_path / "ev" / "evaluation_summary.json").read_text())
    assert doc["summary"]["no_prediction"] == ["c3"] and doc["summary"]["missing_prediction"] == []
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "ev" / "evaluation_cases.csv").open())}
    assert rows["c3"]["status"] == "no_prediction" and rows["stray"]["status"] == "no_ground_truth"


@pytest.mark.parametrize(
    "gt_name, pred_name",
    [
        ("lung_001.nii.gz", "lung_001_0000_tumour.nii.gz"),  # nnU-Net channel suffix kept by predict
        ("lung_001_gt.nii.gz", "lung_001_tumour.nii.gz"),
        ("lung_001_label.nii.gz", "lung_001_seg.nii.gz"),
        ("lung_001_mask.nrrd", "lung_001.nii.gz"),
        ("LUNG_001_GT.nii.gz", "LUNG_001_Seg.nii.gz"),
    ],
)
def test_evaluate_matches_names_with_usual_suffixes(tmp_path, gt_name, pred_name):
    gt = _two_lesions()
    _write(tmp_path / "gt", gt_name, gt)
    _write(tmp_path / "pred", pred_name, gt)
    s = evaluate_dirs(tmp_path / "pred", tmp_path / "gt", tmp_path / "ev")
    assert [c.status for c in s.cases] == ["ok"] and s.cases[0].dice == 1.0 and not s.warnings


def test_evaluate_with_multi_label_masks(tmp_path, capsys):
    """--label N picks the tumour in a multi-label ground truth (an RTSTRUCT label map), --pred-label in
    multi-label predictions (a TotalSegmentator --ml file); without them the error suggests the option."""
    gt = _two_lesions()
    ml = gt.astype(np.uint8) * 3
    ml[0, :4, :4] = 1  # another structure
    _write(tmp_path / "gt", "c1.nii.gz", ml)
    _write(tmp_path / "pred", "c1_tumour.nii.gz", gt)
    _write(tmp_path / "pred_ml", "c1.nii.gz", ml)
    ev = str(tmp_path / "ev")
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", ev, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "values {0, 1, 3}" in err and "--label N" in err
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", ev, "--label", "3"]) == 0
    assert "dice           mean 1.000" in capsys.readouterr().out
    argv = ["evaluate", str(tmp_path / "pred_ml"), str(tmp_path / "gt"), "-o", ev, "--label", "3"]
    assert main(argv) == 2
    assert "--pred-label N" in capsys.readouterr().err
    assert main([*argv, "--pred-label", "3"]) == 0
    assert "dice           mean 1.000" in capsys.readouterr().out
