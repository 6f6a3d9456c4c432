"""Cases per minute and peak memory per process of ``lungtumor predict`` over many CTs, with 1 and 2 processes.

Writes N small phantoms with ``lungtumor synth`` (default 96x96, 24 slices), then runs ``lungtumor predict
FOLDER --devices P`` once per process count P and case count in a fresh child process, side by side (for each
case count, every P in turn). Reports wall time (start-up and model loading included), cases per minute, and
each process's peak RSS: the child's ``ru_maxrss`` (``os.wait4``) for one process, each rank's
``peak_rss_mib`` from the merged manifest (``processes.ranks``) for several. Memory must stay flat from 10 to
50 cases: a process holds one case at a time. Prints a Markdown table.

    python benchmarks/batch_predict.py                                  # trains a tiny model first
    python benchmarks/batch_predict.py --model RUN_DIR --counts 10 50 --processes 1 2
    python benchmarks/batch_predict.py --model tests/fixtures/legacy_ckpt/demo2d.ckpt --counts 4 --processes 1 2
"""

from __future__ import annotations

import argparse
import json
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

#: Set by a cluster or an outer launcher; each predict here starts its own processes.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "lungtumor"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lungtumor"]


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_ENV and not k.startswith(("SLURM_", "TORCHELASTIC"))
    }


def _run(args: list[str]) -> None:
    subprocess.run(_cli() + args, check=True, stdout=subprocess.DEVNULL, env=_env())


def tiny_model(work: Path) -> Path:
    """A 1-epoch, 4-channel model on 4 phantoms (the benchmark measures throughput and memory, not accuracy)."""
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
    """``n`` test phantoms from ``lungtumor synth`` (seed 7), sorted by name."""
    _run(
        ["synth", str(folder), "--cases", "0", "--test-cases", str(n), "--seed", "7"]
        + ["--matrix", str(matrix), "--slices", str(slices), "-q"]
    )
    return sorted((folder / "imagesTs").glob("*.nii.gz"))


def run_predict(inputs: Path, model: Path, out: Path, processes: int) -> tuple[float, list[float], int]:
    """(wall seconds, peak RSS MiB of each process, exit code) of one ``lungtumor predict`` child."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = _cli() + ["predict", str(inputs), "--model", str(model), "--out", str(out), "--device", "cpu", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd + ["--devices", str(processes)], stdout=subprocess.DEVNULL, env=_env())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if processes == 1:
        return wall, [usage.ru_maxrss / 1024.0], proc.returncode
    manifest = out / "predict_manifest.json"
    ranks = json.loads(manifest.read_text())["processes"]["ranks"] if manifest.is_file() else []
    return wall, [float(r["peak_rss_mib"] or 0.0) for r in ranks], proc.returncode


def _mib(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
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
            for procs in args.processes:
                wall, rss, rc = run_predict(folder, model, work / f"out_{n}_{procs}", procs)
                if rc != 0:
                    raise SystemExit(
                        f"predict failed for {n} cases with {procs} process(es) (exit code {rc})"
                    )
                rows.append((procs, n, wall, rss))
                print(
                    f"{procs} process(es), {n} cases: {wall:.1f} s, peak RSS {_mib(rss)} MiB", file=sys.stderr
                )
        print(
            f"lungtumor predict, {args.matrix}x{args.matrix}x{args.slices} phantoms, model {model.name}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        print("\n| processes | cases | wall (s) | cases/min | peak RSS per process (MiB) |")
        print("| ---: | ---: | ---: | ---: | --- |")
        for procs, n, wall, rss in rows:
            print(f"| {procs} | {n} | {wall:.1f} | {60.0 * n / wall:.1f} | {_mib(rss)} |")
        lo, hi = min(args.counts), max(args.counts)
        print()
        for procs in args.processes:
            a = next(r[3] for r in rows if r[0] == procs and r[1] == lo)
            b = next(r[3] for r in rows if r[0] == procs and r[1] == hi)
            if lo != hi and a and b:
                print(
                    f"{procs} process(es): peak RSS growth from {lo} to {hi} cases {max(b) - max(a):+.0f} MiB"
                )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
