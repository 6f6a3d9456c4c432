"""Paired table of recipe arms over training seeds, from `rule_ablation.py` outputs (BENCHMARKS.md
"Training-side switches over 3 seeds").

    python benchmarks/arm_table.py --arm "LABEL|VARIANT|OUT_S0,OUT_S1,OUT_S2" [--arm ...]

Each arm names the `rule_ablation.py --out` folder of each training seed (the same seed order in every arm)
and the variant to read from its ``ablation.jsonl`` (e.g. ``demo (today)``). The first arm is the reference:
Δ columns are paired per seed against it (mean ± sd of the per-seed differences). Columns: the 40-phantom
Dice (mean of the test sets' per-case means; per seed in brackets), FP components per case, d0 (the first
test set), the real-CT mean Dice and its false-positive components per CT, and each real CT's Dice
(mean over the seeds). Reads files only; prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _ms(xs: list[float], sign: str = "") -> str:
    return f"{statistics.mean(xs):{sign}.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def read_arm(spec: str) -> tuple[str, list[dict]]:
    """``LABEL|VARIANT|DIR,DIR,...`` -> (label, one ablation row per seed)."""
    try:
        label, variant, dirs = spec.split("|")
    except ValueError:
        raise SystemExit(f"--arm {spec!r}: expected LABEL|VARIANT|DIR,DIR,...") from None
    rows = []
    for d in dirs.split(","):
        path = Path(d) / "ablation.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run rule_ablation.py --out {d} first)")
        found = [r for r in map(json.loads, path.read_text().splitlines()) if r["variant"] == variant]
        if not found:
            raise SystemExit(f"{path}: no row of variant {variant!r}")
        rows.append(found[-1])
    return label, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--arm", action="append", required=True, help="LABEL|VARIANT|DIR,DIR,... (first: reference)"
    )
    a = ap.parse_args()
    arms = [read_arm(s) for s in a.arm]
    ref = arms[0][1]
    if any(len(rows) != len(ref) for _, rows in arms):
        raise SystemExit("every arm needs the same number of seeds")
    cts = list(ref[0].get("real", {}))
    head = (
        "| arm | 40-phantom Dice (per seed) | Δ | FP per case | d0 | real-CT Dice | Δ real | real FP per CT |"
    )
    print(head + "".join(f" {c.split(' ')[0]} |" for c in cts))
    print("|---" * (8 + len(cts)) + "|")
    for label, rows in arms:
        ph = [r["phantom_dice"] for r in rows]
        per = " / ".join(f"{x:.3f}" for x in ph)
        d_ph = "-" if rows is ref else _ms([x - r["phantom_dice"] for x, r in zip(ph, ref, strict=True)], "+")
        fp = statistics.mean(r["fp_per_case"] for r in rows)
        d0 = statistics.mean(r["sets"][0]["dice"] for r in rows)
        cells = [f"{_ms(ph)} ({per})", d_ph, f"{fp:.2f}", f"{d0:.3f}"]
        if cts:
            real = [r["real_dice"] for r in rows]
            d_real = (
                "-" if rows is ref else _ms([x - r["real_dice"] for x, r in zip(real, ref, strict=True)], "+")
            )
            real_fp = statistics.mean(r["real_fp_per_ct"] for r in rows)
            cells += [_ms(real), d_real, f"{real_fp:.2f}"]
            cells += [f"{statistics.mean(r['real'][c] for r in rows):.2f}" for c in cts]
        else:
            cells += ["-", "-", "-"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n{len(ref)} training seeds per arm; Δ paired per seed against {arms[0][0]!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
