"""k-fold cross-validation with out-of-fold (OOF) evaluation and nnU-Net-style choice of postprocessing.

``run_cv(dataset, out, preset_name, folds=5)``:

1. prepares the recipe's cache once (``OUT/cache``: 2D ``prepare`` or 3D ``prepare3d``), whose splits.json
   holds the patient folds;
2. trains one model per fold into ``OUT/fold_<k>/`` (``training.run.train`` with the fold's
   cases); a finished fold (``fold_<k>/done.json``) is not trained again;
3. predicts every fold's validation cases on their original grid (raw masks in ``OUT/oof/``);
4. chooses postprocessing: minimum lesion size from :data:`MIN_SIZES_MM3` and lung gating on/off, kept only
   when it raises the mean OOF Dice (ties keep the simpler option), records it in ``OUT/postprocessing.json``
   and writes it into each fold checkpoint's ``infer`` section (so ``predict --model OUT/fold_k`` uses it);
5. writes ``OUT/cv_cases.csv`` (per case: fold, raw Dice, final Dice, NSD, HD95, lesions, volumes),
   ``OUT/cv_lesions.csv`` (per ground-truth lesion: size bin, found, lesion Dice) and ``OUT/cv_summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.core.config_io import config_from_dict, load_config, save_config
from lungtumor.core.errors import (
    InputError,
    atomic_path,
    atomic_write_text,
    check_subdirs,
    ensure_subdir,
    ensure_writable_dir,
)
from lungtumor.core.runtime import resolve_device
from lungtumor.data.msd import load_dataset
from lungtumor.evaluation.evaluate import SegmentationMetrics
from lungtumor.evaluation.metrics import dice
from lungtumor.imaging.io import read_mask, read_volume, write_volume
from lungtumor.imaging.lungs import lung_mask_from_hu
from lungtumor.imaging.orientation import from_canonical, to_canonical
from lungtumor.inference.checkpoint import load_any
from lungtumor.inference.predictor import Predictor
from lungtumor.models import is_3d
from lungtumor.postprocessing.filters import filter_components
from lungtumor.postprocessing.lung_gate import gate_to_lungs
from lungtumor.preprocessing.prepare import prepare_dataset
from lungtumor.preprocessing.prepare3d import prepare_dataset_3d
from lungtumor.training.run import train

MIN_SIZES_MM3: tuple[float, ...] = (0.0, 10.0, 50.0, 100.0, 250.0, 500.0)
#: Candidate ``infer.min_z_extent_ratio`` values (0 = off; 0.4 keeps every real lesion, docs/decisions/0005).
Z_RATIOS: tuple[float, ...] = (0.0, 0.4)
_EPS = 1e-4  # a postprocessing must raise the mean Dice by more than this to be chosen


@dataclass
class PostChoice:
    """The chosen postprocessing and the mean OOF Dice without and with it."""

    min_lesion_mm3: float
    lung_gate: bool
    dice_raw: float
    dice_chosen: float
    candidates: list[dict[str, Any]]
    min_z_extent_ratio: float = 0.0


def choose_postprocessing(
    cases: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray | None]],
    min_sizes: tuple[float, ...] = MIN_SIZES_MM3,
    z_ratios: tuple[float, ...] = Z_RATIOS,
) -> PostChoice:
    """Pick min lesion size, the flat-component filter and lung gating that maximise the mean OOF Dice.

    Args:
        cases: per case (pred (z, y, x) {0, 1}, gt (z, y, x), spacing (x, y, z) mm, lung mask (z, y, x) bool
            or None when gating is not to be tried for it).

    Returns:
        The best candidate when it beats no postprocessing by more than 1e-4 mean Dice, else (0, False, 0).
    """

    gates = (False, True) if any(c[3] is not None for c in cases) else (False,)
    cands = []
    for gate in gates:
        for zr in sorted(z_ratios):
            for ms in sorted(min_sizes):
                ds = [
                    dice(apply_postprocessing(pred, sp, lung, ms, gate, zr), gt)
                    for pred, gt, sp, lung in cases
                ]
                v = np.asarray(
                    ds, dtype=float
                )  # NaN (both empty) is left out, as in lungtumor.evaluation.metrics
                mean = float(np.nanmean(v)) if np.isfinite(v).any() else 1.0
                cands.append(
                    {
                        "min_lesion_mm3": float(ms),
                        "lung_gate": gate,
                        "min_z_extent_ratio": float(zr),
                        "mean_dice": mean,
                    }
                )
    raw = next(
        (
            c
            for c in cands
            if c["min_lesion_mm3"] == 0 and not c["lung_gate"] and c["min_z_extent_ratio"] == 0
        ),
        cands[0],
    )
    best = raw
    for c in cands:  # in order of simplicity: no gate first, no flat filter first, smaller sizes first
        if c["mean_dice"] > best["mean_dice"] + _EPS:
            best = c
    return PostChoice(
        best["min_lesion_mm3"], best["lung_gate"], raw["mean_dice"], best["mean_dice"], cands,
        min_z_extent_ratio=best["min_z_extent_ratio"],
    )  # fmt: skip


def apply_postprocessing(
    pred: np.ndarray,
    spacing: tuple[float, float, float],
    lung: np.ndarray | None,
    min_mm3: float,
    gate: bool,
    z_ratio: float,
) -> np.ndarray:
    """``pred`` (z, y, x) {0, 1} after the size filter, the flat-component filter and the lung gate, in the
    order ``predict`` applies them."""

    m = (
        filter_components(pred, spacing, min_mm3=min_mm3, min_z_ratio=z_ratio)
        if min_mm3 > 0 or z_ratio > 0
        else pred
    )
    if gate and lung is not None and lung.any() and m.any():
        m = gate_to_lungs(m, lung)
    return m


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, dtype=float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def _box(pred: np.ndarray, gt: np.ndarray, pad: int = 2) -> tuple[slice, ...]:
    """Bounding box of pred | gt grown by ``pad`` voxels: every OOF metric and postprocessing is exact on it."""
    idx = np.argwhere((pred != 0) | (gt != 0))
    if not len(idx):
        return (slice(0, 1),) * 3
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, pred.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _set_infer(run_dir: Path, choice: PostChoice) -> None:
    """Write the chosen postprocessing into the run's best/last checkpoints and config.yaml (atomically)."""

    for name in ("best.ckpt", "last.ckpt"):
        p = run_dir / "checkpoints" / name
        if not p.is_file():
            continue
        ck = torch.load(p, map_location="cpu", weights_only=True)
        infer = ck["hyper_parameters"]["lungtumor"]["config"].setdefault("infer", {})
        infer["min_lesion_mm3"] = float(choice.min_lesion_mm3)
        infer["lung_gate"] = bool(choice.lung_gate)
        infer["min_z_extent_ratio"] = float(choice.min_z_extent_ratio)
        buf = io.BytesIO()
        torch.save(ck, buf)
        with atomic_path(p) as tmp:
            tmp.write_bytes(buf.getvalue())
        if name == "best.ckpt":
            save_config(
                config_from_dict(ck["hyper_parameters"]["lungtumor"]["config"]), run_dir / "config.yaml"
            )


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _train_fold(k: int, fold: dict, cfg, cache: Path, root: Path, progress: bool) -> Path:
    """Train fold ``k`` into ``root/fold_k`` unless done; its checkpoint (last.ckpt when no validation ran)."""
    run_dir = root / f"fold_{k}"
    done = run_dir / "done.json"
    if not done.is_file():
        if (run_dir / "checkpoints" / "last.ckpt").exists():  # an interrupted fold: start it again
            shutil.rmtree(run_dir)
        res = train(cache, run_dir, cfg, progress=progress, train_names=fold["train"], val_names=fold["val"])
        atomic_write_text(done, json.dumps({"best_dice": res.best_dice, "seconds": res.seconds}) + "\n")
    best = run_dir / "checkpoints" / "best.ckpt"
    return best if best.is_file() else run_dir / "checkpoints" / "last.ckpt"


def _oof_records(loaded, k: int, names: list[str], by_name: dict, dev: torch.device, oof: Path) -> list[dict]:
    """Predict fold ``k``'s validation cases (raw masks, written to ``oof``); cropped arrays for the choice."""
    predictor = Predictor([loaded], device=dev, precision="bf16" if dev.type == "cuda" else "32")
    records = []
    for name in names:
        case = by_name[name]
        stored = read_volume(case.image)
        vol, ro = to_canonical(stored)  # as predict sees it
        gt = ro.apply(read_mask(case.label, reference=stored).array)
        _, mask = predictor.predict(vol, threshold=loaded.config.infer.threshold)
        write_volume(from_canonical(mask, stored, ro), oof / f"{name}.nii.gz")
        box = _box(mask, gt)
        lung = lung_mask_from_hu(vol.array, vol.spacing)[box]
        records.append(
            {"fold": k, "case": name, "pred": mask[box], "gt": gt[box], "spacing": vol.spacing, "lung": lung}
        )
        del vol, gt, mask
    return records


def _score_oof(records: list[dict], choice: PostChoice, root: Path) -> tuple[list[dict], SegmentationMetrics]:
    """Apply the chosen postprocessing to every OOF mask, score it, write cv_cases.csv / cv_lesions.csv."""
    acc = SegmentationMetrics()
    rows, lesion_rows = [], []
    for r in records:
        m = apply_postprocessing(
            r["pred"],
            r["spacing"],
            r["lung"],
            choice.min_lesion_mm3,
            choice.lung_gate,
            choice.min_z_extent_ratio,
        )
        cm = acc.update(m, r["gt"], r["spacing"][::-1], case=r["case"])
        row = {"fold": r["fold"], "case": r["case"], "dice_raw": dice(r["pred"], r["gt"])}
        skip = ("case", "status", "pred_file", "gt_file", "lesions")
        row.update({k: v for k, v in asdict(cm).items() if k not in skip})
        rows.append(row)
        lesion_rows += [{"fold": r["fold"], "case": r["case"], **les} for les in cm.lesions]
    atomic_write_text(root / "cv_cases.csv", _csv(rows))
    if lesion_rows:  # out-of-fold detection per ground-truth lesion (size bin, found, lesion Dice)
        atomic_write_text(root / "cv_lesions.csv", _csv(lesion_rows))
    return rows, acc


def run_cv(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    preset_name: str = "default",
    *,
    folds: int = 5,
    epochs: int | None = None,
    seed: int = 0,
    config_path: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """k-fold cross-validation of a recipe on a labelled dataset (steps in the module docstring).

    Returns:
        The summary also written to ``OUT/cv_summary.json``.

    Raises:
        InputError: bad dataset, preset, config or output folder; fewer cases than folds.
    """
    t0 = time.perf_counter()
    if folds < 2:
        raise InputError("--folds", f"must be at least 2, got {folds}")
    cfg = load_config(config_path, preset_name)
    cfg.train.seed = seed
    if epochs is not None:
        if epochs < 1:
            raise InputError("--epochs", "must be at least 1")
        cfg.train.epochs = epochs
    ds = load_dataset(dataset)
    if len(ds.cases) < folds:
        raise InputError(dataset, f"{len(ds.cases)} labelled cases cannot make {folds} folds")
    dev = resolve_device(device)
    root = ensure_writable_dir(out)
    check_subdirs(
        root, "cache", *(f"fold_{k}" for k in range(folds))
    )  # never write through a link out of OUT
    cache = root / "cache"
    if is_3d(cfg):
        prepare_dataset_3d(dataset, cache, cfg.vol3d, folds=folds, seed=seed, progress=progress)
    else:  # torch is already imported (with its thread pools): forked reader processes can deadlock, so read serially
        prepare_dataset(dataset, cache, cfg.prep, folds=folds, seed=seed, progress=progress, workers=1)
    fold_list = json.loads((cache / "splits.json").read_text(encoding="utf-8"))["folds"]
    by_name = {c.name: c for c in ds.cases}
    oof = ensure_subdir(root, "oof")
    records: list[dict[str, Any]] = []
    for k, fold in enumerate(fold_list):
        loaded = load_any(_train_fold(k, fold, cfg, cache, root, progress))
        records += _oof_records(loaded, k, fold["val"], by_name, dev, oof)
        del loaded
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    choice = choose_postprocessing([(r["pred"], r["gt"], r["spacing"], r["lung"]) for r in records])
    rows, acc = _score_oof(records, choice, root)
    chosen = {
        "min_lesion_mm3": choice.min_lesion_mm3,
        "lung_gate": choice.lung_gate,
        "min_z_extent_ratio": choice.min_z_extent_ratio,
    }
    pp = {**chosen, "mean_dice_raw": choice.dice_raw, "mean_dice_chosen": choice.dice_chosen}
    pp["candidates"] = choice.candidates
    atomic_write_text(root / "postprocessing.json", json.dumps(pp, indent=1) + "\n")
    for k in range(len(fold_list)):
        _set_infer(root / f"fold_{k}", choice)
    agg = acc.aggregate()
    per_fold = {str(k): _nanmean([r["dice"] for r in rows if r["fold"] == k]) for k in range(len(fold_list))}
    summary = {
        "preset": cfg.preset,
        "folds": len(fold_list),
        "epochs": cfg.train.epochs,
        "seed": seed,
        "n_cases": len(rows),
        "mean_dice": agg["dice"]["mean"],
        "mean_dice_raw": choice.dice_raw,
        "per_fold_mean_dice": per_fold,
        "postprocessing": chosen,
        "metrics": agg,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(root / "cv_summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    return summary


def format_cv_summary(s: dict[str, Any]) -> str:
    """A few lines for the console."""
    pp = s["postprocessing"]
    return (
        f"{s['folds']}-fold CV of preset {s['preset']} on {s['n_cases']} cases: mean per-case Dice "
        f"{s['mean_dice']:.4f} (raw {s['mean_dice_raw']:.4f}); postprocessing: min lesion "
        f"{pp['min_lesion_mm3']:g} mm3, lung gate {'on' if pp['lung_gate'] else 'off'}, flat filter "
        f"{pp.get('min_z_extent_ratio', 0):g}; "
        + ", ".join(f"fold {k} {v:.3f}" for k, v in s["per_fold_mean_dice"].items())
        + f"; {s['seconds']:.0f} s"
    )


NNUNET_TASK06_DICE = (
    0.72  # nnU-Net's published mean per-case Dice on MSD Task06 (5-fold CV), as cited in the issue
)


def run_benchmark_msd(
    task_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset_name: str = "default",
    folds: int = 5,
    epochs: int | None = None,
    seed: int = 0,
    config_path: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """5-fold CV of a recipe on an MSD Task06 folder with fixed seeds; adds the nnU-Net reference.

    Writes ``OUT/cv_cases.csv``, ``OUT/cv_summary.json`` and ``OUT/benchmark.json``/``benchmark.md``.

    Raises:
        InputError: ``task_dir`` is not a labelled MSD-style folder.
    """

    p = Path(task_dir)
    if not ((p / "dataset.json").is_file() or (p / "imagesTr").is_dir()):
        raise InputError(p, "not an MSD task folder (needs dataset.json or imagesTr/ and labelsTr/)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    s = run_cv(
        task_dir,
        out,
        preset_name,
        folds=folds,
        epochs=epochs,
        seed=seed,
        config_path=config_path,
        device=device,
        progress=progress,
    )
    bench = {
        "task_dir": str(p.resolve()),
        "preset": s["preset"],
        "folds": s["folds"],
        "epochs": s["epochs"],
        "seed": seed,
        "n_cases": s["n_cases"],
        "mean_per_case_dice": s["mean_dice"],
        "median_per_case_dice": s["metrics"]["dice"]["median"],
        "nnunet_reference_dice": NNUNET_TASK06_DICE,
        "difference": (s["mean_dice"] or 0.0) - NNUNET_TASK06_DICE,
        "postprocessing": s["postprocessing"],
    }
    root = Path(out)
    atomic_write_text(root / "benchmark.json", json.dumps(bench, indent=1) + "\n")
    md = (
        f"# MSD Task06 benchmark\n\n| recipe | folds | epochs | cases | mean per-case Dice | median | nnU-Net |\n"
        f"|---|---|---|---|---|---|---|\n| {bench['preset']} | {bench['folds']} | {bench['epochs']} | {bench['n_cases']} "
        f"| {bench['mean_per_case_dice']:.4f} | {bench['median_per_case_dice']:.4f} | {NNUNET_TASK06_DICE:.2f} |\n"
    )
    atomic_write_text(root / "benchmark.md", md)
    return bench
