"""Does each postprocessing rule earn its place? Leave-one-out over training seeds: every inference rule of the
demo preset switched off in turn, scored on the 40 held-out phantoms and the real CTs.

    python benchmarks/rule_ablation.py --run R0 --run R1 --run R2 --test d0 --test d1 --test d2 --out OUT \
        [--realdata ../shared/realdata] [--only NAME ...] [--threads 2]

Each RUN is a demo-preset run (2D model + nodule detector) trained with its own seed on the same cache; each
test folder is a ``lungtumor synth`` set (BENCHMARKS.md "Protocol": d0 is the demo's 8 test phantoms, d1 and d2
16 each). A variant scores copies of the runs' checkpoints with one setting changed (the same weights). The
phantom figure of a run is the mean of the three sets' mean per-case Dice; the real-CT figure the mean Dice of
the four real CTs (predicted, as ``realdata_check.py`` does, with the checkpoint's settings; the 2D mirror TTA
only where the variant uses it). Prints a Markdown table of mean and spread (sd) over the runs, and writes
OUT/ablation.jsonl (one line per run and variant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from preset_sweep import patched_checkpoint, score  # noqa: E402
from realdata_check import CASES  # noqa: E402

from lungtumor.evaluation.evaluate import evaluate_case  # noqa: E402
from lungtumor.imaging.io import read_mask, read_volume  # noqa: E402
from lungtumor.workflows.predict import PredictOptions, predict_paths  # noqa: E402


class Variant(NamedTuple):
    """Checkpoint overrides, 2D mirror TTA, and predict's precision ("auto": bf16 on CPUs with native bf16)."""

    overrides: list[str]
    tta: bool
    precision: str = "auto"


#: name -> variant. "demo" is the preset as ``lungtumor demo`` predicts; each other variant changes one thing.
VARIANTS: dict[str, Variant] = {
    "demo (all rules)": Variant([], True),
    "no lung gate": Variant(["infer.lung_gate=false"], True),
    "no flat filter": Variant(["infer.min_z_extent_ratio=0"], True),
    "no minimum size": Variant(["infer.min_lesion_mm3=0"], True),
    "no 2D mirror TTA": Variant([], False),
    "no nodule detector": Variant(["nodule.enabled=false"], True),
    "no detector flip TTA": Variant(["nodule.tta=false"], True),
    "no confirm_small": Variant(["nodule.confirm_small=false"], True),
    # the demo as it predicts since 2026-12-07 (no 2D mirror TTA; lung gate and minimum size off in the
    # checkpoint), and one threshold or size changed from it (decisions 0002, 0010, 0011)
    "demo (today)": Variant([], False),
    "threshold 0.4": Variant(["infer.threshold=0.4"], False),
    "threshold 0.6": Variant(["infer.threshold=0.6"], False),
    "detector threshold 0.95": Variant(["nodule.threshold=0.95"], False),
    "detector threshold 0.99": Variant(["nodule.threshold=0.99"], False),
    "detector minimum 6 mm": Variant(["nodule.min_diameter_mm=6"], False),
    "detector minimum 10 mm": Variant(["nodule.min_diameter_mm=10"], False),
    # the same, predicted in float32 instead of predict's "auto" (bf16 on CPUs with native bf16; decision 0026)
    "demo (today), fp32 predict": Variant([], False, "32"),
}


def realdata_dice(
    ckpt: Path, realdata: Path, out: Path, tta: bool, precision: str = "auto"
) -> tuple[dict[str, float], dict[str, int]]:
    """Dice and false-positive components of each real CT (the checkpoint's settings; 2D mirror TTA as the
    variant says)."""
    res, fps = {}, {}
    for name, (img_rel, lab_rel) in CASES.items():
        img_p, lab_p = realdata / img_rel, realdata / lab_rel
        opts = PredictOptions(measure=False, tta=tta, precision=precision)
        r = predict_paths([img_p], ckpt, out, opts)[0]
        if r.error:
            raise SystemExit(f"{img_p}: {r.error}")
        ct = read_volume(img_p)
        gt, pred = read_mask(lab_p, reference=ct), read_mask(r.mask_path, reference=ct)
        m = evaluate_case(pred.array, gt.array, tuple(reversed(ct.spacing)), case=name)
        res[name], fps[name] = m.dice, m.n_fp
    return res, fps


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", type=Path, action="append", required=True, help="a demo-preset run (one per seed)"
    )
    ap.add_argument(
        "--test", type=Path, action="append", required=True, help="a synth folder of held-out phantoms"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata")
    ap.add_argument("--only", action="append", help="score only these variants (names as in the table)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    names = a.only or list(VARIANTS)
    table: dict[str, dict[str, list[float]]] = {}
    for vname in names:
        overrides, tta, precision = VARIANTS[vname]
        for i, run in enumerate(a.run):
            tag = f"{vname.replace(' ', '_').replace('(', '').replace(')', '').replace(',', '')}_{i}"
            ckpt = patched_checkpoint(run, overrides, a.out / "models" / f"{tag}.ckpt")
            sets = [
                score(ckpt, t, a.out / "pred" / tag / t.name, tta, "cpu", precision=precision) for t in a.test
            ]
            row = {
                "variant": vname,
                "run": str(run),
                "phantom_dice": statistics.mean(s["dice"] for s in sets),
                "fp_per_case": statistics.mean(s["fp_per_case"] for s in sets),
                "found": "+".join(s["found"] for s in sets),
                "sets": sets,
            }
            if a.realdata.is_dir():
                row["real"], row["real_fp"] = realdata_dice(
                    ckpt, a.realdata, a.out / "pred" / tag / "real", tta, precision
                )
                row["real_dice"] = statistics.mean(row["real"].values())
                row["real_fp_per_ct"] = statistics.mean(row["real_fp"].values())
            with (a.out / "ablation.jsonl").open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            t = table.setdefault(vname, {"phantom": [], "fp": [], "real": [], "real_fp": []})
            t["phantom"].append(row["phantom_dice"])
            t["fp"].append(row["fp_per_case"])
            if "real_dice" in row:
                t["real"].append(row["real_dice"])
                t["real_fp"].append(row["real_fp_per_ct"])
            print(json.dumps({k: row[k] for k in row if k != "sets"}, default=float), flush=True)
    print(f"\n{len(a.run)} runs (seeds) x {len(a.test)} test sets; mean ± sd over the runs\n")
    print(
        "| variant | held-out phantom Dice | FP per case | real-CT Dice (4 CTs) | real-CT FP per CT |"
        "\n|---|---|---|---|---|"
    )
    for vname, t in table.items():
        real = _ms(t["real"]) if t["real"] else "-"
        real_fp = _ms(t["real_fp"]) if t["real_fp"] else "-"
        print(f"| {vname} | {_ms(t['phantom'])} | {_ms(t['fp'])} | {real} | {real_fp} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
