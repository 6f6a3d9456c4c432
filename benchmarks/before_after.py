"""Before/after a refactor, side by side on one machine in one run: the demo's held-out numbers and
``predict_speed.py``, for this tree and an older commit's tree.

    git worktree add /tmp/lt_old 9a4b200
    python benchmarks/before_after.py --old /tmp/lt_old [--demo] [--rounds 2] [--model CKPT] [--out DIR]

The old tree runs from its own ``src/`` (PYTHONPATH) with this venv's libraries. ``--demo`` runs
``lungtumor demo`` once per tree (about 7-9 min each on 2 cores) and compares ``summary.json``'s held-out
numbers; predict speed alternates old/new ``--rounds`` times so that drift of the machine hits both.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

NEW = Path(__file__).resolve().parents[1]


def _env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree / "src")
    return env


def run_demo(tree: Path, out: Path) -> dict:
    """Run ``lungtumor demo`` from ``tree`` into ``out``; its evaluation summary and wall time."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "lungtumor", "demo", "--out", str(out), "-q"]
    subprocess.run(cmd, env=_env(tree), check=True, capture_output=True, text=True)
    found = sorted(out.rglob("evaluation_summary.json"))
    if not found:
        raise SystemExit(f"{out}: the demo wrote no evaluation_summary.json")
    summary = json.loads(found[0].read_text())["summary"]
    summary["_wall_s"] = time.perf_counter() - t0
    summary["_pred_dir"] = found[0].parent
    return summary


def demo_rows(s: dict) -> dict[str, str]:
    """The held-out figures of one demo summary, as table cells."""
    les = s["lesions"]
    return {
        "Dice mean / median": f"{s['dice']['mean']:.3f} / {s['dice']['median']:.3f}",
        "NSD (2 mm) mean": f"{s['nsd']['mean']:.3f}",
        "HD95 mean / median (mm)": f"{s['hd95_mm']['mean']:.3g} / {s['hd95_mm']['median']:.3g}",
        "lesions found, FP components": f"{les['n_found']}/{les['n_gt']}, {les['n_fp']}",
        "wall time (s)": f"{s['_wall_s']:.0f}",
    }


def same_run(before: Path, after: Path) -> tuple[bool, bool]:
    """(every tensor of the two runs' best.ckpt equal, every held-out mask byte-identical)."""
    ck = [torch.load(d.parent / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
          for d in (before, after)]  # fmt: skip
    tensors = [(k, n) for k in ("state_dict", "lungtumor_nodule") if k in ck[0] for n in ck[0][k]]
    weights = all(k in ck[1] and torch.equal(ck[0][k][n], ck[1][k][n]) for k, n in tensors)
    masks = [{f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in d.glob("*_tumour.nii.gz")}
             for d in (before, after)]  # fmt: skip
    return weights, bool(masks[0]) and masks[0] == masks[1]


def predict_speed(tree: Path, out: Path, models: list[Path]) -> list[dict]:
    script = tree / "benchmarks" / "predict_speed.py"
    extra = [a for m in models for a in ("--model", str(m))]
    subprocess.run([sys.executable, str(script), "--out", str(out), *extra], env=_env(tree), check=True)
    return json.loads((out / "predict_speed.json").read_text())


def _cell(d: dict[str, list[float]]) -> str:
    runs = ", ".join(f"{x:.2f}" for x in d["s"])
    return f"{statistics.median(d['s']):.2f} s ({runs}), +{max(d['mb']):.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="the older tree (a git worktree)")
    ap.add_argument("--demo", action="store_true", help="also run the demo in both trees")
    ap.add_argument("--rounds", type=int, default=2, help="predict_speed rounds per tree (alternating)")
    ap.add_argument(
        "--model",
        type=Path,
        action="append",
        default=[],
        help="trained checkpoint(s) for predict_speed (an untrained model makes huge masks: time a trained one)",
    )
    ap.add_argument("--out", type=Path, default=Path("/tmp/lt_before_after"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    trees = {"before": a.old.resolve(), "after": NEW}
    print("| what | before | after |\n| --- | --- | --- |")
    if a.demo:
        res = {k: run_demo(t, a.out / f"demo_{k}") for k, t in trees.items()}
        rows = {k: demo_rows(v) for k, v in res.items()}
        for name in rows["before"]:
            print(f"| demo {name} | {rows['before'][name]} | {rows['after'][name]} |", flush=True)
        weights, masks = same_run(res["before"]["_pred_dir"], res["after"]["_pred_dir"])
        print(f"| demo: identical weights / identical masks | {weights} | {masks} |", flush=True)
    times: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in range(a.rounds):
        for k, t in trees.items():
            for row in predict_speed(t, a.out / f"speed_{k}_{r}", a.model):
                key = (row["model"], row["precision"], k)
                d = times.setdefault(key, {"s": [], "mb": []})
                d["s"].append(row.get("seconds", float("nan")))
                d["mb"].append(row.get("extra_rss_mb", float("nan")))
    for model, prec in sorted({(m, p) for m, p, _ in times}):
        b, f = times[(model, prec, "before")], times[(model, prec, "after")]
        print(f"| predict {model} {prec} | {_cell(b)} | {_cell(f)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
