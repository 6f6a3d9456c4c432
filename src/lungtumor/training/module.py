"""The one LightningModule of every recipe: it orchestrates, the plan says how the cache becomes batches.

2D and 2.5D train on slices (``training.slice_plan.SlicePlan``), 3D on patches (``training.patch_plan.PatchPlan``);
the config's ``model.arch`` picks the plan. Everything else is one path: the network (``models.build_model``),
the loss (``train.loss``), the optimiser and warm-up + cosine schedule (``train.lr_schedule``), logging,
per-patient validation Dice and the epoch history in metrics.csv, loss curves and checkpoints.

Validation Dice is per patient volume: the plan predicts each validation case and counts voxels at probability
0.5; Dice is computed on the whole volume and averaged over patients. A case whose ground truth and prediction
are both empty has no Dice (NaN, left out of the mean, as ``evaluate`` and nnU-Net do); empty ground truth with
any predicted voxel scores 0. Under DDP each rank scores its share of the patients and one all-reduce of a
fixed-size tensor combines them on every rank (no rank-dependent collectives, no deadlock).

``hyper_parameters["lungtumor"]`` = {"config": to_dict(RunConfig), "stats": {...}, "prep": {...}, "card": {...}};
``inference.checkpoint`` reads checkpoints without this module.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungtumor.core.config_io import config_from_dict, save_config
from lungtumor.models import build_model, is_3d
from lungtumor.preprocessing.cache import Cache
from lungtumor.training.artifacts import example_figure, write_history
from lungtumor.training.losses import make_loss
from lungtumor.training.patch_plan import PatchPlan
from lungtumor.training.slice_plan import CaseCounts, SlicePlan
from lungtumor.training.trainer import HistoryInCheckpoint, LightningModuleBase, warmup_cosine


def patient_dice(sums: torch.Tensor, counts: torch.Tensor) -> tuple[list[float], float]:
    """Per-patient validation Dice and their mean, from (n,) Dice sums and (n,) counts (0 = no Dice).

    A tumour-free patient predicted empty has no Dice (NaN, excluded from the mean, as ``evaluate`` and
    nnU-Net do); predicted with any tumour it scores 0. The mean is 1 when no patient has a Dice (all
    tumour-free, all predicted empty).
    """
    per_case = torch.where(
        counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan"))
    ).tolist()
    total = float(counts.sum())
    return per_case, float(sums.sum()) / total if total > 0 else 1.0


class SegModule(HistoryInCheckpoint, LightningModuleBase):
    """Orchestrates training of any recipe: batches from the plan, loss, optimiser, validation, logging.

    Call :meth:`attach` with the cache (and the training and validation cases) before fitting.
    """

    def __init__(self, lungtumor: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"lungtumor": lungtumor}, logger=False)
        self.cfg = config_from_dict(lungtumor["config"])
        self.net = build_model(self.cfg)
        self.loss_fn = make_loss(self.cfg.train.loss)
        self.plan: SlicePlan | PatchPlan = PatchPlan(self.cfg) if is_3d(self.cfg) else SlicePlan(self.cfg)
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self._compiled: list[nn.Module] = []
        self._step_losses: list[torch.Tensor] = []
        self._t_last: float | None = None
        self._rate = 0.0
        self.run_dir: Path | None = None
        self.cache: Cache | None = None

    # -- data
    def attach(
        self, cache: Cache, run_dir: Path, train: list[str] | None = None, val: list[str] | None = None
    ) -> None:
        """Train on ``train`` and validate on ``val`` of ``cache`` (default: its splits.json); write run
        artefacts into ``run_dir``."""
        self.cache, self.run_dir = cache, run_dir
        self.val_names = list(cache.val if val is None else val)
        self.plan.attach(cache, list(cache.train if train is None else train), self.val_names)

    @property
    def ratio(self) -> float:
        """Tumour oversampling: slice weight ratio (2D) or the tumour-centred patch fraction (3D)."""
        return self.plan.ratio

    def setup(self, stage: str) -> None:
        self.plan.setup(self.trainer.strategy.root_device)
        if self.cfg.train.compile and not self._compiled:
            self._compiled.append(torch.compile(self.net))

    def steps_per_epoch(self, world: int) -> int:
        """Training batches per epoch and process."""
        return self.plan.steps_per_epoch(world)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self.plan.train_loader(self.trainer)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        """This rank's validation case numbers, padded with -1 so every rank runs as many steps."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        n = len(self.val_names)
        mine = list(range(rank, n, world))
        mine += [-1] * (math.ceil(n / world) - len(mine))
        return torch.utils.data.DataLoader(mine, batch_size=None)

    def net_forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The network (compiled when ``train.compile``) on ``x``; 4D input channels_last when configured."""
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self._compiled[0] if self._compiled else self.net)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, C, H, W) or (B, 1, D, H, W) normalised CT -> logits of the same spatial shape."""
        return self.net_forward(x)

    # -- training
    def on_fit_start(self) -> None:
        self.plan.on_fit_start(self)
        if self.trainer.is_global_zero:
            save_config(self.cfg, self.run_dir / "config.yaml")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        img, seg = self.plan.batch(self, batch)
        loss = self.plan.loss(self.net_forward(img), seg, self.loss_fn)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=img.shape[0])
        self._step_losses.append(loss.detach())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            rate = self.plan.batch_size * self.trainer.world_size / (now - self._t_last)
            self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
            self.log("slices_per_s", self._rate, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        self._t_last = now

    def on_train_epoch_start(self) -> None:
        self._t_last = None
        self._epoch_t0 = time.perf_counter()

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        opt = self.plan.optimizer(self.net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        if t.lr_schedule == "constant":
            return opt
        total = t.epochs * self.steps_per_epoch(self.trainer.world_size)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": warmup_cosine(opt, total), "interval": "step"},
        }

    # -- validation: per patient volume
    def on_validation_epoch_start(self) -> None:
        n = len(self.val_names)
        self._vacc = torch.zeros(2 * n + 2, dtype=torch.float64, device=self.device)
        self._example: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        c = int(batch)
        if c < 0:
            return
        r: CaseCounts = self.plan.validate_case(self, c)
        if r.example is not None:
            self._example = r.example
        n = len(self.val_names)
        if (
            r.psum + r.tsum > 0
        ):  # a tumour-free patient with an empty prediction has no Dice (NaN, as evaluate)
            self._vacc[c] += 2.0 * r.inter / (r.psum + r.tsum)
            self._vacc[n + c] += 1
        self._vacc[2 * n] += r.loss_sum
        self._vacc[2 * n + 1] += r.n_loss

    def on_validation_epoch_end(self) -> None:
        n = len(self.val_names)
        local_losses = torch.stack(self._step_losses).float().cpu() if self._step_losses else torch.zeros(0)
        tl = torch.tensor(
            [float(local_losses.sum()), float(local_losses.numel())], dtype=torch.float64, device=self.device
        )
        acc = self.trainer.strategy.reduce(torch.cat([self._vacc, tl]), reduce_op="sum")
        acc = acc.cpu().double()
        per_case, val_dice = patient_dice(acc[:n], acc[n : 2 * n])
        val_loss = float(acc[2 * n] / acc[2 * n + 1]) if acc[2 * n + 1] > 0 else float("nan")
        train_loss = float(acc[2 * n + 2] / acc[2 * n + 3]) if acc[2 * n + 3] > 0 else float("nan")
        self.log("val_dice", val_dice, prog_bar=True, sync_dist=False)
        if not math.isnan(val_loss):
            self.log("val_loss", val_loss, prog_bar=False, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        step_vals = local_losses.tolist()
        self._step_losses = []
        opts = self.trainer.optimizers
        row = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_dice": val_dice,
            "lr": float(opts[0].param_groups[0]["lr"]) if opts else float("nan"),
            "slices_per_s": float(self._rate),
            "epoch_s": time.perf_counter() - getattr(self, "_epoch_t0", time.perf_counter()),
            "val_dice_per_case": " ".join(f"{d:.4f}" for d in per_case),
        }
        self.record_epoch(self.global_step, step_vals, row)
        if self.trainer.is_global_zero:
            if self.logger is not None:
                self.logger.log_metrics({"train_loss_epoch": train_loss}, step=self.global_step)
            self._write_artifacts()

    def _write_artifacts(self) -> None:
        write_history(self.history, self.run_dir, self.steps_per_epoch(self.trainer.world_size))
        if (
            self._example is not None
            and self.logger is not None
            and hasattr(self.logger.experiment, "add_figure")
        ):
            self.logger.experiment.add_figure("val/example", example_figure(*self._example), self.global_step)
