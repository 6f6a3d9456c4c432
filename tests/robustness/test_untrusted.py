"""Untrusted files: checkpoints never run code, names from inputs never write outside --out, reports escape
every string from input files; a bad case in a batch is reported while the others are written."""

from __future__ import annotations

import inspect
import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.core.paths import unique_stems
from lungtumor.data.msd import load_dataset
from lungtumor.imaging.io import read_mask, read_volume, write_volume
from lungtumor.imaging.volume import Volume

from ._util import one_error_line, run_cli, run_console


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_checkpoint_uses_weights_only() -> None:
    from lungtumor.inference import checkpoint

    src = inspect.getsource(checkpoint.read_checkpoint)
    assert "weights_only=True" in src


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_in_process(tmp_path: Path, capsys, tiny_dataset, how: str) -> None:
    marker = Path(f"/tmp/pwned_{uuid.uuid4().hex}")
    ckpt = tmp_path / "model.ckpt"
    payload = {"hyper_parameters": {"lungtumor": {}}, "state_dict": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    ct = next((tiny_dataset / "imagesTs").glob("*.nii.gz"))
    rc, _, err = run_cli(capsys, "predict", ct, "--model", ckpt, "--out", tmp_path / "out", "-q")
    one_error_line(err, "model.ckpt", "refused", "unsafe")
    assert rc == 2
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_malicious_checkpoint_console_script(tmp_path: Path, tiny_dataset) -> None:
    """The real console script behaves like main(): one line, exit 2, the payload never runs."""
    marker = Path(f"/tmp/pwned_{uuid.uuid4().hex}")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": {"lungtumor": {}}, "state_dict": _Evil(marker)}, ckpt)
    ct = next((tiny_dataset / "imagesTs").glob("*.nii.gz"))
    proc = run_console("predict", ct, "--model", ckpt, "--out", tmp_path / "out", "-q")
    one_error_line(proc.stderr, "model.ckpt", "refused", "unsafe")
    assert proc.returncode == 2
    assert not marker.exists()


def test_console_script_bad_label_matches_in_process(tmp_path: Path, capsys) -> None:
    from .test_bad_input import Fx, label_values_012

    bad = label_values_012(Fx(None, tmp_path))
    rc, _, err = run_cli(capsys, *bad.argv)
    proc = run_console(*bad.argv)
    assert (proc.returncode, proc.stderr) == (rc, err) == (2, err)
    one_error_line(proc.stderr, *bad.needles)


EVIL_NAMES = ["..", "<script>alert(1)<", '<img src=x onerror="alert(2)">', "a\\..\\..\\evil"]


def test_hostile_input_names_stay_inside_out_and_are_escaped(tmp_path: Path, capsys, tiny_dataset, tiny_run):
    src = tmp_path / "inputs"
    src.mkdir()
    ct = next((tiny_dataset / "imagesTs").glob("*.nii.gz"))
    for name in EVIL_NAMES:
        (src / f"{name}.nii.gz").symlink_to(ct)
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    hidden = src / "...nii.gz"  # case name "..": a folder listing skips hidden files, so name it directly
    rc, stdout, err = run_cli(
        capsys, "predict", src, hidden, "--model", tiny_run, "--out", out, "--report", "-q"
    )
    assert rc == 0, err
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created if p != out.parent), created
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert len(list(out.glob("*_tumour.nii.gz"))) == len(EVIL_NAMES)
    for html in out.glob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "<script>alert(1)" not in text and "<img src=x" not in text
    assert any("&lt;script&gt;alert(1)" in h.read_text(encoding="utf-8") for h in out.glob("*.html"))


def test_dataset_case_named_dotdot_never_writes_outside(tmp_path: Path, capsys, tiny_dataset) -> None:
    import json
    import shutil

    ds = shutil.copytree(tiny_dataset, tmp_path / "data")
    doc = json.loads((ds / "dataset.json").read_text())
    doc["training"][0] = {"image": "../../evil", "label": "../../evil"}
    (ds / "dataset.json").write_text(json.dumps(doc))
    rc, _, err = run_cli(capsys, "prepare", ds, tmp_path / "x" / "cache", "-q")
    one_error_line(err, "training[0]", "points outside the dataset folder")
    assert rc == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_batch_with_a_bad_case_writes_the_others(tmp_path: Path, capsys, tiny_dataset, tiny_run) -> None:
    """12 inputs, the 7th corrupt: exit 2, the bad one named in one error line, the other 11 masks written."""
    src = tmp_path / "batch"
    src.mkdir()
    cts = sorted((tiny_dataset / "imagesTr").glob("*.nii.gz")) + sorted(
        (tiny_dataset / "imagesTs").glob("*.nii.gz")
    )
    for i in range(12):
        if i == 6:
            (src / "case_06.nii.gz").write_bytes(cts[0].read_bytes()[:200])
        else:
            (src / f"case_{i:02d}.nii.gz").symlink_to(cts[i % len(cts)])
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "predict", src, "--model", tiny_run, "--out", out, "-q")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "case_06.nii.gz" in lines[0] and "truncated" in lines[0], err
    assert lines[1] == f"error: 1 of 12 cases failed; the other 11 were written to {out}"
    masks = sorted(p.name for p in out.glob("*_tumour.nii.gz"))
    assert len(masks) == 11 and "case_06_tumour.nii.gz" not in masks
    assert not list(out.glob("case_06*"))
    for m in masks:
        assert read_mask(out / m).array.dtype == np.uint8
    case_lines = [ln for ln in stdout.strip().splitlines() if not ln.startswith(("model ", "warning: "))]
    assert len(case_lines) == 11, stdout  # one line per written case, after the model's line and warning


# ----------------------------------------------------------------------------- symlinks and output names


def test_dataset_of_symlinks_is_read(tmp_path: Path, capsys, tiny_dataset) -> None:
    """nnU-Net users link their raw data into imagesTr/labelsTr: check and prepare read it, by the links' names."""
    ds = tmp_path / "linked"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
        for i, f in enumerate(sorted((tiny_dataset / sub).glob("*.nii.gz"))):
            (ds / sub / f"lung_{i:03d}.nii.gz").symlink_to(f)
    rc, out, err = run_cli(capsys, "check", ds, "-q")
    assert rc == 0, err
    assert "lung_000" in out
    cases = load_dataset(ds).cases
    assert [c.name for c in cases] == [f"lung_{i:03d}" for i in range(len(cases))]
    assert all(c.image.is_symlink() for c in cases)


def _mask_file(path: Path) -> Path:
    m = np.zeros((6, 16, 18), np.uint8)
    m[2:4, 4:8, 4:9] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(Volume(m, spacing=(0.8, 0.8, 2.5)), path)


def test_outputs_replace_symlinks_and_never_write_through_them(tmp_path: Path, capsys) -> None:
    mask = _mask_file(tmp_path / "in" / "c1.nii.gz")
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "c1_lesions.json").symlink_to(secret)  # an existing link at an output path
    (out / f".tmp-{os.getpid()}-c1_lesions.csv").symlink_to(secret)  # planted at the temporary name
    rc, _, err = run_cli(capsys, "measure", mask, "-o", out)
    assert rc == 0, err
    assert secret.read_text() == "keep me"
    for name in ("c1_lesions.json", "c1_lesions.csv"):
        assert not (out / name).is_symlink() and (out / name).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_output_folder_that_is_a_symlink_is_used(tmp_path: Path, capsys) -> None:
    mask = _mask_file(tmp_path / "in" / "c1.nii.gz")
    real = tmp_path / "real_out"
    real.mkdir()
    link = tmp_path / "out_link"
    link.symlink_to(real, target_is_directory=True)
    rc, _, err = run_cli(capsys, "measure", mask, "--out", link)
    assert rc == 0, err
    assert (real / "c1_lesions.json").is_file() and link.is_symlink()


def test_unique_stems_are_distinct_and_deterministic() -> None:
    items = [
        ("ct", Path("a/ct.nii.gz")),
        ("ct", Path("b/ct.nii.gz")),
        ("CT", Path("c/CT.nii.gz")),  # the same name on a case-insensitive file system
        ("lung", Path("a/lung.nii.gz")),
        ("ct", Path("x/a/ct.nii.gz")),  # same parent name as the first
        ("ct_a", Path("d/ct_a.nii.gz")),
    ]
    stems = unique_stems(items)
    assert stems == ["ct_a", "ct_b", "CT_c", "lung", "ct_a_2", "ct_a_3"]
    assert len({s.casefold() for s in stems}) == len(stems)
    assert unique_stems(items) == stems
    assert unique_stems([("..", Path("p/...nii.gz"))]) == ["__"]


def test_predict_two_inputs_with_one_name_get_distinct_outputs(
    tmp_path: Path, capsys, tiny_dataset, tiny_run
):
    cts = sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))[:2]
    for folder, ct in zip(("site_a", "site_b"), cts, strict=True):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ct.nii.gz").symlink_to(ct)
    out = tmp_path / "out"
    argv = ["predict", "-i", tmp_path / "site_a" / "ct.nii.gz", tmp_path / "site_b", "--model", tiny_run]
    rc, stdout, err = run_cli(capsys, *argv, "-o", out, "-q")
    assert rc == 0, err
    masks = sorted(p.name for p in out.glob("*_tumour.nii.gz"))
    assert masks == ["ct_site_a_tumour.nii.gz", "ct_site_b_tumour.nii.gz"]
    assert sorted(p.name for p in out.glob("*_lesions.json")) == [
        "ct_site_a_lesions.json",
        "ct_site_b_lesions.json",
    ]
    for mask, ct in zip(masks, cts, strict=True):  # each output on its own input's grid
        read_mask(out / mask, reference=read_volume(ct))
    assert len(stdout.strip().splitlines()) >= 2
