"""What one config change does to held-out Dice: train a preset with overrides, then predict and score test sets.

    python benchmarks/preset_sweep.py NAME --cache CACHE --test DIR [--test DIR ...] --out OUT
        [--preset demo] [--set train.lr=1e-3 ...] [--threads N] [--tta] [--device cuda]
        [--train-only | --score-only [--model RUN ...]] [--score-set nodule.tta=true ...]

A 3D preset (`--preset 3d`, model.arch unet3d) trains with the 3D trainer on a 3D cache
(`lungtumor prepare DIR CACHE --preset 3d`). `--train-only` trains and writes OUT/NAME/train.json (several runs can
then train side by side, e.g. on one GPU); `--score-only` scores OUT/NAME/run, or the `--model` runs averaged as
an ensemble, without training. `--score-set KEY=VALUE` scores copies of the checkpoints whose stored config has
that inference setting changed (the same weights, e.g. `nodule.tta=true` or `infer.min_lesion_mm3=200`), in
OUT/NAME/models: give each setting its own NAME (predictions go to OUT/NAME/pred_I).

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
    v, cur = yaml.safe_load(value), getattr(obj, last)
    if isinstance(cur, float) and isinstance(v, (int, str)):
        v = float(v)  # YAML 1.1 reads "1e-3" as a string
    setattr(obj, last, tuple(v) if isinstance(cur, tuple) else v)


def score(
    run: Path | list[Path],
    test: Path,
    out: Path,
    tta: bool,
    device: str = "auto",
    z_ratio: float | None = None,
    precision: str = "auto",
) -> dict:
    """Predict and evaluate one test folder (several runs: their averaged probabilities); the row's numbers.
    ``precision``: predict's "auto", "32" or "bf16"."""
    from lungtumor.evaluation.evaluate import evaluate_dirs
    from lungtumor.workflows.predict import PredictOptions, predict_paths

    img, gt = (
        (test / "imagesTs", test / "labelsTs")
        if (test / "imagesTs").is_dir()
        else (test / "img", test / "gt")
    )
    opts = PredictOptions(progress=False, measure=False, tta=tta, device=device, min_z_extent_ratio=z_ratio)
    opts.precision = precision
    t0 = time.perf_counter()
    res = predict_paths([img], run, out, opts)
    sec = (time.perf_counter() - t0) / max(len(res), 1)
    bad = [r.error for r in res if r.error]
    if bad:
        raise SystemExit(f"predict failed on {len(bad)} case(s): {bad[0]}")
    a = evaluate_dirs(out, gt, out_dir=out).aggregate
    return {
        "dice": round(a["dice"]["mean"], 3),
        "median": round(a["dice"]["median"], 3),
        "found": f"{a['lesions']['n_found']}/{a['lesions']['n_gt']}",
        "fp_per_case": round(a["fp_per_case"]["mean"], 2),
        "by_size": {k: f"{v['n_found']}/{v['n_gt']}" for k, v in a["lesions_by_size"].items() if v["n_gt"]},
        "predict_s_per_case": round(sec, 2),
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
    ap.add_argument("--device", default="auto", help="predict device: auto, cpu, cuda")
    ap.add_argument(
        "--min-z-extent-ratio",
        type=float,
        help="score with this flat-component filter instead of the checkpoint's (pred_I_zR folders)",
    )
    ap.add_argument(
        "--train-only", action="store_true", help="train, write OUT/NAME/train.json, do not score"
    )
    ap.add_argument("--score-only", action="store_true", help="score OUT/NAME/run (or the --model runs)")
    ap.add_argument(
        "--model", type=Path, action="append", default=[], help="run(s) to score; several = ensemble"
    )
    ap.add_argument(
        "--score-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="score with this inference setting (e.g. nodule.tta=true) changed in copies of the checkpoints",
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    out = a.out / a.name
    z = a.min_z_extent_ratio
    res = {"name": a.name, "preset": a.preset, "set": a.set}
    if not a.score_only:
        res.update(train_one(a.cache, out, a.preset, a.set))
        (out / "train.json").write_text(json.dumps(res))
        if a.train_only:
            print(json.dumps(res), flush=True)
            return
    elif (out / "train.json").is_file():
        res.update(json.loads((out / "train.json").read_text()))
    res["min_z_extent_ratio"] = z  # after train.json, whose training run scored nothing
    runs = a.model or [out / "run"]
    if a.model:
        res["models"] = [str(m) for m in a.model]
    if a.score_set:
        res["score_set"] = a.score_set
        runs = [patched_checkpoint(r, a.score_set, out / "models" / f"{i}.ckpt") for i, r in enumerate(runs)]
    for i, test in enumerate(a.test):
        pred = out / (f"pred_{i}" if z is None else f"pred_{i}_z{z:g}")
        res[test.name or f"test{i}"] = score(runs, test, pred, a.tta, a.device, z)
    with (a.out / "results.jsonl").open("a") as f:
        f.write(json.dumps(res) + "\n")
    cells = [
        f"{r['dice']:.3f} / {r['median']:.3f}, {r['found']}, {r['fp_per_case']:.2f} FP, "
        + " ".join(f"{k} {v}" for k, v in r["by_size"].items())
        for r in (res[t.name or f"test{i}"] for i, t in enumerate(a.test))
    ]
    print(
        f"| {a.name}{'' if z is None else f' (flat filter {z:g})'} | {' '.join(res['set'] + a.score_set) or '-'} | {res.get('train_s', '?')} | "
        + " | ".join(cells)
        + " |"
    )


def patched_checkpoint(run: Path, overrides: list[str], dest: Path) -> Path:
    """A copy of ``run``'s best checkpoint (or the .ckpt ``run``; 2D or 3D) at ``dest`` whose stored config has
    the ``KEY=VALUE`` ``overrides`` applied and validated: the same weights, other inference settings."""
    from lungtumor.core.config_io import config_from_dict, to_dict, validate
    from lungtumor.inference.checkpoint import checkpoint_file

    src = checkpoint_file(run)
    ck = torch.load(src, map_location="cpu", weights_only=True)
    stored = ck["hyper_parameters"]["lungtumor"]
    cfg = config_from_dict(stored["config"], str(src))
    for kv in overrides:
        key, _, value = kv.partition("=")
        apply_override(cfg, key, value)
    validate(cfg, f"--score-set {' '.join(overrides)}")
    stored["config"] = to_dict(cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, dest)
    return dest


def train_one(cache: Path, out: Path, preset_name: str, overrides: list[str]) -> dict:
    """Train ``preset_name`` + ``overrides`` on ``cache`` into ``out/run`` (2D or 3D trainer by model.arch)."""
    from lungtumor.core.config_io import load_config

    cfg = load_config(None, preset_name)
    for kv in overrides:
        key, _, value = kv.partition("=")
        apply_override(cfg, key, value)
    t0 = time.perf_counter()
    if cfg.model.arch == "unet3d":
        from lungtumor.training.run import train

        r = train(cache, out / "run", cfg, resume=False, progress=False)
    else:
        from lungtumor.training.run import train

        r = train(cache, out / "run", cfg, resume=False, progress=False)
    return {"train_s": round(time.perf_counter() - t0), "val_dice": round(r.best_dice, 3),
            "best_epoch": r.best_epoch, "epochs": r.epochs}  # fmt: skip


if __name__ == "__main__":
    main()
