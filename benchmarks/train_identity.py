"""Do two source trees train the same weights? Tiny demo, default and 3d runs with each, hashes side by side.

    git worktree add /tmp/base <commit>
    python benchmarks/train_identity.py --old /tmp/base/src [--out DIR]

Each tree runs in its own subprocess (``PYTHONPATH=<tree>``): ``synth`` 6 phantoms (96² x 40), then per preset
``prepare`` and ``train`` for 2 epochs (small networks, 3 steps an epoch, nodule detector off). The table gives the
sha256 (16 hex digits) of every tensor of ``last.ckpt`` and ``best.ckpt`` and of the metrics.csv rows (epoch,
step, val_dice, per-case Dice, lr), and whether the two trees agree. About 3 minutes per tree on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import csv, hashlib, json, sys
from pathlib import Path
import torch, yaml
from lungtumor.cli import main

out = Path(sys.argv[1])
def run(args):
    rc = main(args)
    assert not rc, (args, rc)
run(["synth", "-q", "-o", str(out / "ds"), "--cases", "6", "--test-cases", "0", "--matrix", "96", "--slices", "40",
     "--val-cases", "2"])
res = {}
for preset in ("demo", "default", "3d"):
    over = {"train": {"epochs": 2}, "nodule": {"enabled": False}}
    if preset == "3d":
        over["model"] = {"base_channels": 4, "depth": 2}
        over["vol3d"] = {"steps_per_epoch": 3, "patch_size": [8, 16, 16], "batch_size": 2, "overlap": 0.25}
    else:
        over["train"].update({"max_steps_per_epoch": 3, "batch_size": 4})
        over["model"] = {"base_channels": 8}
    (out / f"{preset}.yaml").write_text(yaml.safe_dump(over))
    run(["prepare", "-q", str(out / "ds"), str(out / f"cache_{preset}"), "--preset", preset])
    run(["train", "-q", str(out / f"cache_{preset}"), "-o", str(out / f"run_{preset}"), "--preset", preset,
         "--config", str(out / f"{preset}.yaml")])
    for ck in ("last", "best"):
        sd = torch.load(out / f"run_{preset}" / "checkpoints" / f"{ck}.ckpt", map_location="cpu", weights_only=True)
        h = hashlib.sha256()
        for k in sorted(sd["state_dict"]):
            h.update(k.encode())
            h.update(sd["state_dict"][k].numpy().tobytes())
        res[f"{preset} {ck}.ckpt weights"] = h.hexdigest()[:16]
    keep = ("epoch", "step", "val_dice", "lr", "val_dice_per_case")
    rows = [{k: r[k] for k in keep} for r in csv.DictReader(open(out / f"run_{preset}" / "metrics.csv"))]
    res[f"{preset} metrics.csv"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
print("RESULT " + json.dumps(res))
"""


def run_tree(src: Path, out: Path) -> dict[str, str]:
    """Run the child with ``src`` first on the path; its result dict."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out)], env=env, capture_output=True, text=True, check=False
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{src}: the run failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the other tree's src/ folder")
    ap.add_argument("--out", type=Path, help="scratch folder (default: a temporary one, removed)")
    a = ap.parse_args()
    scratch = a.out or Path(tempfile.mkdtemp(prefix="lt-identity-"))
    try:
        old = run_tree(a.old.resolve(), scratch / "old")
        new = run_tree(ROOT / "src", scratch / "new")
    finally:
        if a.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print("| what | old | new | same |\n|---|---|---|---|")
    for k in old:
        print(f"| {k} | {old[k]} | {new.get(k)} | {'yes' if old[k] == new.get(k) else 'NO'} |")


if __name__ == "__main__":
    main()
