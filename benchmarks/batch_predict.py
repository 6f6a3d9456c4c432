"""Cases per minute and peak memory per process of ``lungtumor predict`` over many CTs, with 1 and 2 processes.

Writes N small phantoms with ``lungtumor synth`` (default 96x96, 24 slices), then runs ``lungtumor predict
FOLDER --devices P`` once per process count P and case count in a fresh child process, side by side (for each
case count, every P in turn; with ``--old TREE`` that tree's code right after this one's). Reports wall time
(start-up and model loading included), cases per minute, CPU time / wall time for one process (both cores
busy: near 2; not for several, whose other ranks the child does not wait for), each process's peak RSS (the
child's ``ru_maxrss`` from ``os.wait4`` for one process, each rank's ``peak_rss_mib`` from the merged manifest,
``processes.ranks``, for several) and the load average before and after each run. Memory must stay flat from
10 to 50 cases: a process holds at most three cases at a time (one read, one in the model, one written:
``workflows.stages``). ``--same-case`` makes every case a link to one phantom: the peak then cannot grow with
the phantoms' content (more tumour, more detector candidates), only with the case count. Prints a Markdown table.

    python benchmarks/batch_predict.py                                  # trains a tiny model first
    python benchmarks/batch_predict.py --model RUN_DIR --counts 10 50 --processes 1 2
    python benchmarks/batch_predict.py --model tests/fixtures/legacy_ckpt/demo2d.ckpt --counts 4 --processes 1 2
    python benchmarks/batch_predict.py --model CKPT --old /tmp/oldtree      # an older tree's code beside ours
    python benchmarks/batch_predict.py --model RUN_DIR --counts 10 50 --processes 1 --same-case
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


def run_predict(
    inputs: Path, model: Path, out: Path, processes: int, tree: Path | None = None
) -> tuple[float, float, list[float], int]:
    """(wall seconds, CPU seconds of the child, peak RSS MiB of each process, exit code) of one
    ``lungtumor predict`` child; ``tree``: run that tree's code (its ``src/`` on the path) instead of ours."""
    shutil.rmtree(out, ignore_errors=True)
    env, cli = _env(), _cli()
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "src")
        cli = [sys.executable, "-m", "lungtumor"]
    cmd = cli + ["predict", str(inputs), "--model", str(model), "--out", str(out), "--device", "cpu", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd + ["--devices", str(processes)], stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own (Lightning does not wait for the other ranks)
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    if processes == 1:
        return wall, cpu, [usage.ru_maxrss / 1024.0], proc.returncode
    manifest = out / "predict_manifest.json"
    ranks = json.loads(manifest.read_text())["processes"]["ranks"] if manifest.is_file() else []
    return wall, cpu, [float(r["peak_rss_mib"] or 0.0) for r in ranks], proc.returncode


def cpu_model() -> str:
    """The CPU's model name (as ``lscpu`` prints it), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    ap.add_argument("--old", type=Path, help="an older tree (git worktree) to run beside this one")
    ap.add_argument("--same-case", action="store_true", help="every case a link to one phantom")
    args = ap.parse_args()
    codes: list[tuple[str, Path | None]] = [("new", None)]
    if args.old:
        codes.append((f"old ({args.old.name})", args.old.resolve()))
    work = args.work or Path(tempfile.mkdtemp(prefix="lt_batch_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = args.model or tiny_model(work)
        pool = write_phantoms(
            work / "pool", 1 if args.same_case else max(args.counts), args.matrix, args.slices
        )
        if args.same_case:
            pool = pool[:1] * max(args.counts)  # a reused --work may hold more phantoms
        rows = []
        for n in args.counts:
            folder = work / f"in_{n}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for i, p in enumerate(pool[:n]):
                (folder / f"case_{i:03d}.nii.gz").symlink_to(p)
            for procs in args.processes:
                for code, tree in codes:
                    load = os.getloadavg()[0]
                    wall, cpu, rss, rc = run_predict(folder, model, work / f"out_{n}_{procs}", procs, tree)
                    if rc != 0:
                        raise SystemExit(
                            f"{code}: predict failed for {n} cases, {procs} process(es) (exit {rc})"
                        )
                    rows.append((code, procs, n, wall, cpu, rss, (load, os.getloadavg()[0])))
                    print(f"{code}, {procs} process(es), {n} cases: {wall:.1f} s, peak RSS {_mib(rss)} MiB",
                          file=sys.stderr)  # fmt: skip
        print(
            f"lungtumor predict, {args.matrix}x{args.matrix}x{args.slices} phantoms"
            f"{' (one phantom, repeated)' if args.same_case else ''}, model {model.name}, "
            f"{cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        print(
            "\n| code | processes | cases | wall (s) | cases/min | CPU s / wall s | peak RSS per process (MiB) "
            "| load average (1 min) before / after |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        for code, procs, n, wall, cpu, rss, (l0, l1) in rows:
            ratio = f"{cpu / wall:.2f}" if procs == 1 else "-"  # the other ranks are not the child's to reap
            print(
                f"| {code} | {procs} | {n} | {wall:.1f} | {60.0 * n / wall:.1f} | {ratio} | {_mib(rss)} "
                f"| {l0:.2f} / {l1:.2f} |"
            )
        lo, hi = min(args.counts), max(args.counts)
        print()
        for code, _ in codes:
            for procs in args.processes:
                a = next(r[5] for r in rows if r[:2] == (code, procs) and r[2] == lo)
                b = next(r[5] for r in rows if r[:2] == (code, procs) and r[2] == hi)
                if lo != hi and a and b:
                    print(f"{code}, {procs} process(es): peak RSS growth from {lo} to {hi} cases "
                          f"{max(b) - max(a):+.0f} MiB")  # fmt: skip
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
