"""A crash mid-way loses nothing: ``prepare``, ``train`` and ``predict`` are killed with SIGKILL at a seeded
random moment once they have started writing, then run again; the result equals an uninterrupted run, and
no file under its final name is ever incomplete (temporary files are hidden ``.tmp-*`` names).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.imaging.io import read_mask

from ._util import console_script, subprocess_env

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [str(console_script()), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )


def _kill_after(
    proc: subprocess.Popen, started: Callable[[], bool], delay: float, timeout: float = 120
) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``started()`` first holds; True if it was still running."""
    end = time.monotonic() + timeout
    while not started() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not alive:
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else proc.returncode
    return alive


def _left_running(marker: str, wait_s: float = 10.0) -> list[str]:
    """Command lines of processes still running with ``marker`` in them after up to ``wait_s`` s (Linux /proc;
    empty elsewhere): a killed command must not leave worker processes behind."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for d in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (d / "stat").read_text().split(") ", 1)[1][0]
            except (OSError, IndexError):
                continue
            if marker in cmd and state != "Z":
                left.append(cmd)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _final_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]


def _assert_nothing_torn(root: Path) -> None:
    """Every file under a final name loads."""
    from lungtumor.inference.checkpoint import load_checkpoint

    for p in _final_files(root):
        if p.suffix == ".npy":
            np.load(p, mmap_mode="r")
        elif p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.name.endswith(".nii.gz"):
            read_mask(p)
        elif p.suffix == ".ckpt":
            load_checkpoint(p)


def test_prepare_killed_then_rerun_gives_the_same_bytes(
    tmp_path, tiny_dataset, tiny_config, tiny_cache, capsys
):
    rng = random.Random(11)
    out = tmp_path / "cache"
    args = ["prepare", tiny_dataset, out, "--preset", "demo", "--config", tiny_config, "--folds", "0", "-q"]
    proc = _start(*args)
    _kill_after(proc, lambda: any((out / "cases").glob("*.npy")) or any((out / ".state").glob("*")),
                rng.uniform(0.0, 0.4))  # fmt: skip
    _assert_nothing_torn(out)
    assert main([str(a) for a in args]) == 0
    ref = {p.relative_to(tiny_cache): p.read_bytes() for p in _final_files(tiny_cache / "cases")}
    got = {p.relative_to(out): p.read_bytes() for p in _final_files(out / "cases")}
    assert got.keys() == ref.keys() and all(got[k] == ref[k] for k in ref)
    for name in ("cache.json", "splits.json"):
        assert (out / name).read_bytes() == (tiny_cache / name).read_bytes()


def test_train_killed_then_resumed_finishes_the_same_run(tmp_path, tiny_cache, tiny_config, tiny_run):
    from lungtumor.inference.checkpoint import load_checkpoint

    rng = random.Random(12)
    run = tmp_path / "run"
    args = ["train", tiny_cache, "--out", run, "--config", tiny_config, "-q"]
    proc = _start(*args)
    killed = _kill_after(proc, lambda: (run / "checkpoints" / "last.ckpt").exists(), rng.uniform(0.0, 1.5))
    _assert_nothing_torn(run)
    assert _left_running(str(run)) == []  # e.g. the detector's candidate workers die with their parent
    resume = ["--resume"] if (run / "checkpoints" / "last.ckpt").exists() else []
    if killed or resume:
        assert main([str(a) for a in [*args, *resume]]) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    ref_rows = (tiny_run / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == ref_rows[-1].split(",")[0]  # the same final epoch
    assert len(rows) == len(ref_rows)
    loaded = load_checkpoint(run)
    assert loaded.path.name == "best.ckpt"
    _assert_nothing_torn(run)


def test_predict_killed_then_rerun_gives_the_same_masks(tmp_path, tiny_dataset, tiny_run, capsys):
    src = tmp_path / "cts"
    src.mkdir()
    cts = sorted((tiny_dataset / "imagesTr").glob("*.nii.gz"))[:2] + sorted(
        (tiny_dataset / "imagesTs").glob("*")
    )
    for p in cts:
        (src / p.name).symlink_to(p)
    out, ref = tmp_path / "pred", tmp_path / "ref"
    args = ["predict", src, "--model", tiny_run, "--out", out, "-q"]
    proc = _start(*args)
    _kill_after(proc, lambda: any(out.glob("*_tumour.nii.gz")), random.Random(13).uniform(0.0, 0.5))
    _assert_nothing_torn(out)
    assert main([str(a) for a in args]) == 0
    assert main(["predict", str(src), "--model", str(tiny_run), "--out", str(ref), "-q"]) == 0
    masks = sorted(p.name for p in ref.glob("*_tumour.nii.gz"))
    assert len(masks) == 4 and masks == sorted(p.name for p in out.glob("*_tumour.nii.gz"))
    for name in masks:
        a, b = read_mask(out / name), read_mask(ref / name)
        assert a.same_grid(b) and np.array_equal(a.array, b.array)
    capsys.readouterr()
