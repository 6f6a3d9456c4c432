"""What one config change does to held-out Dice: train a preset with overrides, then predict and score test sets.

    python benchmarks/preset_sweep.py NAME --cache CACHE --test DIR [--test DIR ...] --out OUT
        [--preset demo] [--set train.lr=1e-3 ...] [--threads N] [--tta]

CACHE is a `lungtumor prepare` cache (the training and validation cases); each DIR is a `lungtumor synth` folder
whose imagesTs/labelsTs are scored (images in DIR/img and labels in DIR/gt work too). Each run trains with the
preset plus the `--set` overrides (dotted config keys, YAML values), predicts every test image with the run's
best checkpoint and the checkpoint's postprocessing, and scores it with `lungtumor evaluate`. Prints one markdown
row (Dice mean / median, lesions found, FP per case, found by lesion size, per test set) and appends a JSON line
to OUT/results.jsonl. Two runs at a time with `--threads 1` each give the 2-core machine's full throughput; the
Dice columns do not depend on load (fixed steps), the seconds do. Session 3 setup (BENCHMARKS.md):

    lungtumor synth /tmp/d0 --cases 32 --test-cases 8 --seed 0      # the demo's own data (its 8 held-out cases)
    lungtumor synth /tmp/d1 --cases 0 --test-cases 16 --seed 11     # 16 more held-out phantoms
    lungtumor prepare /tmp/d0 /tmp/cache0 --preset demo         # as the demo prepares it (29/3 split)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def apply_override(cfg: object, key: str, value: str) -> None:
    """Set ``a.b.c`` = YAML-parsed ``value`` on a nested dataclass config (tuples stay tuples)."""
    *path, last = key.split(".")
    obj = cfg
    for p in path:
        obj = getattr(obj, p)
    if not dataclasses.is_dataclass(obj) or not hasattr(obj, last):
        raise SystemExit(f"--set {key}: no such config key")
    v = yaml.safe_load(value)
    setattr(obj, last, tuple(v) if isinstance(getattr(obj, last), tuple) else v)


def score(run: Path, test: Path, out: Path, tta: bool) -> dict:
    """Predict and evaluate one test folder; returns the summary numbers of the row."""
    from lungtumor.inference import PredictOptions, predict_paths
    from lungtumor.metrics import evaluate_dirs

    img, gt = (test / "imagesTs", test / "labelsTs") if (test / "imagesTs").is_dir() else (test / "img", test / "gt")
    predict_paths([img], run, out, PredictOptions(progress=False, measure=False, tta=tta))
    a = evaluate_dirs(out, gt, out_dir=out).aggregate
    return {
        "dice": round(a["dice"]["mean"], 3),
        "median": round(a["dice"]["median"], 3),
        "found": f"{a['lesions']['n_found']}/{a['lesions']['n_gt']}",
        "fp_per_case": round(a["fp_per_case"]["mean"], 2),
        "by_size": {k: f"{v['n_found']}/{v['n_gt']}" for k, v in a["lesions_by_size"].items() if v["n_gt"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--test", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tta", action="store_true", help="mirror TTA at predict")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from lungtumor.config import load_config
    from lungtumor.training import train

    cfg = load_config(None, a.preset)
    for kv in a.set:
        key, _, value = kv.partition("=")
        apply_override(cfg, key, value)
    out = a.out / a.name
    t0 = time.perf_counter()
    train(a.cache, out / "run", cfg, resume=False, progress=False)
    res = {"name": a.name, "preset": a.preset, "set": a.set, "train_s": round(time.perf_counter() - t0)}
    for i, test in enumerate(a.test):
        res[test.name or f"test{i}"] = score(out / "run", test, out / f"pred_{i}", a.tta)
    with (a.out / "results.jsonl").open("a") as f:
        f.write(json.dumps(res) + "\n")
    cells = [
        f"{r['dice']:.3f} / {r['median']:.3f}, {r['found']}, {r['fp_per_case']:.2f} FP, "
        + " ".join(f"{k} {v}" for k, v in r["by_size"].items())
        for r in (res[t.name or f"test{i}"] for i, t in enumerate(a.test))
    ]
    print(f"| {a.name} | {' '.join(a.set) or '-'} | {res['train_s']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
