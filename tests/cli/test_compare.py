"""``lungtumor compare`` end to end with given masks on synthetic chests, its bad-input errors (exit 2) and
warnings (another patient, no lungs, DICOM StudyDates)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from lt_followup_data import LEFT_LUNG_XYZ, RIGHT_LUNG_XYZ, chest, mask_volume, phantom_case, spheres

from lungtumor.cli import main
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

SHIFT = (6.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """Baseline: two lesions; follow-up moved by 6 mm, the right one shrunk by half, the left one gone."""
    d = tmp_path_factory.mktemp("pair")
    base_les = spheres([(RIGHT_LUNG_XYZ, 8.0), (LEFT_LUNG_XYZ, 6.0)])
    fu_les = spheres([(RIGHT_LUNG_XYZ, 4.0)], SHIFT)
    files = {
        "base": write_volume(chest(base_les), d / "base.nii.gz"),
        "fu": write_volume(chest(fu_les, SHIFT, seed=1), d / "fu.nii.gz"),
        "base_mask": write_volume(mask_volume(base_les), d / "base_mask.nii.gz"),
        "fu_mask": write_volume(mask_volume(fu_les), d / "fu_mask.nii.gz"),
    }
    return files


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_compare_with_given_masks(pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc, stdout, err = _run(capsys, "compare", pair["base"], pair["fu"], "--out", out, "--baseline-mask",
                           pair["base_mask"], "--followup-mask", pair["fu_mask"], "--interval-days", "90", "-q")  # fmt: skip
    assert rc == 0, err
    assert "PR" in stdout and err == ""
    doc = json.loads((out / "response.json").read_text())
    rec = doc["recist"]
    assert rec["category"] == "PR" and rec["rule"].startswith("PR:")
    assert len(rec["targets"]) == 2 and rec["new_lesions"] == 0
    assert rec["followup_sum_mm"] < 0.7 * rec["baseline_sum_mm"]
    assert "not a diagnosis" in doc["disclaimer"]
    reg = doc["registration"]
    assert reg["residual_mm"] < 1.0 and not reg["poor"]
    assert reg["translation_mm"][0] == pytest.approx(SHIFT[0], abs=1.0)
    rows = list(csv.DictReader((out / "lesions.csv").open()))
    assert sorted(r["kind"] for r in rows) == ["matched", "vanished"]
    matched = next(r for r in rows if r["kind"] == "matched")
    assert matched["matched_by"] == "overlap" and float(matched["volume_doubling_time_days"]) < 0
    html = (out / "compare.html").read_text()
    assert "PR" in html and "not a diagnosis" in html and html.count("data:image/png;base64,") == 2
    assert "<script" not in html
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def _bad_mask(pair, d: Path, where_origin: bool = False) -> tuple[list, str]:
    m = write_volume(Volume(np.zeros((8, 64, 64), np.uint8), spacing=(1, 1, 2.5)), d / "small_mask.nii.gz")
    if where_origin:
        m = write_volume(
            Volume(np.zeros((40, 64, 64), np.uint8), (1, 1, 2.5), (0, 0, 0)), d / "moved_mask.nii.gz"
        )
    return [
        pair["base"],
        pair["fu"],
        "--baseline-mask",
        m,
        "--followup-mask",
        pair["fu_mask"],
    ], m.name


@pytest.mark.parametrize(
    "case",
    ["missing_ct", "not_ct", "no_air", "mask_shape", "mask_origin", "no_mask_no_model", "bad_interval"],
)
def test_compare_bad_input_exits_2_with_one_line(pair, tmp_path, capsys, case):
    masks = ["--baseline-mask", pair["base_mask"], "--followup-mask", pair["fu_mask"]]
    if case == "missing_ct":
        argv, where = [tmp_path / "nope.nii.gz", pair["fu"], *masks], "nope.nii.gz: no such file"
    elif case == "not_ct":
        argv, where = [pair["base"], pair["fu_mask"], *masks], "fu_mask.nii.gz: does not look like a CT"
    elif case == "no_air":  # a soft-tissue block: no air, so no lungs
        block = Volume(np.random.default_rng(0).normal(40, 10, (40, 64, 64)).astype(np.int16), (1, 1, 2.5))
        argv = [pair["base"], write_volume(block, tmp_path / "block.nii.gz"), *masks]
        where = "block.nii.gz: does not look like a CT in HU: no voxel below -500 HU, so no air and no lungs"
    elif case in ("mask_shape", "mask_origin"):
        argv, where = _bad_mask(pair, tmp_path, case == "mask_origin")
        where += ": label is not on the image grid: " + ("origin" if case == "mask_origin" else "shape")
    elif case == "no_mask_no_model":
        argv, where = [pair["base"], pair["fu"], masks[0], masks[1]], "--followup-mask: not given"
    else:
        argv, where = [pair["base"], pair["fu"], *masks, "--interval-days", "-3"], "--interval-days"
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, "compare", *argv, "--out", out)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0], err
    assert "Traceback" not in err and not out.exists()


FIXTURE_CKPT = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt" / "demo2d.ckpt"


def test_compare_predicts_a_missing_mask_with_the_model(pair, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc, _, err = _run(capsys, "compare", pair["base"], pair["fu"], "--out", out, "--baseline-mask",
                      pair["base_mask"], "--model", FIXTURE_CKPT, "--device", "cpu", "-q")  # fmt: skip
    assert rc == 0, err
    doc = json.loads((out / "response.json").read_text())
    assert doc["inputs"]["baseline_mask_source"] == "given"
    assert doc["inputs"]["followup_mask_source"] == "predicted"
    assert Path(doc["inputs"]["followup_mask"]).is_file()
    assert doc["recist"]["category"] in ("CR", "PR", "SD", "PD")


def _compare(capsys, base, fu, base_mask, fu_mask, out, *extra) -> tuple[str, dict, str]:
    """Run compare (exit 0 expected); its stderr, response.json and page."""
    rc, _, err = _run(capsys, "compare", base, fu, "--out", out, "--baseline-mask", base_mask, "--followup-mask",
                      fu_mask, "-q", *extra)  # fmt: skip
    assert rc == 0, err
    return err, json.loads((out / "response.json").read_text()), (out / "compare.html").read_text()


def test_another_patient_warns_of_a_poor_registration(tmp_path, capsys):
    """The follow-up is another (phantom) patient, with another body and lung size: the residual is far above
    the threshold, and the warning reaches stderr, response.json and the page."""
    files = []
    for name, seed in (("base", 0), ("other", 2)):
        case = phantom_case(seed, 96, 32)
        files += [write_volume(case.image, tmp_path / f"{name}.nii.gz"),
                  write_volume(case.label, tmp_path / f"{name}_mask.nii.gz")]  # fmt: skip
    err, doc, html = _compare(capsys, files[0], files[2], files[1], files[3], tmp_path / "cmp")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: poor registration: the lung surfaces are "), err
    assert "a different patient" in lines[0]
    assert (
        doc["registration"]["poor"]
        and doc["registration"]["residual_mm"] > 2 * doc["registration"]["poor_threshold_mm"]
    )
    assert doc["warnings"] == [lines[0].removeprefix("warning: ")]
    assert "poor registration" in html


def test_ct_without_lungs_warns(pair, tmp_path, capsys):
    """A follow-up with a body in air but no lungs is registered whole, with a warning (not an error)."""
    fu = chest(seed=1).array.copy()
    fu[(fu > -950) & (fu < -500)] = 40  # the lungs filled with soft tissue
    fu_path = write_volume(chest().with_array(fu), tmp_path / "nolungs.nii.gz")
    err, doc, html = _compare(
        capsys, pair["base"], fu_path, pair["base_mask"], pair["base_mask"], tmp_path / "cmp"
    )
    assert err.strip().startswith("warning: no lungs found in the follow-up CT (no air inside the body)"), err
    assert len(err.strip().splitlines()) == 1
    reg = doc["registration"]
    assert reg["lungs_missing"] == ["follow-up"] and reg["residual_mm"] is None and reg["poor"]
    assert doc["warnings"] and "no lungs found" in html


def _write_dicom(ct: Volume, folder: Path, study_date: str, uid: str) -> Path:
    """``ct`` (int16 HU, identity direction) as an axial DICOM CT series, one file per slice, with StudyDate."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(ct.shape[0]):
        sl = sitk.GetImageFromArray(ct.array[k])
        sl.SetSpacing(ct.spacing[:2])
        pos = (ct.origin[0], ct.origin[1], ct.origin[2] + k * ct.spacing[2])
        tags = {"0008|0060": "CT", "0008|0020": study_date, "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0008|0018": f"{uid}.{k + 1}", "0020|000d": f"{uid}.0", "0020|000e": uid,
                "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
                "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": f"{ct.spacing[2]:.4f}",
                "0028|1052": "0", "0028|1053": "1"}  # fmt: skip
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(sl)
    return folder


@pytest.mark.parametrize(
    ("dates", "extra", "interval", "source"),
    [
        (("20240105", "20240405"), [], 91.0, "DICOM StudyDate"),
        (("20240105", "20240405"), ["--interval-days", "30"], 30.0, "--interval-days"),
        (("20240405", "20240105"), [], None, None),  # the follow-up dated before the baseline
        (("20240105", "2024-04-05"), [], None, None),  # not YYYYMMDD
    ],
)
def test_interval_from_dicom_study_dates(pair, tmp_path, capsys, dates, extra, interval, source):
    """Two DICOM series: the interval (days) comes from their StudyDates unless --interval-days is given;
    a follow-up not dated after the baseline, or a bad date, gives a warning and no doubling times."""
    base_les, fu_les = spheres([(RIGHT_LUNG_XYZ, 8.0)]), spheres([(RIGHT_LUNG_XYZ, 4.0)], SHIFT)
    base = _write_dicom(chest(base_les), tmp_path / "base", dates[0], "1.2.826.0.1.3680043.2.1125.9.1")
    fu = _write_dicom(
        chest(fu_les, SHIFT, seed=1), tmp_path / "fu", dates[1], "1.2.826.0.1.3680043.2.1125.9.2"
    )
    masks = [
        write_volume(mask_volume(m), tmp_path / f"{n}.nii.gz") for n, m in (("bm", base_les), ("fm", fu_les))
    ]
    err, doc, _ = _compare(capsys, base, fu, masks[0], masks[1], tmp_path / "cmp", *extra)
    assert doc["inputs"]["study_dates"] == list(dates)
    assert doc["inputs"]["interval_days"] == interval and doc["inputs"]["interval_source"] == source
    vdt = doc["lesions"][0]["volume_doubling_time_days"]
    if interval is None:
        assert vdt is None and len(doc["warnings"]) == 1 and "no volume doubling times" in doc["warnings"][0]
        assert err.strip() == "warning: " + doc["warnings"][0]
    else:
        assert err == "" and vdt is not None and vdt < 0  # shrinking: a halving time
        # V_b / V_f = 8 (radius halved): the halving time is interval x ln 2 / ln 8 = interval / 3
        assert -vdt == pytest.approx(interval / 3, rel=0.15)
