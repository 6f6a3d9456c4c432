"""Training with PyTorch Lightning: the LightningModule orchestrates; model, losses and augmentation stay pure.

``train(cache, run_dir, cfg)`` writes into RUN_DIR (see docs/design.md):
``checkpoints/best.ckpt`` (best per-patient validation Dice), ``checkpoints/last.ckpt``, ``config.yaml``,
``metrics.csv``, ``loss_curves.png`` and TensorBoard logs in ``tb/``.

Validation Dice is per patient volume: every slice of each validation case is predicted (batched), the
sigmoid probabilities are thresholded at 0.5, Dice is computed on the whole volume, and the mean over
patients is reported. A case whose ground truth and prediction are both empty scores 1 (a correct "no
tumour"); empty ground truth with any predicted voxel scores 0. (Task06 validation cases all contain tumour,
so this choice does not change Task06 numbers.) Under DDP each rank scores its share of the patients and one
all-reduce of a fixed-size tensor combines them on every rank (no rank-dependent collectives, no deadlock).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import logging
import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungtumor.augment import augment_batch, augment_crop_batch, random_crop
from lungtumor.config import (
    PrepConfig,
    RunConfig,
    config_from_dict,
    from_dict,
    save_config,
    to_dict,
    validate,
)
from lungtumor.data import (
    EpochBatchSampler,
    IndexDataset,
    PreparedCache,
    ResidentSlices,
    SliceDataset,
    SliceTable,
    lesion_balanced_weights,
    oversample_weights,
    resident_fits,
    stack_context,
)
from lungtumor.errors import InputError, atomic_path, atomic_write_text, ensure_writable_dir
from lungtumor.losses import make_loss
from lungtumor.models import create_model, padded_size

log = logging.getLogger("lungtumor.training")

try:  # Lightning is needed for training only; load_checkpoint works without it.
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    _LightningModule: Any = pl.LightningModule
except ImportError:  # pragma: no cover
    pl = None
    _LightningModule = nn.Module

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
DATA_ON_DEVICE = ("auto", "always", "never")
SCHEDULES = ("constant", "cosine")


# ----------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    best_checkpoint: Path
    best_dice: float
    best_epoch: int
    epochs: int
    oversample_ratio: float
    seconds: float
    is_global_zero: bool = True

    def __str__(self) -> str:
        return (
            f"trained {self.epochs} epochs in {self.seconds:.0f} s; best per-patient val Dice {self.best_dice:.4f} "
            f"(epoch {self.best_epoch}); tumour slices oversampled x{self.oversample_ratio:.2f}; "
            f"checkpoint {self.best_checkpoint}"
        )


@dataclass
class LoadedModel:
    """A model restored from a checkpoint, ready for prediction.

    Attributes:
        model: the network in eval mode, on the CPU; input (B, C, H, W), logits (B, 1, H, W).
        config: the resolved RunConfig of the run (``config.prep`` is the cache's preprocessing).
        stats: intensity statistics of the training set, e.g. ``{"mean": ..., "std": ...}``.
        prep: the cache's preprocessing parameters as a plain dict.
        path: the checkpoint file.
    """

    model: nn.Module
    config: RunConfig
    stats: dict[str, float]
    prep: dict[str, Any]
    path: Path


# ----------------------------------------------------------------------------- checkpoints


def _is_pickle_or_torch_zip(path: Path) -> bool:
    """True when the file is a torch zip archive or starts like a pickle (protocol >= 2)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() and _is_pickle_or_torch_zip(path):
            raise InputError(
                path, "refused: the file holds pickled objects other than tensors (unsafe, not a lungtumor checkpoint)"
            ) from None
        raise InputError(path, "not a readable checkpoint: not a PyTorch file, or corrupt") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise InputError(path, f"not a readable checkpoint: truncated or not a PyTorch file ({first})") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means a bad file
        raise InputError(path, f"not a readable checkpoint ({type(e).__name__})") from None
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("lungtumor"), dict) or "state_dict" not in ck:
        raise InputError(path, "not a lungtumor checkpoint (no hyper_parameters['lungtumor'])")
    return ck


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Load a lungtumor checkpoint (a .ckpt file, or a run folder: then its checkpoints/best.ckpt).

    Uses ``torch.load(weights_only=True)``: nothing but tensors and primitives is unpickled.

    Raises:
        InputError: missing, truncated or foreign file (the message names it).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "best.ckpt" if (p / "checkpoints").is_dir() else p / "best.ckpt"
    ck = _read_checkpoint(p)
    info = ck["hyper_parameters"]["lungtumor"]
    try:
        cfg = config_from_dict(info["config"], source=str(p))
        model = create_model(cfg.model)
        state = {k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise InputError(p, f"checkpoint does not match its config ({detail[:160]})") from None
    model.eval()
    stats = {k: float(v) for k, v in dict(info.get("stats", {})).items()}
    return LoadedModel(model, cfg, stats, dict(info.get("prep", to_dict(cfg.prep))), p)


class AtomicCheckpointIO(TorchCheckpointIO if pl else object):  # type: ignore[misc]
    """Writes checkpoints to a temporary file and renames it, so a killed run never leaves a torn .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())


# ----------------------------------------------------------------------------- the LightningModule


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over min(100, 5 %) of the steps, then cosine decay to 2 % of the base learning rate."""
    total = max(1, total_steps)
    warm = min(100, total // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def resolve_runtime(cfg: RunConfig) -> tuple[str, str]:
    """(accelerator, precision) after resolving ``"auto"``: bf16-mixed on CUDA, 32-bit on the CPU."""
    acc = cfg.train.accelerator
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    prec = cfg.train.precision
    if prec == "auto":
        prec = "bf16-mixed" if acc in ("gpu", "cuda") else "32-true"
    elif prec == "32":
        prec = "32-true"
    return acc, prec


class HistoryInCheckpoint:
    """Mixin for our LightningModules: ``self.history`` (epoch rows, step losses) travels inside checkpoints,
    so a resumed run's metrics.csv and loss curves continue where they stopped."""

    history: dict[str, list]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lungtumor_history"] = copy.deepcopy(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = copy.deepcopy(checkpoint.get("lungtumor_history", {"epochs": [], "steps": []}))


class SegModule(HistoryInCheckpoint, _LightningModule):
    """Orchestrates training: data fetch, batched augmentation, loss, per-patient validation, logging.

    ``hyper_parameters["lungtumor"]`` = {"config": to_dict(RunConfig), "stats": {...}, "prep": {...}}.
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
            self.resident = ResidentSlices(self.cache, self.table, device)
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
            SliceDataset(self.cache, self.table, self.k),
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

    def _case(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation case ``c``: (img float16 (z, H, W), seg uint8 (z, H, W)) on this device."""
        name = self.cache.val[c]
        if self.resident is not None:
            return self.resident.case(self.table.names.index(name))
        img = torch.from_numpy(np.array(self.cache.image(name), dtype=np.float16))
        seg = torch.from_numpy(np.array(self.cache.seg(name), dtype=np.uint8))
        return img.to(self.device), seg.to(self.device)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self._compiled[0] if self._compiled else self.net)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised CT -> logits (B, 1, H, W)."""
        return self._net(x)

    # -- training
    def on_fit_start(self) -> None:
        if self.cfg.train.channels_last:  # faster on CUDA and on the CPU (oneDNN), see BENCHMARKS.md
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
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warmup_cosine(opt, total), "interval": "step"}}

    # -- validation: per patient volume
    def on_validation_epoch_start(self) -> None:
        n = len(self.cache.val)
        self._vacc = torch.zeros(2 * n + 2, dtype=torch.float64, device=self.device)
        self._example: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        c = int(batch)
        if c < 0:
            return
        img, seg = self._case(c)
        z = img.shape[0]
        inter = psum = tsum = 0
        loss_sum = 0.0
        show = int(seg.flatten(1).sum(1).argmax()) if c == 0 else -1
        bs = max(1, self.cfg.train.val_batch_size)
        for a in range(0, z, bs):
            zi = torch.arange(a, min(z, a + bs), device=img.device)
            x = stack_context(img, zi, self.k).float()
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
        dice = 1.0 if psum + tsum == 0 else 2.0 * inter / (psum + tsum)
        n = len(self.cache.val)
        self._vacc[c] += dice
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
        per_case = (acc[:n] / acc[n : 2 * n].clamp(min=1)).tolist()
        val_dice = float(acc[:n].sum() / max(1.0, float(acc[n : 2 * n].sum())))
        val_loss = float(acc[2 * n] / max(1.0, float(acc[2 * n + 1])))
        train_loss = float(acc[2 * n + 2] / acc[2 * n + 3]) if acc[2 * n + 3] > 0 else float("nan")
        self.log("val_dice", val_dice, prog_bar=True, sync_dist=False)
        self.log("val_loss", val_loss, prog_bar=False, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        steps_done = self.global_step
        step_vals = local_losses.tolist()
        first = steps_done - len(step_vals)
        self.history["steps"].extend([[first + i + 1, v] for i, v in enumerate(step_vals)])
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
        self.history["epochs"] = [r for r in self.history["epochs"] if r["epoch"] != row["epoch"]] + [row]
        if self.trainer.is_global_zero:
            if self.logger is not None:
                self.logger.log_metrics({"train_loss_epoch": train_loss}, step=steps_done)
            self._write_artifacts()

    def _write_artifacts(self) -> None:
        rows = self.history["epochs"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        write_loss_curves(
            self.history, self.run_dir / "loss_curves.png", self.steps_per_epoch(self.trainer.world_size)
        )
        if (
            self._example is not None
            and self.logger is not None
            and hasattr(self.logger.experiment, "add_figure")
        ):
            self.logger.experiment.add_figure("val/example", example_figure(*self._example), self.global_step)



# ----------------------------------------------------------------------------- figures


def example_figure(ct: np.ndarray, gt: np.ndarray, pred: np.ndarray):
    """Matplotlib figure: CT slice | ground truth | prediction, each (H, W)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    for i, (im, title) in enumerate(((ct, "CT slice"), (gt, "ground truth"), (pred, "prediction"))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(ct, cmap="gray")
        if i:
            ax.imshow(np.ma.masked_where(im < 0.5, im), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _smooth(v: np.ndarray, n: int) -> np.ndarray:
    if len(v) < 3:
        return v
    alpha = 2.0 / (max(2, n) + 1)
    out = np.empty_like(v)
    acc = v[0]
    for i, x in enumerate(v):
        acc = alpha * x + (1 - alpha) * acc
        out[i] = acc
    return out


def write_loss_curves(history: dict[str, list], path: Path, steps_per_epoch: int) -> None:
    """Write a PNG of the smoothed per-step training loss, epoch val loss and val Dice (x axis in epochs)."""
    from matplotlib.figure import Figure

    steps = np.asarray(history["steps"], dtype=np.float64).reshape(-1, 2)
    rows = history["epochs"]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    spe = max(1, steps_per_epoch)
    if len(steps):
        ax.plot(steps[:, 0] / spe, steps[:, 1], color="tab:blue", alpha=0.2, lw=0.8)
        ax.plot(
            steps[:, 0] / spe,
            _smooth(steps[:, 1], max(5, spe // 2)),
            color="tab:blue",
            label="train loss (smoothed)",
        )
    if rows:
        ep = np.array([r["epoch"] + 1 for r in rows], dtype=float)
        ax.plot(ep, [r["val_loss"] for r in rows], "o-", color="tab:orange", label="val loss")
        ax2 = ax.twinx()
        ax2.plot(ep, [r["val_dice"] for r in rows], "s--", color="tab:green", label="val Dice (per patient)")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("val Dice")
        ax2.legend(loc="upper right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


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
    for key in ("devices", "num_nodes", "val_every_n_epochs", "log_every_n_steps", "val_batch_size"):
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


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's informational prints and known-harmless warnings (library code prints nothing)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pat in (
            ".*does not have many workers.*",
            ".*smaller than the logging interval.*",
            ".*Checkpoint directory .* exists and is not empty.*",
            ".*is an invalid version and will not be supported.*",
            ".*LeafSpec.*",
            ".*The `srun` command is available.*",
            ".*sync_dist=True.*",
        ):
            warnings.filterwarnings("ignore", message=pat)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels, strict=True):
                lg.setLevel(lv)


class _ValidateLastEpoch(pl.Callback if pl else object):  # type: ignore[misc]
    """Validate the final epoch even when ``val_every_n_epochs`` would skip it, so a run always ends with a
    scored model and a best.ckpt (a 1-epoch run with validation every 2 epochs would otherwise have none)."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.check_val_every_n_epoch = 1


class _Bar(TQDMProgressBar if pl else object):  # type: ignore[misc]
    """Progress bar with epoch, loss and slices/s (no logger version number)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


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
    run_dir = ensure_writable_dir(out)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    child = os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"
    if resume:
        old = _read_checkpoint(last)["hyper_parameters"]["lungtumor"]["config"]
        if old.get("model") != to_dict(cfg.model) or old.get("prep") != to_dict(cfg.prep):
            raise InputError(
                last, "model or prep settings differ from the run being resumed; use the run's config.yaml"
            )
    elif last.exists() and not child:
        raise InputError(
            run_dir,
            "already holds a training run (checkpoints/last.ckpt); pass --resume or choose a new --out",
        )

    accelerator, precision = resolve_runtime(cfg)
    n_proc = cfg.train.devices * cfg.train.num_nodes
    strategy: Any = cfg.train.strategy
    if strategy == "auto" and n_proc > 1:
        strategy = "ddp"
    with _quiet_lightning():
        pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
        module = SegModule({"config": to_dict(cfg), "stats": dict(data.stats), "prep": dict(data.prep)})
        module.attach(data, run_dir)
        from lightning.pytorch.loggers import TensorBoardLogger

        best_cb = ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor="val_dice",
            mode="max",
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        callbacks: list[Any] = [best_cb, _ValidateLastEpoch()]
        if progress:
            callbacks.append(_Bar())
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=cfg.train.devices,
            num_nodes=cfg.train.num_nodes,
            strategy=strategy,
            precision=precision,
            max_epochs=cfg.train.epochs,
            logger=TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False),
            callbacks=callbacks,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            check_val_every_n_epoch=cfg.train.val_every_n_epochs,
            log_every_n_steps=cfg.train.log_every_n_steps,
            benchmark=accelerator in ("gpu", "cuda"),
            default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()],
        )
        trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    rows = module.history["epochs"]
    best = max(rows, key=lambda r: r["val_dice"]) if rows else {"val_dice": float("nan"), "epoch": -1}
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=ckpt_dir / "best.ckpt",
        best_dice=float(best["val_dice"]),
        best_epoch=int(best["epoch"]),
        epochs=int(trainer.current_epoch),
        oversample_ratio=module.ratio,
        seconds=time.perf_counter() - t0,
        is_global_zero=trainer.is_global_zero,
    )
