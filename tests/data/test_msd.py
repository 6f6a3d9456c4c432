"""The dataset model (dataset.json or imagesTr/labelsTr) and ``lungtumor check``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.core.errors import InputError
from lungtumor.data.msd import check_dataset, format_check_report, load_dataset
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

SPACING = (0.8, 0.8, 2.5)


def _write_case(root: Path, name: str, *, img_dir="imagesTr", lab_dir="labelsTr", suffix="") -> None:
    rng = np.random.default_rng(len(name))
    hu = rng.integers(-1000, 300, size=(6, 16, 18)).astype(np.int16)
    mask = np.zeros(hu.shape, np.uint8)
    mask[2:4, 5:9, 6:10] = 1  # 32 voxels
    vol = Volume(hu, SPACING, (-10.0, 5.0, 100.0))
    (root / img_dir).mkdir(parents=True, exist_ok=True)
    (root / lab_dir).mkdir(parents=True, exist_ok=True)
    write_volume(vol, root / img_dir / f"{name}{suffix}.nii.gz")
    write_volume(vol.with_array(mask), root / lab_dir / f"{name}.nii.gz")


def _json_ds(root: Path, names=("lung_001", "lung_002"), **extra) -> Path:
    for n in names:
        _write_case(root, n)
    data = {
        "name": "Lung",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_load_dataset_json(tmp_path: Path) -> None:
    _write_case(tmp_path, "lung_009", img_dir="imagesTs", lab_dir="labelsTs")
    ds = load_dataset(_json_ds(tmp_path, names=("lung_002", "lung_001"), test=["./imagesTs/lung_009.nii.gz"]))
    assert ds.source == "dataset.json"
    assert [c.name for c in ds.cases] == ["lung_001", "lung_002"]
    assert ds.cases[0].image == (tmp_path / "imagesTr" / "lung_001.nii.gz").resolve()
    assert ds.test == [(tmp_path / "imagesTs" / "lung_009.nii.gz").resolve()]


def test_load_dataset_folders_match_by_name(tmp_path: Path) -> None:
    _write_case(tmp_path, "a")
    _write_case(tmp_path, "b", suffix="_0000")  # nnU-Net channel suffix
    (tmp_path / "imagesTr" / "._a.nii.gz").write_bytes(b"\0" * 10)  # macOS junk is ignored
    _write_case(tmp_path, "t", img_dir="imagesTs", lab_dir="labelsTs")
    ds = load_dataset(tmp_path)
    assert ds.source == "folders"
    assert [(c.name, c.label.name) for c in ds.cases] == [("a", "a.nii.gz"), ("b", "b.nii.gz")]
    assert [t.name for t in ds.test] == ["t.nii.gz"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "invalid JSON at line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"labels": {}}', "missing key 'training'"),
        ('{"training": [{"image": "./imagesTr/x.nii.gz"}]}', r"training\[0\]: missing key 'label'"),
        ('{"training": []}', "no training cases"),
        ('{"training": "x"}', "must be a list"),
        ('{"training": [], "modality": {"0": "CT", "1": "PET"}}', "one CT channel"),
    ],
)
def test_bad_dataset_json(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(InputError, match=problem) as e:
        load_dataset(tmp_path)
    assert "dataset.json" in str(e.value)


def test_duplicate_and_empty(tmp_path: Path) -> None:
    root = _json_ds(tmp_path / "d", names=("lung_001",))
    data = json.loads((root / "dataset.json").read_text())
    data["training"].append(dict(data["training"][0]))
    (root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="duplicate case 'lung_001'"):
        load_dataset(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dataset.json and no imagesTr"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "e2" / "imagesTr").mkdir(parents=True)
    with pytest.raises(InputError, match="no training cases"):
        load_dataset(tmp_path / "e2")
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_paths_outside_the_dataset_are_refused(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    _write_case(outside, "evil")
    root = _json_ds(tmp_path / "ds", names=("lung_001",))
    data = json.loads((root / "dataset.json").read_text())
    img = "../outside/imagesTr/evil.nii.gz"
    if kind == "absolute":
        img = str(outside / "imagesTr" / "evil.nii.gz")
    data["training"].append({"image": img, "label": "./labelsTr/lung_001.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="points outside the dataset folder"):
        load_dataset(root)


@pytest.mark.parametrize("kind", ["symlink_file", "symlink_dir"])
def test_symlinks_out_of_the_dataset_are_read(tmp_path: Path, kind: str) -> None:
    """A dataset of links to the raw data (as nnU-Net users make them) is read; the case keeps the link's name."""
    outside = tmp_path / "outside"
    _write_case(outside, "raw_scan")
    root = _json_ds(tmp_path / "ds", names=("lung_001",))
    data = json.loads((root / "dataset.json").read_text())
    if kind == "symlink_file":
        os.symlink(outside / "imagesTr" / "raw_scan.nii.gz", root / "imagesTr" / "lung_002.nii.gz")
        os.symlink(outside / "labelsTr" / "raw_scan.nii.gz", root / "labelsTr" / "lung_002.nii.gz")
        entry = {"image": "./imagesTr/lung_002.nii.gz", "label": "./labelsTr/lung_002.nii.gz"}
    else:
        os.symlink(outside / "imagesTr", root / "linked")
        entry = {"image": "./linked/raw_scan.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}
    data["training"].append(entry)
    (root / "dataset.json").write_text(json.dumps(data))
    ds = load_dataset(root)
    names = [c.name for c in ds.cases]
    assert names == (["lung_001", "lung_002"] if kind == "symlink_file" else ["lung_001", "raw_scan"])
    assert all(root in c.image.parents for c in ds.cases)  # the link's path, not its target
    assert check_dataset(root).ok


def test_symlink_out_of_root_in_folder_layout_is_read(tmp_path: Path) -> None:
    _write_case(tmp_path / "outside", "x")
    _write_case(tmp_path / "ds", "a")
    for sub in ("imagesTr", "labelsTr"):
        os.symlink(tmp_path / "outside" / sub / "x.nii.gz", tmp_path / "ds" / sub / "b.nii.gz")
    ds = load_dataset(tmp_path / "ds")
    assert [c.name for c in ds.cases] == ["a", "b"]
    assert ds.cases[1].image == (tmp_path / "ds").resolve() / "imagesTr" / "b.nii.gz"


def test_symlink_inside_root_is_fine(tmp_path: Path) -> None:
    root = _json_ds(tmp_path, names=("lung_001",))
    os.symlink(root / "imagesTr", root / "alias")
    data = json.loads((root / "dataset.json").read_text())
    data["training"][0]["image"] = "alias/lung_001.nii.gz"
    (root / "dataset.json").write_text(json.dumps(data))
    assert load_dataset(root).cases[0].image.name == "lung_001.nii.gz"


def test_check_good_dataset(tmp_path: Path, capsys) -> None:
    root = _json_ds(tmp_path, names=("lung_001", "lung_002"))
    report = check_dataset(root)
    assert report.ok and report.errors == []
    c = report.cases[0]
    assert c.shape == (6, 16, 18) and c.spacing == pytest.approx(SPACING)
    assert c.tumour_ml == pytest.approx(32 * 0.8 * 0.8 * 2.5 / 1000)
    text = format_check_report(report)
    assert "lung_001" in text and "6x16x18" in text and "0.8x0.8x2.5" in text and "all OK" in text
    assert main(["check", "-q", str(root)]) == 0
    out = capsys.readouterr()
    assert "lung_002" in out.out and out.err == ""


def test_check_reports_every_bad_case(tmp_path: Path, capsys) -> None:
    root = _json_ds(tmp_path, names=("lung_001", "lung_002", "lung_003", "lung_004", "lung_005"))
    # lung_002: label values {0, 1, 2}; lung_003: label on another grid; lung_004: image missing;
    # lung_005: NaN voxels in a float image
    ref = Volume(np.zeros((6, 16, 18), np.uint8), SPACING, (-10.0, 5.0, 100.0))
    bad = np.zeros(ref.shape, np.uint8)
    bad[0, 0, 0] = 2
    write_volume(ref.with_array(bad), root / "labelsTr" / "lung_002.nii.gz")
    write_volume(Volume(np.zeros((6, 16, 17), np.uint8), SPACING), root / "labelsTr" / "lung_003.nii.gz")
    (root / "imagesTr" / "lung_004.nii.gz").unlink()
    nan = np.zeros(ref.shape, np.float32)
    nan[1, 1, 1] = np.nan
    write_volume(ref.with_array(nan), root / "imagesTr" / "lung_005.nii.gz")
    report = check_dataset(root)
    assert not report.ok and report.cases[0].error is None
    errs = report.errors
    assert len(errs) == 4
    assert "lung_002.nii.gz: label has values {0, 2}" in errs[0]
    assert "lung_003.nii.gz: label is not on the image grid: shape" in errs[1]
    assert "lung_004.nii.gz: no such file" in errs[2]
    assert "lung_005.nii.gz: image holds 1 NaN" in errs[3]
    assert main(["check", "-q", str(root)]) == 2
    out = capsys.readouterr()
    assert "lung_001" in out.out and "BAD" in out.out and "4 bad" in out.out
    lines = out.err.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("error: ") for ln in lines)


def test_check_folder_layout_missing_label(tmp_path: Path) -> None:
    _write_case(tmp_path, "a")
    _write_case(tmp_path, "b")
    (tmp_path / "labelsTr" / "b.nii.gz").unlink()
    report = check_dataset(tmp_path)
    assert [c.error is None for c in report.cases] == [True, False]
    assert "b.nii.gz: no label with the same name in labelsTr" in report.errors[0]
