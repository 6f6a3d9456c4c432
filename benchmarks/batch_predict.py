"""Peak memory of ``lungtumor predict`` against the number of cases in one call.

Writes N small phantoms (default 96x96, 24 slices), then runs ``lungtumor predict FOLDER`` once per case
count in a fresh child process and reads the child's peak RSS (``ru_maxrss`` from ``os.wait4``). Memory must
stay flat: one case at a time is held in memory, whatever the batch size.

    python benchmarks/batch_predict.py                      # trains a tiny model first
    python benchmarks/batch_predict.py --model RUN_DIR --counts 10 25 50
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_YAML = """\
preset: demo
prep: {size: [64, 64], spacing_mm: 5.0}
model: {base_channels: 4, depth: 2}
train: {epochs: 1, batch_size: 4, max_steps_per_epoch: 2, val_every_n_epochs: 1}
"""


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "lungtumor"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lungtumor"]


def _run(args: list[str]) -> None:
    subprocess.run(_cli() + args, check=True, stdout=subprocess.DEVNULL)


def tiny_model(work: Path) -> Path:
    """A 1-epoch, 4-channel model on 4 phantoms (the benchmark measures memory, not accuracy)."""
    cfg = work / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    _run(
        [
            "synth",
            str(work / "ds"),
            "--cases",
            "4",
            "--test-cases",
            "0",
            "--matrix",
            "64",
            "--slices",
            "16",
            "-q",
        ]
    )
    _run(["prepare", str(work / "ds"), str(work / "cache"), "--config", str(cfg), "--folds", "0", "-q"])
    _run(["train", str(work / "cache"), "--out", str(work / "run"), "--config", str(cfg), "-q"])
    return work / "run"


def write_phantoms(folder: Path, n: int, matrix: int, slices: int) -> list[Path]:
    from lungtumor.data.phantom import make_case
    from lungtumor.imaging.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"ph_{i:03d}.nii.gz"
        if not p.exists():
            write_volume(make_case(1000 + i, matrix=matrix, slices=slices)[0], p)
        paths.append(p)
    return paths


def peak_rss_of_predict(inputs: Path, model: Path, out: Path) -> tuple[float, float, int]:
    """(peak RSS MiB, wall seconds, exit code) of one ``lungtumor predict`` child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        _cli() + ["predict", str(inputs), "--model", str(model), "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--matrix", type=int, default=96)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--model", type=Path, help="checkpoint or run folder (default: train a tiny one)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lt_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model or tiny_model(work)
        pool = write_phantoms(work / "pool", max(args.counts), args.matrix, args.slices)
        rows = []
        for n in args.counts:
            folder = work / f"in_{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for p in pool[:n]:
                (folder / p.name).symlink_to(p)
            rss, wall, rc = peak_rss_of_predict(folder, model, work / f"out_{n}")
            if rc != 0:
                raise SystemExit(f"predict failed for {n} cases (exit code {rc})")
            rows.append((n, rss, wall))
            print(f"{n} cases: peak RSS {rss:.0f} MiB, {wall:.1f} s", file=sys.stderr)
        print(
            f"lungtumor predict, {args.matrix}x{args.matrix}x{args.slices} phantoms, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        print("| cases | peak RSS (MiB) | wall (s) | s/case |")
        print("| ---: | ---: | ---: | ---: |")
        for n, rss, wall in rows:
            print(f"| {n} | {rss:.0f} | {wall:.1f} | {wall / n:.2f} |")
        growth = rows[-1][1] - rows[0][1]
        print(f"\npeak RSS growth from {rows[0][0]} to {rows[-1][0]} cases: {growth:+.0f} MiB")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
