"""3D preset vs 2D default on held-out phantoms (BENCHMARKS.md, "3D vs 2D").

Usage: python benchmarks/compare_3d_2d.py DATASET OUT [--quick] [--epochs2d N] [--epochs3d N] [--steps3d N]
       [--budget3d GB] [--only 2d|3d]

DATASET is a `lungtumor synth` folder (imagesTs/labelsTs are the held-out phantoms). Each recipe is prepared,
trained (its own cache and run folder under OUT), then every held-out phantom is predicted on its original grid
and scored with lungtumor.evaluation.metrics (raw mask at threshold 0.5, and after removing components < 20 mm3).
Prints one JSON line per recipe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lungtumor.core.presets import preset
from lungtumor.evaluation.evaluate import evaluate_case
from lungtumor.imaging.io import read_mask, read_volume
from lungtumor.inference.checkpoint import load_any
from lungtumor.inference.predictor import Predictor
from lungtumor.postprocessing.filters import remove_small_components


def score(run: Path, data: Path) -> dict:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor(
        [load_any(run)], device=dev, precision="bf16" if dev.type == "cuda" else "32", batch_size=16
    )
    raw, pp, t = [], [], []
    for img in sorted((data / "imagesTs").glob("*.nii.gz")):
        vol = read_volume(img)
        gt = read_mask(data / "labelsTs" / img.name, reference=vol).array
        t0 = time.perf_counter()
        _, mask = predictor.predict(vol, threshold=0.5)
        t.append(time.perf_counter() - t0)
        sp = vol.spacing[::-1]
        raw.append(evaluate_case(mask, gt, sp).dice)
        pp.append(evaluate_case(remove_small_components(mask, vol.spacing, 20.0), gt, sp).dice)
    return {"dice_raw": float(np.nanmean(raw)), "dice_pp20": float(np.nanmean(pp)), "per_case_raw": raw,
            "predict_s_per_case": float(np.mean(t))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs2d", type=int, default=0)
    ap.add_argument("--epochs3d", type=int, default=0)
    ap.add_argument("--steps3d", type=int, default=0)
    ap.add_argument("--budget3d", type=float, default=0.0)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    if a.only != "3d":
        from lungtumor.preprocessing.prepare import prepare_dataset
        from lungtumor.training.run import train

        c = preset("default")
        if a.epochs2d:
            c.train.epochs = a.epochs2d
        if a.quick:
            c.train.epochs, c.train.max_steps_per_epoch, c.model.base_channels = 1, 2, 8
        t0 = time.perf_counter()
        prepare_dataset(a.dataset, a.out / "cache2d", c.prep)
        r = train(a.out / "cache2d", a.out / "run2d", c, progress=False)
        res = {
            "recipe": "2d default",
            "epochs": c.train.epochs,
            "val_dice": r.best_dice,
            "train_s": r.seconds,
        }
        res.update(score(a.out / "run2d", a.dataset), total_s=time.perf_counter() - t0)
        print(json.dumps(res), flush=True)
    if a.only != "2d":
        from lungtumor.preprocessing.prepare3d import prepare_dataset_3d
        from lungtumor.training.run import train

        c = preset("3d")
        if a.epochs3d:
            c.train.epochs = a.epochs3d
        if a.steps3d:
            c.vol3d.steps_per_epoch = a.steps3d
        if a.budget3d:
            c.vol3d.memory_budget_gb = a.budget3d
        if a.quick:
            c.train.epochs, c.vol3d.steps_per_epoch, c.model.base_channels, c.model.depth = 1, 2, 8, 3
            c.vol3d.memory_budget_gb = 0.1
        t0 = time.perf_counter()
        prepare_dataset_3d(a.dataset, a.out / "cache3d", c.vol3d)
        r = train(a.out / "cache3d", a.out / "run3d", c, progress=False)
        m = load_any(a.out / "run3d").config.vol3d
        res = {"recipe": "3d", "epochs": c.train.epochs, "steps_per_epoch": m.steps_per_epoch, "patch": m.patch_size,
               "batch": m.batch_size, "val_dice": r.best_dice, "train_s": r.seconds}  # fmt: skip
        res.update(score(a.out / "run3d", a.dataset), total_s=time.perf_counter() - t0)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
