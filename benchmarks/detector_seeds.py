"""Retrain only the nodule detector of a finished run, with another seed: the detector's run-to-run spread.

    python benchmarks/detector_seeds.py --run RUN --cache CACHE --seed S --out OUT
    python benchmarks/preset_sweep.py NAME --cache CACHE --test DIR ... --out SWEEP --score-only --model OUT

Copies RUN's config.yaml and checkpoints/best.ckpt to OUT, cuts the detector's training cubes from the cached
cases as ``lungtumor train`` does (``training.detector.cache_patches``), trains the detector with ``seed`` and
stores it in OUT's checkpoint; the 2D model stays as it is. With RUN's own seed this reproduces its detector bit
for bit. About 2 minutes a seed on 2 CPU cores (the demo's 35 cases).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    import torch

    import lungtumor.training.detector as nt
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.preprocessing.cache import Cache

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", type=Path, required=True, help="a finished run with a detector (e.g. the demo's)"
    )
    ap.add_argument("--cache", type=Path, required=True, help="the cache that run trained on")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True, help="new run folder (config + best.ckpt)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    (a.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(a.run / "config.yaml", a.out / "config.yaml")
    ckpt = a.out / "checkpoints" / "best.ckpt"
    shutil.copy(a.run / "checkpoints" / "best.ckpt", ckpt)
    cfg = load_checkpoint(ckpt).config
    cache = Cache.open(a.cache)
    patches = nt.cache_patches(cache.root, list(cache.train) + list(cache.val), cfg.nodule, workers=2)
    n_pos = int((patches.lesion >= 0).sum())
    print(f"{len(patches.lesion)} candidates, {n_pos} on tumours", flush=True)
    net = nt.train_detector(patches, cfg.nodule, seed=a.seed, bf16=True, device=torch.device("cpu"), log=None)
    nt.add_detector_to_checkpoint(ckpt, net, cfg.nodule)
    print(f"detector seed {a.seed} -> {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
