"""How over-confident is a trained nodule detector? Its own training negatives that reach the threshold.

    python benchmarks/detector_calibration.py --cache CACHE --model RUN [--model RUN ...] [--threads 2]

Cuts the detector's candidate cubes from every case of CACHE (the cache RUN trained on, as ``lungtumor train``
does), scores them with each RUN's detector, one pass and flip-averaged (``nodule.tta``: only cubes scoring
>= 0.84 in one pass are flipped, the others cannot reach 0.98), and prints per threshold the non-tumour
candidates scoring at least that, per case, and the share of tumour candidates that do. Over detector seeds
this follows their false positives on held-out phantoms (BENCHMARKS.md "Session 12"). The cubes are cut
with the first model's ``nodule`` settings: compare detectors of one run (``detector_seeds.py``). About 1 minute for the
cubes and 1-2 minutes a model on 2 CPU cores (the demo's 35 cases, 29,794 candidates).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

THRESHOLDS = (0.98, 0.99, 0.995)


def scores(
    net: torch.nn.Module, hu: np.ndarray, flip_from: float = 8 * min(THRESHOLDS) - 7 - 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """(one-pass, flip-averaged) scores (N,) of HU cubes (N, P, P, P); only cubes >= ``flip_from`` are
    flipped (the others cannot reach the smallest threshold and keep their one-pass score)."""
    import lungtumor.inference.detector as det

    cpu = torch.device("cpu")
    one = torch.sigmoid(torch.from_numpy(det.cube_logits(net, hu, cpu, True))).numpy()
    flip = one.copy()
    sel = np.flatnonzero(one >= flip_from)
    for i in range(0, len(sel), 256):
        j = sel[i : i + 256]
        flip[j] = (one[j] + det._flip_sum(net, det._cubes_in(hu[j], cpu), True)[0]) / 8
    return one, flip


def main() -> int:
    import lungtumor.training.detector as nt
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.preprocessing.cache import Cache

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="the prepared cache the runs trained on")
    ap.add_argument(
        "--model", type=Path, action="append", required=True, help="a run (or .ckpt) with a detector"
    )
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cache = Cache.open(a.cache)
    names = list(cache.train) + list(cache.val)
    first = load_checkpoint(a.model[0])
    patches = nt.cache_patches(cache.root, names, first.config.nodule, workers=a.threads)
    neg = patches.lesion < 0
    print(f"{len(patches.lesion)} candidates in {len(names)} cases, {int((~neg).sum())} on tumours\n")
    head = " | ".join(f"t {t}: negatives per case, one pass / flips; tumour share" for t in THRESHOLDS)
    print(f"| model | {head} |\n|---|" + "---|" * len(THRESHOLDS))
    for run in a.model:
        loaded = load_checkpoint(run)
        if loaded.nodule is None:
            print(f"| {run} | no detector |")
            continue
        one, flip = scores(loaded.nodule.eval(), patches.hu)
        cells = [
            f"{np.sum(one[neg] >= t) / len(names):.2f} / {np.sum(flip[neg] >= t) / len(names):.2f}; "
            f"{np.mean(one[~neg] >= t):.2f} / {np.mean(flip[~neg] >= t):.2f}"
            for t in THRESHOLDS
        ]
        print(f"| {run} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
