"""Bad input gives one line ``error: <file>: <problem>``, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from lt_testdata import GEOM, SHAPE, tiny_dataset

from lungtumor.cli import main
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume


def _dataset(root: Path, n: int = 3) -> Path:
    return tiny_dataset(root, n)


def _truncated(ds: Path) -> str:
    p = ds / "imagesTr" / "c1.nii.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return "c1.nii.gz"


def _image_2d(ds: Path) -> str:
    img = sitk.GetImageFromArray(np.zeros(SHAPE[1:], np.int16))
    sitk.WriteImage(img, str(ds / "imagesTr" / "c1.nii.gz"))
    return "c1.nii.gz"


def _image_4d(ds: Path) -> str:
    vol = Volume(np.zeros(SHAPE, np.int16), **GEOM).to_sitk()
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(ds / "imagesTr" / "c2.nii.gz"))
    return "c2.nii.gz"


def _label_other_grid(ds: Path) -> str:
    write_volume(Volume(np.zeros(SHAPE, np.uint8), spacing=(1.0, 1.0, 2.5)), ds / "labelsTr" / "c0.nii.gz")
    return "c0.nii.gz"


def _label_values(ds: Path) -> str:
    m = np.zeros(SHAPE, np.uint8)
    m[1, 1, 1] = 1
    m[2, 2, 2] = 2
    write_volume(Volume(m, **GEOM), ds / "labelsTr" / "c2.nii.gz")
    return "c2.nii.gz"


CASE_PROBLEMS = {
    "truncated": (_truncated, "truncated"),
    "2d": (_image_2d, "2D"),
    "4d": (_image_4d, "4D"),
    "label_grid": (_label_other_grid, "not on the image grid"),
    "label_values": (_label_values, "label has values {0, 1, 2}"),
}


def _one_error_line(capsys, name: str, problem: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and name in lines[0] and problem in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("kind", list(CASE_PROBLEMS))
def test_prepare_bad_case(tmp_path: Path, capsys, kind: str) -> None:
    ds = _dataset(tmp_path / "ds")
    make, problem = CASE_PROBLEMS[kind]
    name = make(ds)
    out = tmp_path / "cache"
    assert main(["prepare", "-q", str(ds), str(out)]) == 2
    _one_error_line(capsys, name, problem)
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("kind", list(CASE_PROBLEMS))
def test_check_bad_case(tmp_path: Path, capsys, kind: str) -> None:
    ds = _dataset(tmp_path / "ds")
    make, problem = CASE_PROBLEMS[kind]
    name = make(ds)
    assert main(["check", "-q", str(ds)]) == 2
    _one_error_line(capsys, name, problem)


def test_prepare_bad_case_keeps_existing_cache_resumable(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "cache"
    assert main(["prepare", "-q", str(ds), str(out)]) == 0
    capsys.readouterr()
    _label_values(ds)
    assert main(["prepare", "-q", str(ds), str(out)]) == 2
    _one_error_line(capsys, "c2.nii.gz", "label has values")
    assert not (out / "cache.json").exists()  # an incomplete cache is never marked complete
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.parametrize("cmd", ["check", "prepare"])
def test_empty_folder(tmp_path: Path, capsys, cmd: str) -> None:
    ds = tmp_path / "emptyds"
    ds.mkdir()
    out = tmp_path / "cache"
    argv = ["check", "-q", str(ds)] if cmd == "check" else ["prepare", "-q", str(ds), str(out)]
    assert main(argv) == 2
    _one_error_line(capsys, "emptyds", "no dataset.json and no imagesTr")
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["check", "prepare"])
def test_dataset_json_pointing_outside(tmp_path: Path, capsys, cmd: str) -> None:
    ds = _dataset(tmp_path / "ds")
    _dataset(tmp_path / "other", n=1)
    data = {
        "training": [
            {"image": "./imagesTr/c0.nii.gz", "label": "./labelsTr/c0.nii.gz"},
            {"image": "../other/imagesTr/c0.nii.gz", "label": "./labelsTr/c1.nii.gz"},
        ]
    }
    (ds / "dataset.json").write_text(json.dumps(data))
    out = tmp_path / "cache"
    argv = ["check", "-q", str(ds)] if cmd == "check" else ["prepare", "-q", str(ds), str(out)]
    assert main(argv) == 2
    _one_error_line(capsys, "dataset.json", "points outside the dataset folder")
    assert not out.exists()


def test_output_not_writable(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    blocker = tmp_path / "afile.txt"
    blocker.write_text("not a folder")
    out = blocker / "cache"
    assert main(["prepare", "-q", str(ds), str(out)]) == 2
    _one_error_line(capsys, "afile.txt", "cannot create output folder")
    assert blocker.read_text() == "not a folder"


def test_output_write_fails_midway(tmp_path: Path, capsys, monkeypatch) -> None:
    """A write error (e.g. disk full) is a one-line error too, and the new cache folder is removed."""
    import lungtumor.preprocessing.prepare as prep_mod

    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "cache"

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(out / "cases" / "c0_seg.npy"))

    monkeypatch.setattr(prep_mod.np, "save", full)
    assert main(["prepare", "-q", str(ds), str(out)]) == 2
    _one_error_line(capsys, "c0_seg.npy", "No space left on device")
    assert not out.exists()


def test_dataset_is_a_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "data.nii.gz"
    f.write_bytes(b"x")
    assert main(["check", "-q", str(f)]) == 2
    _one_error_line(capsys, "data.nii.gz", "not a folder")
