"""``lungtumor compare`` end to end with given masks on synthetic chests, and its bad-input errors (exit 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from lt_followup_data import LEFT_LUNG_XYZ, RIGHT_LUNG_XYZ, chest, mask_volume, spheres

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


def _bad_mask(pair, d: Path) -> list:
    m = write_volume(Volume(np.zeros((8, 64, 64), np.uint8), spacing=(1, 1, 2.5)), d / "small_mask.nii.gz")
    return [
        pair["base"],
        pair["fu"],
        "--baseline-mask",
        m,
        "--followup-mask",
        pair["fu_mask"],
    ], "small_mask.nii.gz"


@pytest.mark.parametrize(
    "case",
    ["missing_ct", "not_ct", "mask_shape", "no_mask_no_model", "bad_interval"],
)
def test_compare_bad_input_exits_2_with_one_line(pair, tmp_path, capsys, case):
    masks = ["--baseline-mask", pair["base_mask"], "--followup-mask", pair["fu_mask"]]
    if case == "missing_ct":
        argv, where = [tmp_path / "nope.nii.gz", pair["fu"], *masks], "nope.nii.gz: no such file"
    elif case == "not_ct":
        argv, where = [pair["base"], pair["fu_mask"], *masks], "fu_mask.nii.gz: does not look like a CT"
    elif case == "mask_shape":
        argv, where = _bad_mask(pair, tmp_path)
        where += ": label is not on the image grid"
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
