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
With a variety (:mod:`lungtumor.data.variety`, ``docs/phantoms.md``) each case's record also holds a
``variety`` object (confounders, acquisition, family) and lesions.json the families' settings; without one
(the default) nothing changes, byte for byte.
The same seed gives the same bytes; case ``i`` depends only on (seed, split, i).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lungtumor.core.errors import InputError, atomic_write_text, ensure_subdir, ensure_writable_dir
from lungtumor.core.progress import tqdm
from lungtumor.data.anatomy import render_anatomy, sample_anatomy
from lungtumor.data.builder import (
    PhantomCase,
    as_rng,
    finish_case,
    paint_airways,
    paint_vessels,
    place_tumours,
    scan,
)
from lungtumor.data.geometry import smooth_noise
from lungtumor.data.lesions import LESION_PLANS, sample_grid, sample_lesion_plan
from lungtumor.data.msd import PHANTOM_DATASET_NAME
from lungtumor.data.varied import build_varied_case
from lungtumor.data.variety import Variety, variety_family
from lungtumor.imaging.io import write_volume
from lungtumor.imaging.volume import Volume

__all__ = ["PhantomCase", "build_case", "make_case", "synth_dataset"]


def build_case(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence = 0,
    matrix: int = 256,
    slices: int | None = None,
    plan: list[dict] | None = None,
    lesion_plan: str = "standard",
    hilar_vessels: bool = False,
    variety: Variety | None = None,
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
        variety: confounders, acquisition and tumour variants (:mod:`lungtumor.data.variety`, e.g.
            ``IN_FAMILY``), recorded in the case's ``variety`` dict; None (or nothing switched on): the default
            phantom, the same bytes as before the variety existed.
    """
    rng = as_rng(rng_or_seed)
    if variety is not None and variety.enabled:
        return build_varied_case(rng, matrix, slices, plan, lesion_plan, hilar_vessels, variety)
    an = sample_anatomy(rng)
    grid = sample_grid(rng, an, matrix, slices)
    if plan is None:
        plan = sample_lesion_plan(rng, lesion_plan)
    step = 5.0
    tex = smooth_noise(rng, grid.shape, (step / grid.dz, step / grid.dy, step / grid.dx))
    img, masks = render_anatomy(an, grid, tex, rng, table=bool(rng.random() < 0.75))
    vessels, sub, ds, gran = paint_vessels(rng, an, grid, masks, img, hilar_vessels)
    paint_airways(rng, an, grid, masks, img, sub, ds, gran)
    lid, placed = place_tumours(rng, an, grid, masks, img, plan, ds)
    scan(rng, grid, masks, img)
    return finish_case(rng, grid, img, lid, placed, masks, vessels)


def make_case(
    rng_or_seed: np.random.Generator | int | np.random.SeedSequence = 0,
    matrix: int = 256,
    slices: int | None = None,
    variety: Variety | None = None,
) -> tuple[Volume, Volume, list[dict]]:
    """One phantom in memory: (image Volume int16 HU, label Volume uint8 {0,1} on its grid, lesion records).

    Small sizes (e.g. ``matrix=96, slices=24``) take well under a second.
    """
    c = build_case(rng_or_seed, matrix, slices, variety=variety)
    return c.image, c.label, c.lesions


def _case_seed(seed: int, split: int, i: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(split, i))


def _write_case(job: tuple) -> dict:
    out, name, split, seed_seq, matrix, slices, lesion_plan, hilar, variety = job
    case = build_case(
        np.random.default_rng(seed_seq),
        matrix,
        slices,
        lesion_plan=lesion_plan,
        hilar_vessels=hilar,
        variety=variety,
    )
    img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    write_volume(case.image, Path(out) / img_dir / f"{name}.nii.gz")
    write_volume(case.label, Path(out) / lab_dir / f"{name}.nii.gz")
    rec = {
        "name": name,
        "split": split,
        "image": f"./{img_dir}/{name}.nii.gz",
        "label": f"./{lab_dir}/{name}.nii.gz",
        "spacing": list(case.image.spacing),
        "shape": list(case.image.shape),
        "lesions": case.lesions,
    }
    if case.variety is not None:
        rec["variety"] = case.variety
    return rec


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


def _resolve_varieties(
    variety, test_variety, without: tuple[str, ...], hard_negatives: float | None
) -> tuple[Variety | None, Variety | None]:
    """The labelled and test cases' varieties (None: off) from families or names, with the elements in
    ``without`` switched off and the share of hard negatives set (InputError naming the option otherwise)."""

    def one(v, option: str) -> Variety | None:
        """One family, resolved and checked; None when off."""
        try:
            if isinstance(v, str):
                v = variety_family(v)
            if v is not None:
                v = v.without(*without).with_hard_negatives(hard_negatives)
        except ValueError as e:
            bad = "--without" if "element" in str(e) else "--hard-negatives" if "hard" in str(e) else option
            raise InputError(bad, str(e)) from None
        return v if v is not None and v.enabled else None

    train = one(variety, "--variety")
    return train, (train if test_variety is None else one(test_variety, "--test-variety"))


def _name(v: Variety | None) -> str:
    """A family's name in the summary (None: off)."""
    return "off" if v is None else v.name


def _settings(v: Variety | None) -> dict | None:
    """A family's full settings for lesions.json (None: off)."""
    return None if v is None else dataclasses.asdict(v)


def _dataset_json(seed: int, train: list[dict], test: list[dict], val_names: list[str]) -> dict:
    """dataset.json of the phantoms: the MSD fields, the cases, and the fixed validation cases if any."""
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
    return ds


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
    variety: Variety | str | None = None,
    test_variety: Variety | str | None = None,
    variety_without: tuple[str, ...] = (),
    hard_negatives: float | None = None,
) -> str:
    """Write a Task06-style phantom dataset into ``out`` (see the module docstring); return a summary line.

    ``workers`` processes build cases in parallel (default: up to the CPU count); the output does not depend
    on it. ``train_lesions`` (:data:`LESION_PLANS`) sets how training cases draw their tumours; test cases
    always draw them the standard way, and do not depend on it. ``val_cases`` > 0: the last ``val_cases``
    labelled cases are drawn the standard way too (like the test cases) and dataset.json lists them under
    ``validation``, so that ``prepare`` validates on them and validation Dice means what held-out Dice means;
    the other labelled cases are the same bytes as without it. ``train_hilar_vessels``: the training cases
    (not the ``val_cases``, not the test cases) get hilar vessels of real calibre (``build_case``).
    ``variety``: the labelled cases' variety (:mod:`lungtumor.data.variety`; a family name, ``"off"`` or
    None: the default phantoms, byte for byte); ``test_variety``: the test cases' (None: as ``variety``);
    ``variety_without`` switches the named elements of both off; ``hard_negatives`` sets both families' share of
    tumour-free phantoms full of confounders (None: the family's).
    With a variety, each case's record in lesions.json gets its ``variety`` dict and lesions.json the
    families' full settings under ``variety``.

    Raises:
        InputError: negative or zero case counts, a matrix or slice count out of range, a negative seed, an
            unknown variety family, or an output folder that cannot be written.
    """

    _check_synth_args(n_train, n_test, matrix, slices, seed, val_cases, train_lesions)
    v_train, v_test = _resolve_varieties(variety, test_variety, variety_without, hard_negatives)
    t0 = time.perf_counter()
    root = ensure_writable_dir(out)
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        ensure_subdir(root, d)  # refuses a link out of OUT
    first_val = n_train - val_cases
    jobs = [
        (str(root), f"lung_{i:03d}", "train", _case_seed(seed, 0, i), matrix, slices,
         "standard" if i >= first_val else train_lesions, train_hilar_vessels and i < first_val, v_train)
        for i in range(n_train)
    ]  # fmt: skip
    val_names = [f"lung_{i:03d}" for i in range(first_val, n_train)]
    jobs += [
        (str(root), f"lung_{n_train + i:03d}", "test", _case_seed(seed, 1, i), matrix, slices, "standard", False,
         v_test)
        for i in range(n_test)
    ]  # fmt: skip
    records = _run_jobs(jobs, workers, progress)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    ds = _dataset_json(seed, train, test, val_names)
    if v_train or v_test:
        ds["description"] += (
            f" Variety: {_name(v_train)} (labelled), {_name(v_test)} (test); lesions.json 'variety'."
        )
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
    if v_train or v_test:
        les["variety"] = {"train": _settings(v_train), "test": _settings(v_test)}
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
