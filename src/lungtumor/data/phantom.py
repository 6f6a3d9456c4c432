"""Synthetic chest-CT phantoms with lung tumours of known volume: the project's built-in data.

:func:`make_case` builds one case in memory; :func:`synth_dataset` writes a Medical Segmentation Decathlon
Task06-style dataset::

    OUT/dataset.json   name, description, modality, labels, numTraining, numTest, training, test
    OUT/imagesTr/lung_000.nii.gz  int16 HU      OUT/labelsTr/lung_000.nii.gz  uint8 {0, 1}
    OUT/imagesTs/lung_020.nii.gz                OUT/labelsTs/lung_020.nii.gz  (true masks, for scoring)
    OUT/lesions.json   {"version": 1, "seed", "cases": [{"name", "split", "image", "label", "spacing",
                        "shape", "lesions": [{"id", "kind", "texture", "spiculated", "diameter_mm",
                        "equiv_diameter_mm", "volume_ml", "voxels", "centre_mm"}]}]}

Each lesion's ``volume_ml`` is its voxel count in the label times the voxel volume; ``centre_mm`` is the
world (LPS, x y z) position of its voxel centroid; ``diameter_mm`` is the designed (nominal) diameter.
The same seed gives the same bytes; case ``i`` depends only on (seed, split, i).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from lungtumor.core.errors import InputError, atomic_write_text, ensure_subdir, ensure_writable_dir
from lungtumor.core.progress import tqdm
from lungtumor.data.anatomy import render_anatomy, sample_anatomy
from lungtumor.data.geometry import grow_tree, raster_tubes, smooth_noise, widen_near_root
from lungtumor.data.lesions import (
    HILAR_BOOST,
    LESION_PLANS,
    floor_distance,
    place,
    render_tumour,
    sample_grid,
    sample_lesion_plan,
)
from lungtumor.data.msd import PHANTOM_DATASET_NAME
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume


@dataclass
class PhantomCase:
    """One phantom: image (int16 HU) and label (uint8) on one grid, the lesion records, and helper masks
    (z, y, x) bool: ``lung`` (lung parenchyma incl. vessels and tumours), ``vessels`` (vessel occupancy >= 0.5),
    ``bone``."""

    image: Volume
    label: Volume
    lesions: list[dict]
    lung: np.ndarray
    vessels: np.ndarray
    bone: np.ndarray


def _rng(rng_or_seed: np.random.Generator | int | np.random.SeedSequence) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _vessels(rng: np.random.Generator, an, grid, masks: dict, img: np.ndarray, hilar_vessels: bool):
    """Arteries and veins from the hila, and a few granulomas' tubes; paints the vessels into ``img``.

    Returns (vessel mask, lung subsampled by ``ds``, ``ds``, granuloma tubes)."""
    lung = masks["lung"]
    # vessel trees: arteries and veins for each lung, from the hila to points spread through the lung
    zc, yc, xc = grid.axes()
    occ = np.zeros(grid.shape, np.float32)
    ds = max(1, round(4.0 / grid.dx))
    sub = lung[:, ::ds, ::ds]
    hila = an.hila
    r_leaf = rng.uniform(0.8, 1.05)
    for si, sign in enumerate((1, -1)):
        kk, jj, ii = np.nonzero(sub & (masks["side"][:, ::ds, ::ds] == sign))
        if len(kk) < 8:
            continue
        for dzh in (10.0, -25.0):
            n = min(len(kk), int(rng.integers(150, 260)))
            pick = rng.choice(len(kk), n, replace=False)
            pts = np.stack([xc[ii[pick] * ds], yc[jj[pick] * ds], zc[kk[pick]]], 1)
            pts += rng.uniform(-0.5, 0.5, pts.shape) * [grid.dx * ds, grid.dy * ds, grid.dz]
            root = hila[si] + [0.0, rng.uniform(-10, 10), dzh]
            segs = grow_tree(rng, root, pts, r_leaf)
            if hilar_vessels:
                segs = widen_near_root(segs, root, *HILAR_BOOST)
            raster_tubes(occ, segs, grid)
    # a few vessel knots / granulomas: nodule-like bright dots that are not tumours
    gran = []
    if len(np.flatnonzero(sub)):
        kk, jj, ii = np.nonzero(sub)
        for q in rng.choice(len(kk), int(rng.integers(2, 9))):
            p = np.array([xc[ii[q] * ds], yc[jj[q] * ds], zc[kk[q]]])
            gran.append([*p, *(p + rng.normal(0, 1.0, 3)), rng.uniform(1.2, 3.0), rng.uniform(1.0, 2.5), 0])
    occ *= masks["soft"]
    vessels = occ >= 0.5
    img += occ * (an.hu_blood - img)
    return vessels, sub, ds, gran


def _airways(
    rng: np.random.Generator, an, grid, masks: dict, img: np.ndarray, sub: np.ndarray, ds: int, gran
):
    """Bronchi (walls, then air) and the granulomas, painted into ``img``."""
    zc, yc, xc = grid.axes()
    hila = an.hila
    lung = masks["lung"]
    # airways: main bronchi from the carina, lobar and segmental bronchi into each lung
    air = [[*an.carina, *hila[0], 6.5, 5.5, 0], [*an.carina, *hila[1], 7.0, 6.0, 0]]
    for si, sign in enumerate((1, -1)):
        kk, jj, ii = np.nonzero(sub & (masks["side"][:, ::ds, ::ds] == sign))
        if len(kk) >= 8:
            pick = rng.choice(len(kk), min(len(kk), 14), replace=False)
            pts = np.stack([xc[ii[pick] * ds], yc[jj[pick] * ds], zc[kk[pick]]], 1)
            tr = grow_tree(rng, hila[si], pts, 2.2)
            air += [list(t[:6]) + [t[6] * 0.8, t[7] * 0.5, t[8]] for t in tr if t[8] <= 2]
    air = np.asarray(air)
    w = np.zeros(grid.shape, np.float32)
    raster_tubes(w, air, grid, grow=1.3)
    w *= masks["soft"] | (np.abs(zc - an.carina[2]) < 80)[:, None, None]
    img += w * (an.hu_muscle - img)
    w[...] = 0
    raster_tubes(w, air, grid)
    w *= masks["soft"] | (np.abs(zc - an.carina[2]) < 80)[:, None, None]
    img += w * (-1000.0 - img)
    del w
    if gran:
        g = np.zeros(grid.shape, np.float32)
        raster_tubes(g, np.asarray(gran), grid)
        g *= lung
        img += g * (rng.uniform(60, 400) - img)


def _tumours(rng: np.random.Generator, an, grid, masks: dict, img: np.ndarray, plan: list[dict], ds: int):
    """Place and render the planned tumours; returns (lesion id map uint8, [(id, plan, radius mm)])."""
    lung = masks["lung"]
    hila = an.hila
    # tumours
    lid = np.zeros(grid.shape, np.uint8)
    dsz = max(1, round(3.0 / grid.dz))
    lds = lung[::dsz, ::ds, ::ds]
    samp = (grid.dz * dsz, grid.dy * ds, grid.dx * ds)
    depth = (
        ndi.distance_transform_edt(lds, sampling=samp).astype(np.float32)
        if lds.any()
        else np.zeros(lds.shape)
    )
    wall = masks["wall_depth"][::dsz, ::ds, ::ds]
    floor = floor_distance(lds, samp[0]) if any(p["kind"] == "basal" for p in plan) else None
    taken: list = []
    placed = []
    for p in plan:
        got = place(rng, p, grid, depth, wall, floor, (dsz, ds), taken, hila)
        if got is None:
            continue
        c, R = got
        k = len(placed) + 1
        render_tumour(rng, img, lid, lung, k, c, R, p, grid, an)
        taken.append((c, R))
        placed.append((k, p, R))
    return lid, placed


def _scanner(rng: np.random.Generator, grid, masks: dict, img: np.ndarray) -> None:
    """The scanner: point-spread blur and correlated noise, in place."""
    # scanner: point-spread blur, correlated noise
    sxy = rng.uniform(0.45, 0.85) / grid.dx
    ndi.gaussian_filter(img, (0.35 * max(1.0, 2.0 / grid.dz), sxy, sxy), output=img, truncate=3.0)
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    nc = rng.uniform(0.6, 1.1) * 0.7 / grid.dx * (1 if grid.dx < 1.2 else 1.2)
    ndi.gaussian_filter(noise, (0, nc, nc), output=noise, truncate=3.0)
    sigma = rng.uniform(12.0, 28.0) * np.sqrt(2.5 / max(grid.dz, 1.0)) ** 0.5
    noise *= sigma / (float(noise[:: max(1, grid.nz // 8)].std()) + 1e-6)
    noise[~masks["body"]] *= 0.3
    img += noise


def build_case(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence = 0,
    matrix: int = 256,
    slices: int | None = None,
    plan: list[dict] | None = None,
    lesion_plan: str = "standard",
    hilar_vessels: bool = False,
) -> PhantomCase:
    """Build one phantom in memory.

    Args:
        rng_or_seed: a numpy Generator, or a seed for one.
        matrix: in-plane size in pixels (spacing scales so the body fits: 0.6-0.95 mm at 512).
        slices: number of slices (None: random, 32-128 at matrix <= 256).
        plan: tumours to draw (as from :func:`sample_lesion_plan`); None draws them.
        lesion_plan: how to draw them when ``plan`` is None (:data:`LESION_PLANS`).
        hilar_vessels: widen the vessel trees near the hila to the calibre of the central pulmonary arteries
            and veins (:data:`HILAR_BOOST`); the same random draws, so the same anatomy and tumours otherwise.
    """
    rng = _rng(rng_or_seed)
    an = sample_anatomy(rng)
    grid = sample_grid(rng, an, matrix, slices)
    if plan is None:
        plan = sample_lesion_plan(rng, lesion_plan)
    step = 5.0
    tex = smooth_noise(rng, grid.shape, (step / grid.dz, step / grid.dy, step / grid.dx))
    img, masks = render_anatomy(an, grid, tex, rng, table=bool(rng.random() < 0.75))
    lung = masks["lung"]
    vessels, sub, ds, gran = _vessels(rng, an, grid, masks, img, hilar_vessels)
    _airways(rng, an, grid, masks, img, sub, ds, gran)
    lid, placed = _tumours(rng, an, grid, masks, img, plan, ds)
    _scanner(rng, grid, masks, img)
    arr = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    label = (lid > 0).astype(np.uint8)
    origin = (
        float(rng.uniform(-260, -140) + grid.x0 * 0),
        float(rng.uniform(-330, -170)),
        float(np.round(rng.uniform(-700, -100), 1)),
    )
    # float32-exact geometry, so volumes computed here equal those computed after a NIfTI round trip
    spacing = tuple(float(np.float32(round(v, 4))) for v in (grid.dx, grid.dy, grid.dz))
    origin = tuple(float(np.float32(v)) for v in origin)
    image = Volume(arr, spacing=spacing, origin=origin)
    lab = image.with_array(label)
    vv = image.voxel_volume_mm3
    lesions = []
    if placed:
        counts = np.bincount(lid.ravel(), minlength=len(placed) + 1)
        nzi = np.nonzero(lid)
        ids = lid[nzi]
        cents = [[float(np.mean(a[ids == k])) if counts[k] else 0.0 for a in nzi] for k, _, _ in placed]
        for (k, p, R), cm in zip(placed, cents, strict=True):
            if counts[k] == 0:
                continue
            ml = counts[k] * vv / 1000.0
            lesions.append(
                {
                    "id": len(lesions) + 1,
                    "kind": p["kind"],
                    "texture": p["texture"],
                    "spiculated": p["spiculated"],
                    "diameter_mm": round(2 * R, 2),
                    "equiv_diameter_mm": round(float((6 * ml * 1000 / np.pi) ** (1 / 3)), 2),
                    "volume_ml": ml,
                    "voxels": int(counts[k]),
                    "centre_mm": [round(float(v), 2) for v in image.index_to_world(np.array([cm]))[0]],
                }
            )
    return PhantomCase(image, lab, lesions, lung, vessels, masks["bone"])


def make_case(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence = 0,
    matrix: int = 256,
    slices: int | None = None,
) -> tuple[Volume, Volume, list[dict]]:
    """One phantom in memory: (image Volume int16 HU, label Volume uint8 {0,1} on its grid, lesion records).

    Small sizes (e.g. ``matrix=96, slices=24``) take well under a second.
    """
    c = build_case(rng_or_seed, matrix, slices)
    return c.image, c.label, c.lesions


def _case_seed(seed: int, split: int, i: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(split, i))


def _write_case(job: tuple) -> dict:
    out, name, split, seed_seq, matrix, slices, lesion_plan, hilar = job
    case = build_case(
        np.random.default_rng(seed_seq), matrix, slices, lesion_plan=lesion_plan, hilar_vessels=hilar
    )
    img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    write_volume(case.image, Path(out) / img_dir / f"{name}.nii.gz")
    write_volume(case.label, Path(out) / lab_dir / f"{name}.nii.gz")
    return {
        "name": name,
        "split": split,
        "image": f"./{img_dir}/{name}.nii.gz",
        "label": f"./{lab_dir}/{name}.nii.gz",
        "spacing": list(case.image.spacing),
        "shape": list(case.image.shape),
        "lesions": case.lesions,
    }


def _check_synth_args(
    n_train: int, n_test: int, matrix: int, slices: int | None, seed: int, val_cases: int, train_lesions: str
) -> None:
    """``synth``'s arguments, each checked with a one-line error naming the option."""
    if n_train < 0 or n_test < 0:
        raise InputError("--cases", f"case counts must be >= 0 (got {n_train} training, {n_test} test)")
    if n_train + n_test == 0:
        raise InputError("--cases", "nothing to write: 0 training and 0 test cases")
    if not 48 <= matrix <= 1024:
        raise InputError("--matrix", f"must be between 48 and 1024 pixels (got {matrix})")
    if slices is not None and not 4 <= slices <= 1000:
        raise InputError("--slices", f"must be between 4 and 1000 (got {slices})")
    if seed < 0:
        raise InputError("--seed", f"must be >= 0 (got {seed})")
    if not 0 <= val_cases < max(n_train, 1):
        raise InputError(
            "--val-cases", f"must be between 0 and {max(n_train - 1, 0)} for {n_train} cases, got {val_cases}"
        )
    if train_lesions not in LESION_PLANS:
        raise InputError(
            "--train-lesions", f"unknown plan {train_lesions!r}; valid: {', '.join(LESION_PLANS)}"
        )


def _run_jobs(jobs: list[tuple], workers: int | None, progress: bool) -> list[dict]:
    """Write every case (forked worker processes when there are several); the cases' records, in order."""
    nw = min(len(jobs), workers if workers is not None else min(os.cpu_count() or 1, 8))
    bar = tqdm(total=len(jobs), desc="synth", unit="case", disable=not progress)
    if nw <= 1:
        records = []
        for j in jobs:
            records.append(_write_case(j))
            bar.update()
    else:
        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(nw, mp_context=ctx) as ex:
            records = []
            for r in ex.map(_write_case, jobs):
                records.append(r)
                bar.update()
    bar.close()
    return records


def synth_dataset(
    out: str | os.PathLike,
    n_train: int = 20,
    n_test: int = 4,
    seed: int = 0,
    matrix: int = 256,
    slices: int | None = None,
    progress: bool = False,
    workers: int | None = None,
    train_lesions: str = "standard",
    val_cases: int = 0,
    train_hilar_vessels: bool = False,
) -> str:
    """Write a Task06-style phantom dataset into ``out`` (see the module docstring); return a summary line.

    ``workers`` processes build cases in parallel (default: up to the CPU count); the output does not depend
    on it. ``train_lesions`` (:data:`LESION_PLANS`) sets how training cases draw their tumours; test cases
    always draw them the standard way, and do not depend on it. ``val_cases`` > 0: the last ``val_cases``
    labelled cases are drawn the standard way too (like the test cases) and dataset.json lists them under
    ``validation``, so that ``prepare`` validates on them and validation Dice means what held-out Dice means;
    the other labelled cases are the same bytes as without it. ``train_hilar_vessels``: the training cases
    (not the ``val_cases``, not the test cases) get hilar vessels of real calibre (``build_case``).

    Raises:
        InputError: negative or zero case counts, a matrix or slice count out of range, a negative seed, or an
            output folder that cannot be written.
    """

    _check_synth_args(n_train, n_test, matrix, slices, seed, val_cases, train_lesions)
    t0 = time.perf_counter()
    root = ensure_writable_dir(out)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        ensure_subdir(root, d)  # refuses a link out of OUT
    first_val = n_train - val_cases
    jobs = [
        (str(root), f"lung_{i:03d}", "train", _case_seed(seed, 0, i), matrix, slices,
         "standard" if i >= first_val else train_lesions, train_hilar_vessels and i < first_val)
        for i in range(n_train)
    ]  # fmt: skip
    val_names = [f"lung_{i:03d}" for i in range(first_val, n_train)]
    jobs += [
        (str(root), f"lung_{n_train + i:03d}", "test", _case_seed(seed, 1, i), matrix, slices, "standard", False)
        for i in range(n_test)
    ]  # fmt: skip
    records = _run_jobs(jobs, workers, progress)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    ds = {
        "name": PHANTOM_DATASET_NAME,
        "description": "Synthetic chest CT phantoms with lung tumours (lungtumor synth, seed "
        f"{seed}). labelsTs/ holds the test cases' true masks so held-out phantoms can be scored; "
        "lesions.json records every lesion's true volume, centre and diameter.",
        "reference": "lungtumor built-in phantoms",
        "licence": "CC0 (synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "tumour"},
        "numTraining": len(train),
        "numTest": len(test),
        "training": [{"image": r["image"], "label": r["label"]} for r in train],
        "test": [r["image"] for r in test],
    }
    if val_names:
        ds["validation"] = val_names
    atomic_write_text(root / "dataset.json", json.dumps(ds, indent=2) + "\n")
    les = {
        "version": 1,
        "seed": seed,
        "matrix": matrix,
        "train_lesions": train_lesions,
        "train_hilar_vessels": train_hilar_vessels,
        "cases": records,
    }
    if val_names:
        les["validation"] = val_names  # drawn the standard way
    atomic_write_text(root / "lesions.json", json.dumps(les, indent=1) + "\n")
    n_les = sum(len(r["lesions"]) for r in records)
    free = sum(1 for r in records if not r["lesions"])
    dt = time.perf_counter() - t0
    of_which = (
        f" ({len(val_names)} of them fixed for validation, drawn like the test ones)" if val_names else ""
    )
    return (
        f"wrote {len(train)} training{of_which} + {len(test)} test phantoms ({n_les} lesions, {free} tumour-free) "
        f"to {root} in {dt:.1f} s"
    )
