"""Training the 3D nodule detector beside a 2D model: candidate cubes from a prepared cache, hard-negative
mining, training, and storing its weights in the run's checkpoint (``train_for_run``).

Prediction with it is ``inference.detector``; how its lesions join the 2D mask is ``postprocessing.detector``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from lungtumor.core.config import NoduleConfig, PrepConfig
from lungtumor.core.config_io import from_dict
from lungtumor.core.errors import InputError
from lungtumor.core.runtime import cpu_has_bf16
from lungtumor.imaging.resample import resample
from lungtumor.inference.checkpoint import add_detector_to_checkpoint
from lungtumor.inference.detector import (
    CL3D,
    PATCH_HU,
    bf16_autocast,
    cube_logits,
    cubes_in,
    extract_patches,
    input_to_hu,
    iso_patches,
)
from lungtumor.models.nodule3d import NodulePatchNet
from lungtumor.preprocessing.frame import frame_spacing, geometry_of


@dataclass
class PatchSet:
    """Training patches of many cases.

    Attributes:
        hu: float16 (N, P, P, P) HU cubes around candidates.
        seg: uint8 (N, P, P, P) tumour mask of the same cubes.
        lesion: int (N,) a per-set lesion id when the candidate's centre lies in a tumour, else -1.
    """

    hu: np.ndarray
    seg: np.ndarray
    lesion: np.ndarray


def case_patches(
    hu_frame: np.ndarray, seg_frame: np.ndarray, spacing_zyx: Sequence[float], cfg: NoduleConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case's candidate cubes: (HU float16, mask uint8, lesion label at the centre, 0 = none)."""

    hu, centres, shape = iso_patches(hu_frame, spacing_zyx, cfg)
    seg = resample(seg_frame.astype(np.float32), shape) >= 0.5
    labels, _ = ndi.label(seg, structure=np.ones((3, 3, 3), bool))
    p = cfg.patch
    cubes = extract_patches(np.clip(hu, *PATCH_HU).astype(np.float16), centres, p, PATCH_HU[0])
    masks = extract_patches(seg.astype(np.uint8), centres, p, 0)
    at = labels[tuple(centres.T)] if len(centres) else np.zeros(0, np.int64)
    return cubes, masks, at.astype(np.int64)


def _frame_spacing(case: Mapping[str, Any], prep: Mapping[str, Any]) -> tuple[float, float, float]:
    """Voxel size (z, y, x) mm of a cached case's prepared frame (from cache.json's record)."""

    spacing = tuple(float(v) for v in case["orig_spacing"])
    return frame_spacing(geometry_of(case["orig_shape"], spacing, from_dict(PrepConfig, dict(prep))), spacing)


def _one_case(job: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    root, name, record, prep, stats, cfg = job
    img = np.load(Path(root) / "cases" / f"{name}_img.npy", mmap_mode="r")
    seg = np.load(Path(root) / "cases" / f"{name}_seg.npy", mmap_mode="r")
    hu = input_to_hu(img, prep, stats)
    return case_patches(hu, np.asarray(seg), _frame_spacing(record, prep), cfg)


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux a SIGKILLed parent takes its workers with it (PR_SET_PDEATHSIG), instead of
    leaving them blocked for ever writing results into a pipe that nobody reads."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def cache_patches(cache: str | Path, names: Sequence[str], cfg: NoduleConfig, workers: int = 2) -> PatchSet:
    """Candidate cubes of the cached cases ``names`` (a prepared 2D cache), ``workers`` processes."""

    root = Path(cache)
    meta = json.loads((root / "cache.json").read_text())
    records = {c["name"]: c for c in meta["cases"]}
    jobs = [(str(root), n, records[n], meta["prep"], meta["stats"], cfg) for n in names]
    if workers > 1 and len(jobs) > 1:  # numpy and scipy only in the workers: fork is safe
        ctx = get_context("fork")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
        ) as ex:
            parts = list(ex.map(_one_case, jobs))
    else:
        parts = [_one_case(j) for j in jobs]
    hu, seg, lesion, offset = [], [], [], 0
    for cubes, masks, at in parts:
        hu.append(cubes)
        seg.append(masks)
        lesion.append(np.where(at > 0, at + offset, -1))
        offset += int(at.max(initial=0))
    p = cfg.patch
    if not hu:
        return PatchSet(
            np.zeros((0, p, p, p), np.float16), np.zeros((0, p, p, p), np.uint8), np.zeros(0, np.int64)
        )
    return PatchSet(np.concatenate(hu), np.concatenate(seg), np.concatenate(lesion))


def _augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips of all three axes and in-plane transpose for cubes (B, P, P, P) and masks."""
    for ax in (1, 2, 3):
        if rng.random() < 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    if rng.random() < 0.5:
        x, y = np.swapaxes(x, 2, 3), np.swapaxes(y, 2, 3)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def train_detector(
    patches: PatchSet,
    cfg: NoduleConfig,
    *,
    seed: int = 0,
    bf16: bool = True,
    device: torch.device | str = "cpu",
    log=None,
) -> NodulePatchNet:
    """Train the detector on ``patches``: each batch is half tumour-centred cubes (each lesion as likely as
    any other, so small nodules weigh like big masses) and half other candidates.

    Hard negatives: halfway, ``cfg.mine_pool`` random non-tumour candidates are scored and the quarter
    that looks most like tumour (vessel ends and junctions, hilar vessels) becomes a hard pool; from then on
    ``cfg.hard_negatives`` of each batch's negatives come from it.

    Loss: BCE on the score + BCE and soft Dice (cubes that hold tumour) on the segmentation. AdamW with a
    one-cycle schedule peaking at ``cfg.lr``. Seeded: the same patches and seed give the same weights.

    Raises:
        InputError: no candidate lies in a tumour, or none lies outside one.
    """
    pos = np.flatnonzero(patches.lesion >= 0)
    neg = np.flatnonzero(patches.lesion < 0)
    if len(pos) == 0 or len(neg) == 0:
        raise InputError(
            "nodule detector",
            f"needs tumour and non-tumour candidates, got {len(pos)} and {len(neg)} "
            "(too few or too small tumours in the training cases? set nodule.enabled: false)",
        )
    _, inv = np.unique(patches.lesion[pos], return_inverse=True)
    weight = 1.0 / np.bincount(inv)[inv]
    weight /= weight.sum()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    net = NodulePatchNet(cfg.channels).to(dev, memory_format=CL3D)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    half = cfg.batch_size // 2
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    net.train()
    t0 = time.perf_counter()
    n_neg = cfg.batch_size - half
    hard = np.zeros(0, np.int64)
    for step in range(cfg.steps):
        if step == cfg.steps // 2 and cfg.hard_negatives > 0:
            hard = _mine(net, patches, neg, rng, cfg, dev, bf16)
            net.train()
        n_hard = int(round(n_neg * cfg.hard_negatives)) if len(hard) else 0
        idx = np.concatenate(
            [
                rng.choice(pos, half, p=weight),
                rng.choice(neg, n_neg - n_hard),
                rng.choice(hard, n_hard) if n_hard else np.zeros(0, np.int64),
            ]
        )
        x, y = _augment(rng, patches.hu[idx], patches.seg[idx])
        xt = cubes_in(x, dev)
        yt = torch.from_numpy(y.astype(np.float32)).to(dev)
        label = torch.from_numpy((patches.lesion[idx] >= 0).astype(np.float32)).to(dev)
        with bf16_autocast(dev, bf16):
            score, seg = net(xt)
        score, seg = score.float(), seg.float()
        prob = torch.sigmoid(seg)
        has = yt.sum(dim=(1, 2, 3)) > 0
        inter = (prob * yt).sum(dim=(1, 2, 3))
        denom = prob.sum(dim=(1, 2, 3)) + yt.sum(dim=(1, 2, 3))
        soft_dice = (1 - (2 * inter + 1) / (denom + 1))[has].mean() if has.any() else seg.sum() * 0
        loss = bce(score, label) + bce(seg, yt) + soft_dice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
            log(
                f"nodule detector step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)"
            )
    return net.cpu().eval()


@torch.no_grad()
def _mine(
    net: NodulePatchNet,
    patches: PatchSet,
    neg: np.ndarray,
    rng: np.random.Generator,
    cfg: NoduleConfig,
    dev: torch.device,
    bf16: bool,
) -> np.ndarray:
    """Indices of the hardest quarter of ``cfg.mine_pool`` random negatives (highest scores)."""
    pool = rng.choice(neg, min(len(neg), cfg.mine_pool), replace=False)
    net.eval()
    order = np.argsort(-cube_logits(net, patches.hu, dev, bf16, pool), kind="stable")
    return pool[order[: max(1, len(pool) // 4)]]


def train_for_run(cache: Any, run_dir: Path, cfg: Any, *, progress: bool = True) -> float:
    """``lungtumor train``'s last step when ``cfg.nodule.enabled``: patches from every labelled case of the
    prepared cache ``cache`` (``data.PreparedCache``; training and validation cases), train, store the
    detector in ``run_dir/checkpoints/best.ckpt``. Returns the seconds it took.

    When no candidate lies in a tumour (or every one does) it warns on stderr and leaves best.ckpt as the
    2D model alone: failing a finished 2D training for want of nodules would help nobody."""
    t0 = time.perf_counter()
    log = print if progress else None
    names = list(cache.train) + list(cache.val)
    patches = cache_patches(cache.root, names, cfg.nodule, workers=min(2, max(1, len(names))))
    if log:
        n_pos = int((patches.lesion >= 0).sum())
        log(
            f"nodule detector: {len(patches.lesion)} candidates in {len(names)} cases, {n_pos} on tumours "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    n_pos = int((patches.lesion >= 0).sum())
    if n_pos == 0 or n_pos == len(patches.lesion):
        # the 2D checkpoint stays as it is (nodule.enabled: false inside it): a complete 2D model
        print(
            f"warning: {cache.root}: no nodule detector trained: {n_pos} of {len(patches.lesion)} blob "
            "candidates lie in a tumour (too few or too small tumours, or no lungs in HU); the run is the 2D "
            "model alone",
            file=sys.stderr,
        )
        return time.perf_counter() - t0
    use_cuda = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if use_cuda else "cpu")

    auto = cfg.train.precision == "auto" and (use_cuda or cpu_has_bf16())
    bf16 = cfg.train.precision.startswith("bf16") or auto
    net = train_detector(patches, cfg.nodule, seed=cfg.train.seed, bf16=bf16, device=device, log=log)
    add_detector_to_checkpoint(Path(run_dir) / "checkpoints" / "best.ckpt", net, cfg.nodule)
    return time.perf_counter() - t0
