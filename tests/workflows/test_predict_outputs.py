"""``predict --output-type`` (DICOM SEG / RTSTRUCT / SR), ``predict_manifest.json`` and the model card's line and
phantom warning, with the small legacy checkpoint of tests/fixtures (no training here).

The CT is the fixture's phantom written as a DICOM series with pydicom; the checkpoint predates model cards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lt_dicom_data import tree_digest, write_ct_series

from lungtumor.cli import main
from lungtumor.evaluation.measure import lesion_labels
from lungtumor.imaging.io import read_mask, read_volume

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"
CKPT = FIXTURE / "demo2d.ckpt"
ALL = "nifti,dicom-seg,rtstruct,sr"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["predict", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def dicom_ct(tmp_path_factory) -> Path:
    """The fixture CT (16 x 64 x 64, 5.926 x 5.926 x 2 mm) as an axial DICOM series."""
    ct = read_volume(FIXTURE / "ct.nii.gz")
    assert ct.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    folder = tmp_path_factory.mktemp("series") / "case1"
    write_ct_series(folder, ct.array, pixel_mm=ct.spacing[0], slice_mm=ct.spacing[2], origin=ct.origin)
    return folder


@pytest.fixture(scope="module")
def dicom_run(dicom_ct, tmp_path_factory):
    """``predict`` of the series with every output type (threshold 0.25: the fixture model finds a tumour)."""
    pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'lungtumor[dicom]')")
    out = tmp_path_factory.mktemp("pred") / "out"
    before = tree_digest(dicom_ct)
    args = [dicom_ct, "--model", CKPT, "--out", out, "-q", "--threshold", "0.25", "--output-type", ALL]
    rc = main(["predict", *(str(a) for a in args)])
    return {"rc": rc, "out": out, "before": before}


def test_dicom_outputs_match_the_nifti_mask(dicom_run, dicom_ct):
    import highdicom as hd  # noqa: F401 - the fixture skipped without it

    from lungtumor.report.dicom_rtstruct import read_rtstruct_labels
    from lungtumor.report.dicom_seg import read_seg_labels
    from lungtumor.report.dicom_source import read_source_series

    assert dicom_run["rc"] == 0
    out = dicom_run["out"]
    ct = read_volume(dicom_ct)
    mask = read_mask(out / "case1_tumour.nii.gz", reference=ct)
    assert mask.array.sum() > 100
    source = read_source_series(dicom_ct, mask)
    assert np.array_equal(read_seg_labels(out / "case1_tumour_seg.dcm", source) > 0, mask.array > 0)
    expected, n = lesion_labels(mask)
    assert np.array_equal(read_rtstruct_labels(out / "case1_tumour_rtstruct.dcm", source), expected)
    lesions = json.loads((out / "case1_lesions.json").read_text())["lesions"]
    assert len(lesions) == n >= 1
    assert (out / "case1_measurements_sr.dcm").is_file()
    assert tree_digest(dicom_ct) == dicom_run["before"]  # the source is not changed


def test_manifest_records_inputs_outputs_model_settings_and_timings(dicom_run, dicom_ct):
    out = dicom_run["out"]
    m = json.loads((out / "predict_manifest.json").read_text())
    assert m["lungtumor_version"] and m["manifest_version"] == 1
    (model,) = m["models"]
    assert model["path"] == str(CKPT) and model["sha256"] == _sha(CKPT)
    assert model["card"] == {"version": 0}  # a checkpoint from before model cards
    s = m["settings"]
    assert s["threshold"] == 0.25 and s["output_types"] == ALL.split(",")
    for key in ("tta", "precision", "device", "lung_gate", "postprocess", "detector"):
        assert key in s, key
    assert set(s["postprocess"]) == {"enabled", "min_lesion_mm3", "min_z_extent_ratio"}
    assert m["timings"]["load_models_s"] >= 0
    (case,) = m["cases"]
    assert case["input"] == str(dicom_ct)
    files = sorted(f for f in dicom_ct.iterdir())
    assert case["input_sha256"] == {f.name: _sha(f) for f in files}
    paths = {o["path"]: o["sha256"] for o in case["outputs"]}
    for name in (
        "case1_tumour.nii.gz",
        "case1_tumour_seg.dcm",
        "case1_tumour_rtstruct.dcm",
        "case1_measurements_sr.dcm",
    ):
        assert paths[name] == _sha(out / name), name
    assert set(case["timings"]) >= {"read", "predict", "postprocess", "write"}
    assert m["failed"] == [] and m["warnings"] == []


def test_old_checkpoint_prints_an_unknown_model_card(dicom_ct, tmp_path, capsys):
    rc, out, err = _cli(capsys, FIXTURE / "ct.nii.gz", "--model", CKPT, "--out", tmp_path / "o", "-q")
    assert rc == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"model {CKPT}") and "training data unknown" in first
    assert "warning" not in out


def test_dicom_output_for_a_nifti_input_is_one_line_error(tmp_path, capsys):
    ct = FIXTURE / "ct.nii.gz"
    rc, out, err = _cli(
        capsys, ct, "--model", CKPT, "--out", tmp_path / "o", "-q", "--output-type", "dicom-seg"
    )
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ct}: ") and "DICOM series" in lines[0], err
    assert not (tmp_path / "o").exists() and out == ""


def test_unknown_output_type_is_one_line_error(tmp_path, capsys):
    rc, _, err = _cli(
        capsys, FIXTURE / "ct.nii.gz", "--model", CKPT, "--out", tmp_path / "o", "--output-type", "png"
    )
    assert rc == 2 and err.strip() == (
        "error: --output-type: unknown output type 'png'; give a comma-separated list of nifti, dicom-seg, "
        "rtstruct, sr"
    )


def test_dicom_output_without_highdicom_names_the_extra(dicom_ct, tmp_path, capsys, monkeypatch):
    for name in [
        m for m in sys.modules if m == "highdicom" or m.startswith(("highdicom.", "lungtumor.report.dicom"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    rc, _, err = _cli(capsys, dicom_ct, "--model", CKPT, "--out", tmp_path / "o", "--output-type", "sr")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'lungtumor[dicom]'" in lines[0] and "highdicom" in lines[0], err
    assert not (tmp_path / "o").exists()


def test_dicom_outputs_alone_write_no_nifti(dicom_ct, tmp_path, capsys):
    pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'lungtumor[dicom]')")
    out = tmp_path / "o"
    rc, stdout, err = _cli(
        capsys,
        dicom_ct,
        "--model",
        CKPT,
        "--out",
        out,
        "-q",
        "--threshold",
        "0.25",
        "--output-type",
        "dicom-seg",
    )
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "case1_lesions.csv", "case1_lesions.json", "case1_tumour_seg.dcm", "predict_manifest.json",
    ]  # fmt: skip
    assert "case1_tumour_seg.dcm" in stdout.splitlines()[-1]


def test_a_killed_run_leaves_a_manifest_of_the_finished_cases(tmp_path, monkeypatch):
    import lungtumor.workflows.predict as wp
    from lungtumor.workflows import stages

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(FIXTURE / "ct.nii.gz", inputs / f"{name}.nii.gz")
    real = stages.write_case

    def killed_on_b(work, *args, **kw):
        if work.res.case == "b":
            raise KeyboardInterrupt  # as a kill while b is written: nothing after this runs
        return real(work, *args, **kw)

    monkeypatch.setattr(stages, "write_case", killed_on_b)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        wp.predict(inputs, CKPT, out, device="cpu")
    m = json.loads((out / "predict_manifest.json").read_text())
    assert [c["case"] for c in m["cases"]] == ["a"] and m["failed"] == []
    assert not list(out.glob(".tmp-*"))


@pytest.fixture
def phantom_ckpt(tmp_path) -> Path:
    """The fixture checkpoint with a model card saying it saw only synthetic phantoms."""
    ck = torch.load(CKPT, map_location="cpu", weights_only=True)
    ck["hyper_parameters"]["lungtumor"]["card"] = {
        "version": 1, "created": "2025-01-31T12:00:00+00:00", "lungtumor_version": "0.1.0", "preset": "demo",
        "arch": "unet2d",
        "data": {"name": "lungtumor-phantoms", "path": "/data/phantoms", "description": "", "synthetic": True,
                 "cases": 24, "train_cases": 18, "val_cases": 6},
        "validation": {"metric": "per-patient Dice", "val_dice": 0.8123, "val_loss": 0.2, "epoch": 13},
    }  # fmt: skip
    path = tmp_path / "phantom.ckpt"
    torch.save(ck, path)
    return path


def test_phantom_only_model_warns_in_cli_report_and_manifest(phantom_ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    rc, stdout, err = _cli(
        capsys, FIXTURE / "ct.nii.gz", "--model", phantom_ckpt, "--out", out, "-q", "--report"
    )
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith(
        f"model {phantom_ckpt} (unet2d, preset demo, lungtumor 0.1.0, trained 2025-01-31)"
    )
    assert "lungtumor-phantoms (24 cases, synthetic phantoms)" in lines[0] and "val Dice 0.812" in lines[0]
    assert (
        lines[1].startswith("warning: ")
        and "never seen a real CT" in lines[1]
        and "not for clinical use" in lines[1]
    )
    html = (out / "ct_report.html").read_text(encoding="utf-8")
    assert "Warning: This model was trained only on synthetic phantoms" in html
    assert "never seen a real CT" in html
    assert "lungtumor-phantoms (24 cases, synthetic phantoms)" in html  # the model card in the metadata table
    assert "Threshold" in html and "Postprocessing" in html
    m = json.loads((out / "predict_manifest.json").read_text())
    assert m["models"][0]["card"]["data"]["synthetic"] is True
    assert len(m["warnings"]) == 1 and "never seen a real CT" in m["warnings"][0]


def test_failed_cases_are_listed_and_a_run_with_none_written_leaves_no_manifest(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(FIXTURE / "ct.nii.gz", inputs / "good.nii.gz")
    (inputs / "bad.nii.gz").write_text("not an image")
    out = tmp_path / "o"
    rc, _, err = _cli(capsys, inputs, "--model", CKPT, "--out", out, "-q")
    assert rc == 2 and "bad.nii.gz" in err
    m = json.loads((out / "predict_manifest.json").read_text())
    assert [c["case"] for c in m["cases"]] == ["good"]
    assert [f["case"] for f in m["failed"]] == ["bad"] and "bad.nii.gz" in m["failed"][0]["error"]
    only_bad = tmp_path / "o2"
    rc, _, err = _cli(capsys, inputs / "bad.nii.gz", "--model", CKPT, "--out", only_bad, "-q")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert not only_bad.exists()  # no manifest of nothing: the failed command leaves no folder behind
