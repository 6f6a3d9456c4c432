"""Training with PyTorch Lightning: the LightningModule orchestrates; model, losses and augmentation stay pure.

``train(cache, run_dir, cfg)`` writes into RUN_DIR (see docs/architecture.md):
``checkpoints/best.ckpt`` (best per-patient validation Dice), ``checkpoints/last.ckpt``, ``config.yaml``,
``metrics.csv``, ``loss_curves.png`` and TensorBoard logs in ``tb/``.

Validation Dice is per patient volume: every slice of each validation case is predicted (batched), the
sigmoid probabilities are thresholded at 0.5, Dice is computed on the whole volume, and the mean over
patients is reported. A case whose ground truth and prediction are both empty has no Dice (NaN, left out of
the mean, as ``evaluate`` and nnU-Net do); empty ground truth with any predicted voxel scores 0. (Task06
validation cases all contain tumour, so this choice does not change Task06 numbers.) Under DDP each rank
scores its share of the patients and one all-reduce of a fixed-size tensor combines them on every rank (no
rank-dependent collectives, no deadlock).

Elsewhere: reading checkpoints (``load_checkpoint``, ``LoadedModel``) is ``inference.checkpoint``; metrics.csv,
loss curves and the example figure are ``training.artifacts``; the ``pl.Trainer`` set-up, callbacks, checkpoint
writing and LR schedule shared with the 3D trainer are ``training.trainer``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungtumor.core.config import PrepConfig, RunConfig
from lungtumor.core.config_io import config_from_dict, from_dict, save_config, to_dict, validate
from lungtumor.core.errors import InputError, ensure_writable_dir

# ``X as X``: names that lived here before the split, still importable from here
from lungtumor.inference.checkpoint import read_checkpoint
from lungtumor.models import create_model, padded_size
from lungtumor.preprocessing.cache import (
    PreparedCache,
    SliceTable,
    append_blob,
    context_step,
    resident_fits,
    stack_context,
)
from lungtumor.training.artifacts import example_figure, write_history
from lungtumor.training.augment import augment_batch, augment_crop_batch, random_crop
from lungtumor.training.card import build_card
from lungtumor.training.detector import train_for_run
from lungtumor.training.losses import make_loss
from lungtumor.training.sampling import (
    EpochBatchSampler,
    IndexDataset,
    ResidentSlices,
    SliceDataset,
    lesion_balanced_weights,
    oversample_weights,
)
from lungtumor.training.trainer import (
    HistoryInCheckpoint,
    LightningModuleBase,
    TrainResult,
    check_run_folder,
    device_count,
    ema_callbacks,
    make_trainer,
    pl,
    quiet_lightning,
    refuse_existing_run,
    resolve_runtime,
    train_result,
    trainer_devices,
    warmup_cosine,
)

log = logging.getLogger("lungtumor.training")


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


PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
DATA_ON_DEVICE = ("auto", "always", "never")
SCHEDULES = ("constant", "cosine")


# ----------------------------------------------------------------------------- the LightningModule


class SegModule(HistoryInCheckpoint, LightningModuleBase):
    """Orchestrates training: data fetch, batched augmentation, loss, per-patient validation, logging.

    ``hyper_parameters["lungtumor"]`` = {"config": to_dict(RunConfig), "stats": {...}, "prep": {...},
    "card": {...}} (the model card, ``training.card``).
    Call :meth:`attach` with the cache before fitting.
    """

    def __init__(self, lungtumor: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"lungtumor": lungtumor}, logger=False)
        self.cfg = config_from_dict(lungtumor["config"])
        self.net = create_model(self.cfg.model)
        self.loss_fn = make_loss(self.cfg.train.loss)
        self.k = self.cfg.train.context_slices
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self._compiled: list[nn.Module] = []
        self._step_losses: list[torch.Tensor] = []
        self._gen: torch.Generator | None = None
        self._t_last: float | None = None
        self._rate = 0.0
        self.run_dir: Path | None = None
        self.cache: PreparedCache | None = None
        self.resident: ResidentSlices | None = None

    # -- data
    def attach(self, cache: PreparedCache, run_dir: Path) -> None:
        """Use ``cache`` (train and val cases) and write run artefacts into ``run_dir``."""
        self.cache, self.run_dir = cache, run_dir
        self.table = SliceTable(cache, cache.train + cache.val)
        self.train_ids = self.table.slices_of(cache.train)
        tumour = self.table.tumour[self.train_ids]
        self.weights, self.ratio = oversample_weights(tumour)
        if not self.cfg.train.oversample:
            self.weights = np.ones_like(self.weights)
        elif self.cfg.train.lesion_balance > 0:
            self.weights = lesion_balanced_weights(
                cache, self.table, self.train_ids, self.weights, self.cfg.train.lesion_balance
            )
        self.n_tumour_slices = int(tumour.sum())

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        mode = self.cfg.train.data_on_device
        names = self.table.names
        if mode == "always" or (mode == "auto" and resident_fits(self.cache, names, device)):
            self.resident = ResidentSlices(self.cache, self.table, device, self.cfg.train.context_mm)
        if self.cfg.train.compile and not self._compiled:
            self._compiled.append(torch.compile(self.net))

    def steps_per_epoch(self, world: int) -> int:
        """Batches per epoch and rank: one pass over the training slices, capped by max_steps_per_epoch."""
        steps = max(1, len(self.train_ids) // (self.cfg.train.batch_size * world))
        cap = self.cfg.train.max_steps_per_epoch
        return min(steps, cap) if cap > 0 else steps

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = EpochBatchSampler(
            self.train_ids, self.weights, self.cfg.train.batch_size, self.steps_per_epoch(world),
            self.cfg.train.seed, rank, world,
        )  # fmt: skip
        if self.resident is not None:
            return torch.utils.data.DataLoader(IndexDataset(len(self.table)), batch_sampler=sampler)
        nw = self.cfg.train.num_workers
        return torch.utils.data.DataLoader(
            SliceDataset(self.cache, self.table, self.k, self.cfg.train.context_mm),
            batch_sampler=sampler,
            num_workers=nw,
            persistent_workers=nw > 0,
            pin_memory=self.trainer.strategy.root_device.type == "cuda",
        )

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        n = len(self.cache.val)
        mine = list(range(rank, n, world))
        mine += [-1] * (math.ceil(n / world) - len(mine))  # equal batch counts on every rank
        return torch.utils.data.DataLoader(mine, batch_size=None)

    def _fetch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            return self.resident.gather(batch, self.k)
        return batch[0], batch[1]

    def _case(self, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validation case ``c``: (img float16 (z, H, W), seg uint8 (z, H, W), blob float16 (z, H, W) or
        None) on this device."""
        name = self.cache.val[c]
        if self.resident is not None:
            return self.resident.case(self.table.names.index(name))
        img = torch.from_numpy(np.array(self.cache.image(name), dtype=np.float16))
        seg = torch.from_numpy(np.array(self.cache.seg(name), dtype=np.uint8))
        blob = None
        if self.cache.has_blob:
            blob = torch.from_numpy(np.array(self.cache.blob(name), dtype=np.float16)).to(self.device)
        return img.to(self.device), seg.to(self.device), blob

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self._compiled[0] if self._compiled else self.net)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised CT -> logits (B, 1, H, W)."""
        return self._net(x)

    # -- training
    def on_fit_start(self) -> None:
        if self.cfg.train.channels_last:  # faster on CUDA and on the CPU (oneDNN): benchmarks/layout_speed.py
            self.net.to(memory_format=torch.channels_last)
        if self.trainer.is_global_zero:
            save_config(self.cfg, self.run_dir / "config.yaml")
            log.info(
                "oversampling tumour slices x%.2f (%d of %d training slices contain tumour)",
                self.ratio, self.n_tumour_slices, len(self.train_ids),
            )  # fmt: skip
            if self.logger is not None:
                self.logger.log_metrics({"data/oversample_ratio": self.ratio}, step=0)

    def _generator(self) -> torch.Generator:
        if self._gen is None or self._gen.device != self.device:
            self._gen = torch.Generator(device=self.device)
        seed = (self.cfg.train.seed * 1_000_003 + self.global_step) * 1024 + self.global_rank
        self._gen.manual_seed(seed % (2**63))
        return self._gen

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        img, seg = self._fetch(batch)
        t, g = self.cfg.train, self._generator()
        if t.crop_size > 0 and t.augment.p > 0:  # augmentation and crop in one grid_sample of crop size
            img, seg = augment_crop_batch(img, seg, t.augment, t.crop_size, g, t.crop_tumour_fraction)
        elif t.crop_size > 0:
            img, seg = random_crop(img.float(), seg.float(), t.crop_size, g, t.crop_tumour_fraction)
        elif t.augment.p > 0:
            img, seg = augment_batch(img, seg, t.augment, g)
        else:
            img, seg = img.float(), seg.float()
        loss = self.loss_fn(self._net(img), seg)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=img.shape[0])
        self._step_losses.append(loss.detach())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            rate = self.cfg.train.batch_size * self.trainer.world_size / (now - self._t_last)
            self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
            self.log("slices_per_s", self._rate, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        self._t_last = now

    def on_train_epoch_start(self) -> None:
        self._t_last = None
        self._epoch_t0 = time.perf_counter()

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        opt = torch.optim.Adam(self.net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        if t.lr_schedule == "constant":
            return opt
        total = t.epochs * self.steps_per_epoch(self.trainer.world_size)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": warmup_cosine(opt, total), "interval": "step"},
        }

    # -- validation: per patient volume
    def on_validation_epoch_start(self) -> None:
        n = len(self.cache.val)
        self._vacc = torch.zeros(2 * n + 2, dtype=torch.float64, device=self.device)
        self._example: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        c = int(batch)
        if c < 0:
            return
        img, seg, blob = self._case(c)
        z = img.shape[0]
        step = context_step(self.cfg.train.context_mm, self.cache.cases[self.cache.val[c]].dz_mm)
        inter = psum = tsum = 0
        loss_sum = 0.0
        show = int(seg.flatten(1).sum(1).argmax()) if c == 0 else -1
        bs = max(1, self.cfg.train.val_batch_size)
        for a in range(0, z, bs):
            zi = torch.arange(a, min(z, a + bs), device=img.device)
            x = append_blob(stack_context(img, zi, self.k, step).float(), blob, zi)
            t = seg[zi][:, None].float()
            logits = self._net(x).float()
            loss_sum += float(self.loss_fn(logits, t)) * len(zi)
            pred = torch.sigmoid(logits) >= 0.5  # threshold on probabilities
            tb = t.bool()
            inter += int((pred & tb).sum())
            psum += int(pred.sum())
            tsum += int(tb.sum())
            if a <= show < a + len(zi):
                j = show - a
                self._example = (
                    x[j, self.k].cpu().numpy(),
                    t[j, 0].cpu().numpy(),
                    pred[j, 0].float().cpu().numpy(),
                )
        n = len(self.cache.val)
        if psum + tsum > 0:  # a tumour-free patient with an empty prediction has no Dice (NaN, as evaluate)
            self._vacc[c] += 2.0 * inter / (psum + tsum)
            self._vacc[n + c] += 1
        self._vacc[2 * n] += loss_sum
        self._vacc[2 * n + 1] += z

    def on_validation_epoch_end(self) -> None:
        n = len(self.cache.val)
        local_losses = torch.stack(self._step_losses).float().cpu() if self._step_losses else torch.zeros(0)
        tl = torch.tensor(
            [float(local_losses.sum()), float(local_losses.numel())], dtype=torch.float64, device=self.device
        )
        acc = self.trainer.strategy.reduce(torch.cat([self._vacc, tl]), reduce_op="sum")
        acc = acc.cpu().double()
        per_case, val_dice = patient_dice(acc[:n], acc[n : 2 * n])
        val_loss = float(acc[2 * n] / max(1.0, float(acc[2 * n + 1])))
        train_loss = float(acc[2 * n + 2] / acc[2 * n + 3]) if acc[2 * n + 3] > 0 else float("nan")
        self.log("val_dice", val_dice, prog_bar=True, sync_dist=False)
        self.log("val_loss", val_loss, prog_bar=False, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        steps_done = self.global_step
        step_vals = local_losses.tolist()
        self._step_losses = []
        row = {
            "epoch": self.current_epoch,
            "step": steps_done,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_dice": val_dice,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"])
            if self.trainer.optimizers
            else float("nan"),
            "slices_per_s": float(self._rate),
            "epoch_s": time.perf_counter() - getattr(self, "_epoch_t0", time.perf_counter()),
            "val_dice_per_case": " ".join(f"{d:.4f}" for d in per_case),
        }
        self.record_epoch(steps_done, step_vals, row)
        if self.trainer.is_global_zero:
            if self.logger is not None:
                self.logger.log_metrics({"train_loss_epoch": train_loss}, step=steps_done)
            self._write_artifacts()

    def _write_artifacts(self) -> None:
        write_history(self.history, self.run_dir, self.steps_per_epoch(self.trainer.world_size))
        if (
            self._example is not None
            and self.logger is not None
            and hasattr(self.logger.experiment, "add_figure")
        ):
            self.logger.experiment.add_figure("val/example", example_figure(*self._example), self.global_step)


# ----------------------------------------------------------------------------- train()


def _check_train_config(cfg: RunConfig, source: str) -> None:
    t = cfg.train

    def bad(key: str, msg: str) -> None:
        raise InputError(source, f"{key}: {msg}")

    if t.precision not in PRECISIONS:
        bad("train.precision", f"{t.precision!r} is not one of {', '.join(PRECISIONS)}")
    if t.data_on_device not in DATA_ON_DEVICE:
        bad("train.data_on_device", f"{t.data_on_device!r} is not one of {', '.join(DATA_ON_DEVICE)}")
    if t.lr_schedule not in SCHEDULES:
        bad("train.lr_schedule", f"{t.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    for key in ("num_nodes", "val_every_n_epochs", "log_every_n_steps", "val_batch_size"):
        if getattr(t, key) < 1:
            bad(f"train.{key}", "must be at least 1")
    if t.crop_size and t.crop_size % (2**cfg.model.depth):
        bad("train.crop_size", f"must be 0 (off) or a multiple of {2**cfg.model.depth} (2**model.depth)")
    for key in ("num_workers", "max_steps_per_epoch", "weight_decay", "crop_size"):
        if getattr(t, key) < 0:
            bad(f"train.{key}", "must be >= 0")
    if t.lesion_balance < 0:
        bad("train.lesion_balance", "must be >= 0 (0 = slice-uniform, 1 = every lesion the same mass)")
    if not 0 <= t.crop_tumour_fraction <= 1:
        bad("train.crop_tumour_fraction", "must be a probability in [0, 1]")
    a = t.augment
    if not 0 < a.scale[0] <= a.scale[1]:
        bad("train.augment.scale", "needs 0 < low <= high")
    for key in ("p", "elastic_p"):
        if not 0 <= getattr(a, key) <= 1:
            bad(f"train.augment.{key}", "must be a probability in [0, 1]")
    for key in ("rotation_deg", "elastic_alpha_px", "elastic_sigma_px", "intensity_jitter"):
        if getattr(a, key) < 0:
            bad(f"train.augment.{key}", "must be >= 0")


class _ValidateLastEpoch(pl.Callback if pl else object):  # type: ignore[misc]
    """Validate the final epoch even when ``val_every_n_epochs`` would skip it, so a run always ends with a
    scored model and a best.ckpt (a 1-epoch run with validation every 2 epochs would otherwise have none)."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.check_val_every_n_epoch = 1


def train(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    cfg: RunConfig,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` on a prepared cache and write the run folder ``out``.

    The cache's preprocessing (cache.json ``prep``) replaces ``cfg.prep``, so the saved config describes
    exactly what the model was trained on. ``resume=True`` continues from ``out/checkpoints/last.ckpt``.

    Raises:
        InputError: bad cache, config, or run folder (an existing run without ``resume``, or no
            checkpoint to resume from).
    """
    if pl is None:  # pragma: no cover
        raise InputError("train", "PyTorch Lightning is not installed (pip install lightning)")
    t0 = time.perf_counter()
    data = PreparedCache.open(cache)
    cfg = copy.deepcopy(cfg)
    cfg.prep = from_dict(PrepConfig, data.prep, source=str(data.root / "cache.json"))
    validate(cfg, "config")
    _check_train_config(cfg, "config")
    h, w = data.shape_hw
    if (h, w) != padded_size(h, w, cfg.model.depth):
        ph, pw = padded_size(h, w, cfg.model.depth)
        raise InputError(
            data.root / "cache.json",
            f"slices are {h}x{w}, not a multiple of {2**cfg.model.depth} (2**model.depth); "
            f"prepare with prep.size [{ph}, {pw}] or lower model.depth",
        )
    create_model(cfg.model)  # validates the model settings before anything is written
    accelerator, precision = resolve_runtime(cfg)
    devices = trainer_devices(cfg, accelerator)
    run_dir = ensure_writable_dir(out)
    check_run_folder(run_dir)  # Lightning writes checkpoints/ and tb/: never through a link out of the run
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    child = os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"
    if resume:
        old = read_checkpoint(last)["hyper_parameters"]["lungtumor"]["config"]
        if old.get("model") != to_dict(cfg.model) or old.get("prep") != to_dict(cfg.prep):
            raise InputError(
                last, "model or prep settings differ from the run being resumed; use the run's config.yaml"
            )
        if (float(old.get("train", {}).get("ema_decay", 0.0)) > 0) != (cfg.train.ema_decay > 0):
            # with EMA the checkpoint's state_dict holds the average and the raw weights sit beside it
            raise InputError(
                last, "train.ema_decay was switched on or off; resume with the run's config.yaml"
            )
    elif last.exists() and not child:
        refuse_existing_run(run_dir)

    n_proc = device_count(devices) * cfg.train.num_nodes
    strategy: Any = cfg.train.strategy
    if strategy == "auto" and n_proc > 1:
        strategy = "ddp"
    with quiet_lightning():
        pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
        # the 2D checkpoints say nodule.enabled: false until the detector is stored beside the 2D weights
        # (train_for_run): a best.ckpt written mid-run is always a complete, loadable 2D model
        ck_cfg = copy.deepcopy(cfg)
        ck_cfg.nodule.enabled = False
        # what the model saw: its model card (training data, preset; validation added per checkpoint)
        card = build_card(data.source, cfg, len(data.train), len(data.val))
        module = SegModule(
            {"config": to_dict(ck_cfg), "stats": dict(data.stats), "prep": dict(data.prep), "card": card}
        )
        module.attach(data, run_dir)
        trainer = make_trainer(
            run_dir, cfg, accelerator, precision,
            progress=progress,
            log_every_n_steps=cfg.train.log_every_n_steps,
            callbacks=(_ValidateLastEpoch(), *ema_callbacks(cfg.train.ema_decay)),
            devices=devices,
            num_nodes=cfg.train.num_nodes,
            strategy=strategy,
            use_distributed_sampler=False,
        )  # fmt: skip
        trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    if cfg.nodule.enabled and trainer.is_global_zero:  # the 3D nodule detector beside the 2D model
        train_for_run(data, run_dir, cfg, progress=progress)
    return train_result(
        run_dir, module.history, trainer, module.ratio, t0, is_global_zero=trainer.is_global_zero
    )
