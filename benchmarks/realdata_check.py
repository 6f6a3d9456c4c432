"""Real-data check: Dice and lesion recall of a phantom-trained model on real chest CTs.

    python benchmarks/realdata_check.py --model RUN_DIR [--realdata ../shared/realdata] [--out DIR]

The model must be trained on phantoms only (for example the run folder of ``lungtumor demo``). The cases are
the real CTs with tumour labels in ../shared/realdata: pyradiomics lung1 and lung2 (NRRD), NSCLC-Radiomics
LUNG1-001 (NIfTI crop) and the IBSI CT phantom (NIfTI). They are never trained on: this is our honest measure
of how realistic the phantoms are. Prints a table; the numbers go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CASES = {
    "lung1 (pyradiomics)": ("pyradiomics/lung1_image.nrrd", "pyradiomics/lung1_label.nrrd"),
    "lung2 (pyradiomics)": ("pyradiomics/lung2_image.nrrd", "pyradiomics/lung2_label.nrrd"),
    "LUNG1-001 (NSCLC-Radiomics)": (
        "nsclc_radiomics_lung1_001/LUNG1-001_ct_crop.nii.gz",
        "nsclc_radiomics_lung1_001/LUNG1-001_gtv1_crop.nii.gz",
    ),
    "IBSI CT phantom": ("ibsi_ct_phantom/phantom.nii.gz", "ibsi_ct_phantom/mask.nii.gz"),
}


def main() -> int:
    from lungtumor.evaluation.evaluate import evaluate_case
    from lungtumor.imaging.io import read_mask, read_volume
    from lungtumor.workflows.predict import PredictOptions, predict_paths

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="phantom-trained checkpoint or run folder")
    ap.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata")
    ap.add_argument("--out", type=Path, help="folder for masks and results (default: a temp folder)")
    ap.add_argument("--lung-gate", action="store_true", help="keep only lesions touching the lungs")
    ap.add_argument(
        "--min-z-extent-ratio", type=float, help="override the checkpoint's flat-component filter (0 = off)"
    )
    ap.add_argument(
        "--no-nodules",
        action="store_true",
        help="the 2D model alone, without the checkpoint's nodule detector",
    )
    args = ap.parse_args()
    if not args.realdata.is_dir():
        print(f"error: {args.realdata}: real data folder not found", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="lt-realdata-"))
    rows = []
    for name, (img_rel, lab_rel) in CASES.items():
        img_p, lab_p = args.realdata / img_rel, args.realdata / lab_rel
        t0 = time.perf_counter()
        res = predict_paths(
            [img_p],
            args.model,
            out / "pred",
            PredictOptions(
                lung_gate=args.lung_gate or None,
                min_z_extent_ratio=args.min_z_extent_ratio,
                measure=False,
                nodules=False if args.no_nodules else None,
            ),
        )[0]
        if res.error:
            rows.append({"case": name, "error": res.error})
            continue
        ct = read_volume(img_p)
        gt = read_mask(lab_p, reference=ct)
        pred = read_mask(res.mask_path, reference=ct)
        m = evaluate_case(pred.array, gt.array, tuple(reversed(ct.spacing)), case=name)
        rows.append(
            {
                "case": name,
                "dice": m.dice,
                "hd95_mm": m.hd95_mm,
                "lesion_recall": m.lesion_recall,
                "n_fp": m.n_fp,
                "gt_ml": m.gt_ml,
                "pred_ml": m.pred_ml,
                "seconds": time.perf_counter() - t0,
            }
        )
    lines = [
        f"model: {args.model}",
        "",
        "| case | Dice | HD95 mm | lesion recall | FP components | true mL | predicted mL |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} | | | | | |")
        else:
            lines.append(
                f"| {r['case']} | {r['dice']:.3f} | {r['hd95_mm']:.1f} | {r['lesion_recall']:.2f} | {r['n_fp']} | "
                f"{r['gt_ml']:.2f} | {r['pred_ml']:.2f} |"
            )
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "realdata.md").write_text(text + "\n")
    (out / "realdata.json").write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
