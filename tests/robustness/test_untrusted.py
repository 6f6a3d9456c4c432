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

from lungtumor.imaging.io import read_mask

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
    assert len(stdout.strip().splitlines()) == 11
