"""The cost of the detector reading the source CTs (decision 0035), side by side with an older tree.

    python benchmarks/detector_grid_speed.py --old /tmp/lt_head --cache DEMO/cache [--rounds 3]

Times ``training.detector.cache_patches`` (every cached case's candidate cubes, 2 worker processes, as
``lungtumor train`` calls it) in this tree and in ``--old`` (each from its own ``src/``, in a fresh process,
alternating old/new each round so that drift of the machine hits both), and prints a Markdown table of the
median seconds and the candidates found.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from lungtumor.core.config import NoduleConfig
from lungtumor.training.detector import cache_patches
meta = json.load(open(sys.argv[1] + "/cache.json"))
names = [c["name"] for c in meta["cases"]]
t = time.perf_counter()
ps = cache_patches(sys.argv[1], names, NoduleConfig(), workers=2)
print(json.dumps({"s": time.perf_counter() - t, "n": int(len(ps.lesion)), "pos": int((ps.lesion >= 0).sum()),
                  "cases": len(names)}))
"""


def run(tree: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache)], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    res: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(a.rounds):
        for k, tree in (("old", a.old.resolve()), ("new", NEW)):
            res[k].append(run(tree, a.cache))
    print("| tree | cases | candidates (on tumours) | seconds, median (runs) |\n|---|---|---|---|")
    for k, rows in res.items():
        secs = [r["s"] for r in rows]
        runs = ", ".join(f"{s:.1f}" for s in secs)
        print(
            f"| {k} | {rows[0]['cases']} | {rows[0]['n']} ({rows[0]['pos']}) | {statistics.median(secs):.1f} ({runs}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
