"""The example report of docs/followup.md: a synthetic baseline and follow-up through ``lungtumor compare``.

    python benchmarks/compare_example.py [--out DIR] [--png docs/compare_example.png] [--seed 6]

The baseline is a phantom chest (``lungtumor.data.phantom.build_case``, 192 x 192 x 64) with its true tumour
mask. The follow-up is the same chest with its largest tumour scaled to 60 % of its size about its centroid
(the rest of it turned back into lung), a new 12 mm nodule in the lung, fresh noise and a rigid motion of a few
degrees and 12 mm. ``lungtumor compare`` runs on the two with the true masks; the script prints
``response.json``'s category and rule, excerpts of ``response.json`` and ``lesions.csv``, and saves the page's
side-by-side figure of the shrunk tumour (the PNG embedded in ``compare.html``, unchanged) to ``--png``.
Synthetic data: an illustration of the outputs, not evidence about real follow-ups.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from lungtumor.cli import main
from lungtumor.data.phantom import PhantomCase, build_case
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
#: The follow-up's largest tumour, as a fraction of its baseline size (linear).
SHRINK = 0.6
#: Diameter (mm) of the new nodule.
NEW_NODULE_MM = 12.0
#: The follow-up's rigid motion: rotations about x, y, z (degrees) and translation (x, y, z mm).
MOTION = ((1.0, -1.5, 3.0), (8.0, -6.0, 6.0))


def _world(vol: Volume) -> np.ndarray:
    """World coordinates (z, y, x, 3) (x, y, z mm) of every voxel of an identity-direction Volume."""
    axes = [o + s * np.arange(n) for o, s, n in zip(vol.origin, vol.spacing, vol.shape[::-1], strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="xy")
    return np.stack([x, y, z], -1).transpose(2, 0, 1, 3)


def _shrink_largest(case: PhantomCase, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale the largest tumour by :data:`SHRINK` about its centroid in ``hu`` (in place); the new mask."""
    labels, n = ndi.label(case.label.array > 0, structure=np.ones((3, 3, 3)))
    big = 1 + int(np.argmax(ndi.sum_labels(np.ones_like(labels), labels, range(1, n + 1))))
    lesion = labels == big
    idx = np.argwhere(lesion)
    centre = idx.mean(0)
    keep = np.zeros_like(lesion)
    # a voxel stays when its point pushed out by 1 / SHRINK from the centre is in the lesion
    for z, y, x in idx:
        p = np.rint(centre + (np.array([z, y, x]) - centre) / SHRINK).astype(int)
        if np.all(p >= 0) and np.all(p < lesion.shape) and lesion[tuple(p)]:
            keep[z, y, x] = True
    lung = case.lung & ~case.label.array.astype(bool) & ~case.vessels
    gone = lesion & ~keep
    hu[gone] = np.median(hu[lung]) + rng.normal(0.0, 15.0, int(gone.sum()))
    mask = case.label.array.astype(bool) & ~gone
    return mask


def _add_nodule(case: PhantomCase, hu: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Paint a new :data:`NEW_NODULE_MM` nodule (about 30 HU) deep in the lung, away from the tumours."""
    free = case.lung & ~case.vessels & ~ndi.binary_dilation(mask, iterations=8)
    # the field of view's faces count as background, so that the nodule stays inside the scan after the motion
    depth = ndi.distance_transform_edt(np.pad(free, 1), sampling=case.image.spacing[::-1])[1:-1, 1:-1, 1:-1]
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    world = _world(case.image)
    c = world[centre]
    ball = np.linalg.norm(world - c, axis=-1) <= NEW_NODULE_MM / 2
    hu[ball] = 30.0 + rng.normal(0.0, 15.0, int(ball.sum()))
    mask |= ball


def _moved(vol: Volume, motion: sitk.Transform, *, label: bool) -> Volume:
    """``vol`` resampled on its own grid through ``motion``: nearest for a label, linear (air outside) for HU."""
    img = vol.to_sitk() if label else sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)
    interp, fill = (sitk.sitkNearestNeighbor, 0.0) if label else (sitk.sitkLinear, -1000.0)
    arr = sitk.GetArrayFromImage(sitk.Resample(img, img, motion, interp, fill))
    return vol.with_array(
        arr.astype(np.uint8) if label else np.clip(np.rint(arr), -1024, 3071).astype(np.int16)
    )


def make_pair(seed: int, out: Path) -> dict[str, Path]:
    """Write the baseline and follow-up CTs and their true masks (NIfTI) into ``out``; their paths."""
    case = build_case(seed, matrix=192, slices=64)
    rng = np.random.default_rng(seed + 1)
    hu = case.image.array.astype(np.float32) + rng.normal(0.0, 8.0, case.image.shape)
    mask = _shrink_largest(case, hu, rng)
    _add_nodule(case, hu, mask, rng)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(
        case.image.to_sitk().TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in case.image.shape[::-1]]
        )
    )
    motion.SetRotation(*(math.radians(a) for a in MOTION[0]))
    motion.SetTranslation(MOTION[1])
    fu = _moved(case.image.with_array(hu), motion, label=False)
    fu_mask = _moved(case.image.with_array(mask.astype(np.uint8)), motion, label=True)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "base": write_volume(case.image, out / "baseline.nii.gz"),
        "fu": write_volume(fu, out / "followup.nii.gz"),
        "base_mask": write_volume(case.label, out / "baseline_mask.nii.gz"),
        "fu_mask": write_volume(fu_mask, out / "followup_mask.nii.gz"),
    }


def save_figure(html: str, kind: str, png: Path) -> str:
    """Save the page's first figure whose caption starts with ``kind`` to ``png``; its caption."""
    for b64, caption in re.findall(r'src="data:image/png;base64,([^"]+)"><figcaption>([^<]*)<', html):
        if caption.startswith(kind):
            png.write_bytes(base64.b64decode(b64))
            return caption
    raise SystemExit(f"compare.html has no {kind!r} figure")


def main_example(argv: list[str] | None = None) -> None:
    """Build the pair, run ``lungtumor compare``, print the excerpts and save the figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "compare_example.png")
    ap.add_argument("--seed", type=int, default=6)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        f = make_pair(args.seed, work / "inputs")
        cmp = work / "compare"
        rc = main(["compare", str(f["base"]), str(f["fu"]), "--out", str(cmp), "--baseline-mask",
                   str(f["base_mask"]), "--followup-mask", str(f["fu_mask"]), "--interval-days", "91", "-q"])  # fmt: skip
        if rc:
            raise SystemExit(rc)
        doc = json.loads((cmp / "response.json").read_text())
        caption = save_figure((cmp / "compare.html").read_text(), "matched", args.png)
        print(f"\ncategory: {doc['recist']['category']}\nrule: {doc['recist']['rule']}")
        print(f"figure: {caption} -> {args.png} ({args.png.stat().st_size / 1024:.0f} KB)")
        keys = (
            "category",
            "rule",
            "baseline_sum_mm",
            "followup_sum_mm",
            "change_mm",
            "change_pct",
            "new_lesions",
        )
        print(json.dumps({"recist": {k: doc["recist"][k] for k in keys}, "registration": {
            k: doc["registration"][k] for k in ("kind", "residual_mm", "residual_before_mm", "poor",
                                                "translation_mm", "rotation_deg")}}, indent=2))  # fmt: skip
        cols = ("kind", "baseline_lesions", "followup_lesions", "organ", "target", "matched_by",
                "baseline_long_axis_mm", "followup_long_axis_mm", "volume_change_pct", "volume_doubling_time_days")  # fmt: skip
        rows = list(csv.DictReader((cmp / "lesions.csv").open()))
        print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
        for r in rows:
            print("| " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main_example()
