"""Where a model fails on varied phantoms (issue 23): false positives by the nearest recorded confounder,
Dice by acquisition, and lesion recall by tumour type, per arm over its seeds.

    python benchmarks/heldout_breakdown.py --data OUT/data/heldout \
        --pred A_s0=OUT/pred/A_s0/heldout --pred A_s1=... --pred D_s0=... [--near-mm 60]

``--data`` is a ``synth --variety ...`` folder (its ``lesions.json`` records every confounder's type and centre,
the acquisition and every tumour's type); each ``--pred NAME=DIR`` holds one model's ``CASE_tumour.nii.gz``
masks of its test cases (as ``generalisation.py`` writes them); NAME's part before ``_s`` is the arm, and the
tables give each arm's mean over its seeds. A false positive is a predicted 26-connected component that touches
no tumour voxel; it is put on the confounder whose recorded centre is nearest to its centroid, when that is
within ``--near-mm`` (a crude attribution: large confounders such as the liver or an effusion have centres far
from their edges; the table also gives the median distance), and its mean HU in the CT is given. A lesion
(a 26-connected component of the label, matched to the nearest recorded tumour centre) is found when the
prediction covers >= 10 % of it, as ``lungtumor evaluate`` counts it. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lungtumor.evaluation.metrics import dice  # noqa: E402
from lungtumor.imaging.components import component_sizes, label_components  # noqa: E402
from lungtumor.imaging.io import read_mask, read_volume  # noqa: E402


def _centroids(vol, labels: np.ndarray, n: int) -> np.ndarray:
    """World (x, y, z) mm centroid of each component 1..n, (n, 3)."""
    idx = np.argwhere(labels > 0)
    lab = labels[labels > 0]
    out = np.zeros((n, 3))
    for k in range(3):
        out[:, k] = np.bincount(lab, weights=idx[:, k], minlength=n + 1)[1:]
    cnt = np.bincount(lab, minlength=n + 1)[1:]
    return vol.index_to_world(out / np.maximum(cnt, 1)[:, None])


def _noise_bin(hu: float) -> str:
    return "noise < 35 HU" if hu < 35 else ("noise 35-50 HU" if hu < 50 else "noise >= 50 HU")


def _nearest(point: np.ndarray, confounders: list[dict], near_mm: float) -> tuple[str, float]:
    best, dist = "none near", float("inf")
    for c in confounders:
        if c.get("voxels", 1) and "centre_mm" in c:
            d = float(np.linalg.norm(point - np.asarray(c["centre_mm"])))
            if d < dist:
                best, dist = c["type"], d
    return (best, dist) if dist <= near_mm else ("none near", dist)


def score_case(record: dict, data: Path, pred_p: Path, near_mm: float) -> dict:
    """One case's false positives (type, distance, mL, mean HU), lesions (type, found) and Dice."""
    ct = read_volume(data / record["image"])
    gt = read_mask(data / record["label"], reference=ct).array > 0
    pm = read_mask(pred_p, reference=ct).array > 0
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    conf = record.get("variety", {}).get("confounders", [])
    plab, n_p = label_components(pm)
    fps = []
    if n_p:
        on_gt = np.zeros(n_p + 1, bool)
        on_gt[np.unique(plab[gt])] = True
        cents = _centroids(ct, plab, n_p)
        sizes = component_sizes(plab, n_p)
        hu_sum = np.bincount(plab.ravel(), weights=ct.array.ravel().astype(np.float64), minlength=n_p + 1)
        for k in range(1, n_p + 1):
            if not on_gt[k]:
                t, d = _nearest(cents[k - 1], conf, near_mm)
                fps.append({"type": t, "dist": d, "ml": sizes[k] * voxel_ml, "hu": hu_sum[k] / sizes[k]})
    glab, n_g = label_components(gt)
    lesions = []
    if n_g:
        cents = _centroids(ct, glab, n_g)
        cover = np.bincount(glab[pm], minlength=n_g + 1)
        total = component_sizes(glab, n_g)
        recs = record.get("lesions", [])
        for k in range(1, n_g + 1):
            rec = min(
                recs, key=lambda r: np.linalg.norm(cents[k - 1] - np.asarray(r["centre_mm"])), default={}
            )
            lesions.append({"type": rec.get("type", "?"), "found": cover[k] >= 0.1 * total[k]})
    acq = record.get("variety", {}).get("acquisition", {})
    return {
        "dice": dice(pm, gt) if gt.any() else None,
        "fps": fps,
        "lesions": lesions,
        "kernel": f"kernel {acq.get('kernel', '?')}",
        "noise": _noise_bin(float(acq.get("noise_hu", 0.0))),
        "thickness": f"slices {acq.get('slice_thickness_mm', '?')} mm",
    }


def _m(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f}" if xs else "-"


def tables(res: dict[str, dict[str, list[dict]]]) -> str:
    """Markdown tables from res[arm][seed name] = per-case dicts."""
    arms = sorted(res)
    out = ["False positives by the nearest recorded confounder (components per seed, summed over the cases; "
           "mL per seed; median distance to its centre; mean HU):", "",
           "| confounder | " + " | ".join(f"{a}: FP / mL / mm / HU" for a in arms) + " |",
           "|---|" + "---|" * len(arms)]  # fmt: skip
    kinds = sorted({f["type"] for a in arms for cs in res[a].values() for c in cs for f in c["fps"]})
    for t in kinds:
        cells = []
        for a in arms:
            per = [[f for c in cs for f in c["fps"] if f["type"] == t] for cs in res[a].values()]
            flat = [f for p in per for f in p]
            cells.append(
                f"{_m([len(p) for p in per])} / {_m([sum(f['ml'] for f in p) for p in per])} / "
                f"{statistics.median(f['dist'] for f in flat):.0f} / {_m([f['hu'] for f in flat])}"
                if flat
                else "0"
            )
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out += ["", "Dice of the tumour cases by acquisition (mean over cases and seeds; cases):", "",
            "| setting | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]  # fmt: skip
    for key in ("kernel", "noise", "thickness"):
        for v in sorted({c[key] for a in arms for cs in res[a].values() for c in cs}):
            cells = []
            for a in arms:
                ds = [
                    c["dice"] for cs in res[a].values() for c in cs if c[key] == v and c["dice"] is not None
                ]
                cells.append(f"{_m(ds)} ({len(ds) // max(1, len(res[a]))})")
            out.append(f"| {v} | " + " | ".join(cells) + " |")
    out += ["", "Lesion recall by tumour type (found / lesions, pooled over seeds):", "",
            "| tumour type | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]  # fmt: skip
    for t in sorted(
        {les["type"] for a in arms for cs in res[a].values() for c in cs for les in c["lesions"]}
    ):
        cells = []
        for a in arms:
            ls = [
                les["found"] for cs in res[a].values() for c in cs for les in c["lesions"] if les["type"] == t
            ]
            cells.append(f"{sum(ls)}/{len(ls)}")
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the synth folder of the varied test phantoms")
    ap.add_argument(
        "--pred", action="append", required=True, metavar="NAME=DIR", help="e.g. A_s0=OUT/pred/.."
    )
    ap.add_argument("--near-mm", type=float, default=60.0)
    a = ap.parse_args()
    meta = json.loads((a.data / "lesions.json").read_text())
    records = [c for c in meta["cases"] if c.get("split") == "test"]
    res: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for spec in a.pred:
        name, _, folder = spec.partition("=")
        arm = name.split("_s")[0]
        res[arm][name] = [
            score_case(r, a.data, Path(folder) / f"{r['name']}_tumour.nii.gz", a.near_mm) for r in records
        ]
    print(tables(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
