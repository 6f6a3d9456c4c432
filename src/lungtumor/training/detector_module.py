"""The nodule detector's LightningModule: batches of candidate cubes, half on tumours, optional hard-negative
mining at half-time (off by default, docs/decisions/0014), BCE + soft Dice, AdamW with a one-cycle schedule
(``train_detector`` runs it under ``pl.Trainer``).

Candidate cubes come from ``training.detector``; prediction with the detector is ``inference.detector``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lungtumor.core.config import NoduleConfig
from lungtumor.core.errors import InputError
from lungtumor.inference.detector import CL3D, bf16_autocast, cube_logits, cubes_in
from lungtumor.models.nodule3d import NodulePatchNet
from lungtumor.training.sampling import IndexDataset
from lungtumor.training.trainer import LightningModuleBase, pl, quiet_lightning


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


def _augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips of all three axes and in-plane transpose for cubes (B, P, P, P) and masks."""
    for ax in (1, 2, 3):
        if rng.random() < 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    if rng.random() < 0.5:
        x, y = np.swapaxes(x, 2, 3), np.swapaxes(y, 2, 3)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def detector_loss(
    score: torch.Tensor, seg: torch.Tensor, label: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """BCE on the scores (B,) + BCE on the segmentation logits (B, P, P, P) + soft Dice over the cubes that
    hold tumour (``y`` the float masks, ``label`` 1.0 for tumour-centred cubes)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    prob = torch.sigmoid(seg)
    has = y.sum(dim=(1, 2, 3)) > 0
    inter = (prob * y).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3))
    soft_dice = (1 - (2 * inter + 1) / (denom + 1))[has].mean() if has.any() else seg.sum() * 0
    return bce(score, label) + bce(seg, y) + soft_dice


class DetectorModule(LightningModuleBase):
    """One optimiser step per loader item. The loader yields only the step number; the batch is drawn here from
    a numpy generator seeded with ``seed``, so that the hard negatives mined at half-time (with the net as
    trained so far) take part in the draws that follow, and the same patches and seed give the same weights."""

    def __init__(
        self, patches: PatchSet, cfg: NoduleConfig, *, seed: int, bf16: bool, log: Callable | None
    ) -> None:
        super().__init__()
        self.patches, self.cfg, self.bf16, self.log_fn = patches, cfg, bf16, log
        self.pos = np.flatnonzero(patches.lesion >= 0)
        self.neg = np.flatnonzero(patches.lesion < 0)
        _, inv = np.unique(patches.lesion[self.pos], return_inverse=True)
        weight = 1.0 / np.bincount(inv)[inv]
        self.weight = weight / weight.sum()  # each lesion as likely as any other
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.net = NodulePatchNet(cfg.channels).to(memory_format=CL3D)
        self.hard = np.zeros(0, np.int64)
        self.t0 = time.perf_counter()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(IndexDataset(self.cfg.steps), batch_size=None, shuffle=False)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.cfg.lr, total_steps=self.cfg.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _draw(self) -> np.ndarray:
        """Indices of one batch: half tumour-centred, the rest negatives (``hard_negatives`` of them hard)."""
        cfg = self.cfg
        half = cfg.batch_size // 2
        n_neg = cfg.batch_size - half
        n_hard = int(round(n_neg * cfg.hard_negatives)) if len(self.hard) else 0
        return np.concatenate(
            [
                self.rng.choice(self.pos, half, p=self.weight),
                self.rng.choice(self.neg, n_neg - n_hard),
                self.rng.choice(self.hard, n_hard) if n_hard else np.zeros(0, np.int64),
            ]
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        cfg, dev = self.cfg, self.device
        if batch_idx == cfg.steps // 2 and cfg.hard_negatives > 0:
            self.hard = self._mine()
            self.net.train()
        idx = self._draw()
        x, y = _augment(self.rng, self.patches.hu[idx], self.patches.seg[idx])
        label = torch.from_numpy((self.patches.lesion[idx] >= 0).astype(np.float32)).to(dev)
        with bf16_autocast(dev, self.bf16):
            score, seg = self.net(cubes_in(x, dev))
        loss = detector_loss(
            score.float(), seg.float(), label, torch.from_numpy(y.astype(np.float32)).to(dev)
        )
        if self.logger is not None:
            self.log("detector_loss", loss.detach(), on_step=True, prog_bar=False, logger=True)
        if self.log_fn is not None and (batch_idx % 100 == 0 or batch_idx == cfg.steps - 1):
            self.log_fn(
                f"nodule detector step {batch_idx + 1}/{cfg.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - self.t0:.0f} s)"
            )
        return loss

    @torch.no_grad()
    def _mine(self) -> np.ndarray:
        """Indices of the hardest quarter of ``cfg.mine_pool`` random negatives (highest scores)."""
        pool = self.rng.choice(self.neg, min(len(self.neg), self.cfg.mine_pool), replace=False)
        self.net.eval()
        order = np.argsort(
            -cube_logits(self.net, self.patches.hu, self.device, self.bf16, pool), kind="stable"
        )
        return pool[order[: max(1, len(pool) // 4)]]


def train_detector(
    patches: PatchSet,
    cfg: NoduleConfig,
    *,
    seed: int = 0,
    bf16: bool = True,
    device: torch.device | str = "cpu",
    log: Callable | None = None,
    tb_dir: Path | None = None,
) -> NodulePatchNet:
    """Train the detector on ``patches`` under ``pl.Trainer`` (``cfg.steps`` steps) and return its net (CPU, eval).

    Each batch is half tumour-centred cubes (each lesion as likely as any other, so small nodules weigh like
    big masses) and half other candidates. Hard negatives (``cfg.hard_negatives`` > 0; 0 by default, decision
    0014: no effect over 3 seeds): halfway, ``cfg.mine_pool`` random non-tumour
    candidates are scored and the quarter that looks most like tumour (vessel ends and junctions, hilar
    vessels) becomes a hard pool; from then on ``cfg.hard_negatives`` of each batch's negatives come from it.
    ``bf16``: the forward pass under bf16 autocast (the loss in float32). ``tb_dir``: TensorBoard logs of the
    loss go to ``tb_dir/tb/detector`` (none when None). Seeded: the same patches and seed give the same weights.

    Raises:
        InputError: no candidate lies in a tumour, or none lies outside one.
    """
    n_pos = int((patches.lesion >= 0).sum())
    if n_pos == 0 or n_pos == len(patches.lesion):
        raise InputError(
            "nodule detector",
            f"needs tumour and non-tumour candidates, got {n_pos} and {len(patches.lesion) - n_pos} "
            "(too few or too small tumours in the training cases? set nodule.enabled: false)",
        )
    module = DetectorModule(patches, cfg, seed=seed, bf16=bf16, log=log)
    dev = torch.device(device)
    logger = TensorBoardLogger(str(tb_dir), name="tb", version="detector") if tb_dir is not None else False
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="gpu" if dev.type == "cuda" else "cpu",
            devices=[dev.index] if dev.type == "cuda" and dev.index is not None else 1,
            precision="32-true",  # bf16 autocast of the forward pass is the module's own (``bf16``)
            max_epochs=1,
            max_steps=cfg.steps,
            logger=logger,
            log_every_n_steps=10,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module)
    return module.net.cpu().eval()
