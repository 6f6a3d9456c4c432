"""Train the 3D nodule detector for an existing 2D run, so that detector variants can be compared on one 2D model.

    python benchmarks/nodule_attach.py RUN --cache CACHE --out NEW_RUN [--set nodule.steps=300 ...] [--seed N]

Copies RUN (config.yaml, metrics, loss curves, checkpoints/best.ckpt) to NEW_RUN, switches ``nodule.enabled``
on (plus the ``--set`` overrides, dotted keys, YAML values) in the copied checkpoint's config and config.yaml,
then trains the detector on CACHE's cases exactly as ``lungtumor train`` does after the 2D model
(``training.detector.train_for_run``) and stores it in NEW_RUN's best.ckpt. Score NEW_RUN with preset_sweep.py
``--score-only --model NEW_RUN``. Prints the detector's training seconds.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lungtumor.core.config_io import config_from_dict, save_config, to_dict  # noqa: E402
from lungtumor.core.errors import atomic_write_bytes  # noqa: E402
from lungtumor.preprocessing.cache import Cache  # noqa: E402
from lungtumor.training.detector import train_for_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=None, help="detector seed (default: the run's train.seed)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.out.exists():
        sys.exit(f"error: {a.out}: exists")
    (a.out / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.csv", "loss_curves.png"):
        if (a.run / name).is_file():
            shutil.copy2(a.run / name, a.out / name)
    ck = torch.load(a.run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    d = ck["hyper_parameters"]["lungtumor"]["config"]
    d.setdefault("nodule", {})["enabled"] = True
    for kv in a.set:
        key, value = kv.split("=", 1)
        section, field = key.split(".", 1)
        d.setdefault(section, {})[field] = yaml.safe_load(value)
    if a.seed is not None:
        d["train"]["seed"] = a.seed
    cfg = config_from_dict(d, source="--set")
    ck["hyper_parameters"]["lungtumor"]["config"] = to_dict(cfg)
    ck.pop("lungtumor_nodule", None)
    buf = io.BytesIO()
    torch.save(ck, buf)
    atomic_write_bytes(a.out / "checkpoints" / "best.ckpt", buf.getvalue())
    save_config(cfg, a.out / "config.yaml")
    seconds = train_for_run(Cache.open(a.cache), a.out, cfg)
    print(f"{a.out}: nodule detector trained in {seconds:.0f} s")


if __name__ == "__main__":
    main()
