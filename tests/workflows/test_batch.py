"""Predicting many CTs (issue 25): ``--num-parts K --part-id I`` for array jobs, and ``--continue``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.workflows import stages
from lungtumor.workflows.batch import check_part, manifest_name, select_part
from lungtumor.workflows.outputs import TYPE_SUFFIXES, expected_outputs

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"
MODEL = FIX / "demo2d.ckpt"
CASES = ("a", "b", "c", "d", "e")


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Five copies of the fixture phantom, a.nii.gz ... e.nii.gz."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in CASES:
        shutil.copy(FIX / "ct.nii.gz", folder / f"{name}.nii.gz")
    return folder


def _predict(inputs: Path, out: Path, *extra: str) -> int:
    return main(
        ["predict", str(inputs), "--model", str(MODEL), "-o", str(out), "--device", "cpu", "-q", *extra]
    )


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def predicted_cases(monkeypatch) -> list[str]:
    """The cases that ``predict`` really predicts (not skipped), in order."""
    seen: list[str] = []
    real = stages.read_case

    def spy(work, *args, **kwargs):
        seen.append(work.res.case)
        return real(work, *args, **kwargs)

    monkeypatch.setattr(stages, "read_case", spy)
    return seen


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_parts_are_disjoint_cover_every_case_and_are_balanced(k):
    stems = [f"case_{i:03d}" for i in (5, 3, 9, 0, 1, 8, 2)]
    parts = [select_part(stems, stems, k, i) for i in range(k)]
    flat = [s for p in parts for s in p]
    assert sorted(flat) == sorted(stems) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    if k > 1:  # sorted by stem, every K-th from I (nnU-Net's part_id::num_parts)
        assert parts[0] == sorted(stems)[0::k]


@pytest.mark.parametrize(("k", "i"), [(2, 2), (2, -1), (0, 0)])
def test_part_out_of_range_is_refused(k, i):
    with pytest.raises(InputError):
        check_part(k, i)


def test_manifest_names():
    assert manifest_name() == "predict_manifest.json"
    assert manifest_name(4, 3) == "predict_manifest.part-3-of-4.json"


def test_two_parts_in_one_folder_write_every_case_once_with_their_own_manifests(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    for i in (1, 0):
        assert _predict(inputs, out, "--num-parts", "2", "--part-id", str(i)) == 0
    assert f"part 0 of 2 (--part-id of --num-parts): 3 of {len(CASES)} cases" in capsys.readouterr().out
    assert not (out / "predict_manifest.json").exists()
    m0, m1 = (_manifest(out / f"predict_manifest.part-{i}-of-2.json") for i in (0, 1))
    assert [c["case"] for c in m0["cases"]] == ["a", "c", "e"] and [c["case"] for c in m1["cases"]] == [
        "b",
        "d",
    ]
    assert m0["part"] == {"id": 0, "of": 2} and m1["part"] == {"id": 1, "of": 2}
    assert sorted(p.name for p in out.glob("*_tumour.nii.gz")) == [f"{c}_tumour.nii.gz" for c in CASES]


def test_part_id_out_of_range_is_one_line_error_exit_2(inputs, tmp_path, capsys):
    assert _predict(inputs, tmp_path / "out", "--num-parts", "3", "--part-id", "3") == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: --part-id: must be in 0..2 for --num-parts 3, got 3"
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_without_parts_the_manifest_keeps_its_name(inputs, tmp_path):
    assert _predict(inputs, tmp_path / "out") == 0
    assert [p.name for p in (tmp_path / "out").glob("predict_manifest*.json")] == ["predict_manifest.json"]


def test_continue_predicts_only_the_case_whose_mask_was_deleted(inputs, tmp_path, capsys, predicted_cases):
    out = tmp_path / "out"
    assert _predict(inputs, out) == 0
    before = _manifest(out / "predict_manifest.json")
    (out / "c_tumour.nii.gz").unlink()
    predicted_cases.clear()
    capsys.readouterr()
    assert _predict(inputs, out, "--continue") == 0
    assert predicted_cases == ["c"]
    assert (out / "c_tumour.nii.gz").is_file()
    stdout = capsys.readouterr().out
    assert stdout.count("finished before, skipped (--continue)") == len(CASES) - 1
    after = _manifest(out / "predict_manifest.json")
    assert sorted(c["case"] for c in after["cases"]) == sorted(CASES)
    old = {c["case"]: c for c in before["cases"]}
    for c in after["cases"]:  # the skipped cases are carried over as they were
        if c["case"] != "c":
            assert c == old[c["case"]]
    assert after["continued"]["cases_carried"] == len(CASES) - 1


def test_continue_redoes_a_case_missing_from_the_manifest_or_half_written(inputs, tmp_path, predicted_cases):
    out = tmp_path / "out"
    assert _predict(inputs, out) == 0
    path = out / "predict_manifest.json"
    doc = _manifest(path)
    doc["cases"] = [c for c in doc["cases"] if c["case"] != "b"]  # killed after b's files, before its entry
    path.write_text(json.dumps(doc), encoding="utf-8")
    (out / "d_lesions.csv").unlink()  # d has its mask but not all of its outputs
    predicted_cases.clear()
    assert _predict(inputs, out, "--continue") == 0
    assert predicted_cases == ["b", "d"]


def test_continue_predicts_a_case_lacking_a_newly_asked_output(inputs, tmp_path, predicted_cases):
    out = tmp_path / "out"
    assert _predict(inputs, out) == 0
    predicted_cases.clear()
    assert _predict(inputs, out, "--continue", "--save-prob") == 0
    assert predicted_cases == list(CASES)  # no case has its probability map yet
    predicted_cases.clear()
    assert _predict(inputs, out, "--continue") == 0  # the probability maps are extra: nothing to do
    assert predicted_cases == []


def test_continue_with_parts_reads_its_own_manifest(inputs, tmp_path, predicted_cases):
    out = tmp_path / "out"
    assert _predict(inputs, out, "--num-parts", "2", "--part-id", "0") == 0
    (out / "a_tumour.nii.gz").unlink()
    predicted_cases.clear()
    assert _predict(inputs, out, "--num-parts", "2", "--part-id", "0", "--continue") == 0
    assert predicted_cases == ["a"]
    predicted_cases.clear()
    assert _predict(inputs, out, "--num-parts", "2", "--part-id", "1", "--continue") == 0
    assert predicted_cases == ["b", "d"]  # part 1 had not run


def test_continue_with_other_settings_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(inputs, out) == 0
    capsys.readouterr()
    assert _predict(inputs, out, "--continue", "--threshold", "0.25") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: {out / 'predict_manifest.json'}: --continue: its cases were predicted with threshold"
    )
    assert len(err.splitlines()) == 1


def test_expected_outputs_follow_the_options():
    assert expected_outputs("x", ("nifti",), save_prob=False, measure=True, report=False) == [
        "x_tumour.nii.gz", "x_lesions.json", "x_lesions.csv"]  # fmt: skip
    got = expected_outputs("x", ("sr",), save_prob=True, measure=False, report=True)
    assert got == ["x_tumour_seg.dcm", "x_measurements_sr.dcm", "x_prob.nii.gz", "x_report.html",
                   "x_animation.gif", "x_montage.png"]  # fmt: skip


def test_type_suffixes_match_the_dicom_writer():
    dicom_outputs = pytest.importorskip("lungtumor.report.dicom_outputs")  # needs highdicom
    for kind, suffix in dicom_outputs.DICOM_OUTPUTS.items():
        assert suffix in TYPE_SUFFIXES[kind]
