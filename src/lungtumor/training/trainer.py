"""What every training run (``training.run.train``) sets up around the LightningModule: the ``pl.Trainer``
set-up of a run folder, the progress bar, atomic checkpoint writing, epoch history carried in checkpoints, the
runtime (accelerator, precision) resolution, the warm-up + cosine LR schedule and the ``TrainResult``.

Run folder layout (see docs/architecture.md): ``checkpoints/best.ckpt`` (best ``val_dice``), ``checkpoints/last.ckpt``,
TensorBoard logs in ``tb/``; ``metrics.csv`` and ``loss_curves.png`` come from ``training.artifacts``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from lungtumor.core.config import RunConfig
from lungtumor.core.errors import InputError, atomic_path, check_subdirs
from lungtumor.core.progress import log_line, stderr_is_terminal
from lungtumor.training.card import with_validation

try:  # Lightning is needed for training only; checkpoint.load_checkpoint works without it.
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    LightningModuleBase: Any = pl.LightningModule
except ImportError:  # pragma: no cover
    pl = None
    LightningModuleBase = nn.Module


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


def train_result(
    run_dir: Path, history: dict[str, list], trainer: Any, oversample_ratio: float, t0: float, **kw: Any
) -> TrainResult:
    """The TrainResult of a finished fit: the best epoch by ``val_dice`` in ``history``, seconds since ``t0``."""
    rows = history["epochs"]
    best = max(rows, key=lambda r: r["val_dice"]) if rows else {"val_dice": float("nan"), "epoch": -1}
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=run_dir / "checkpoints" / "best.ckpt",
        best_dice=float(best["val_dice"]),
        best_epoch=int(best["epoch"]),
        epochs=int(trainer.current_epoch),
        oversample_ratio=oversample_ratio,
        seconds=time.perf_counter() - t0,
        **kw,
    )


#: The sub-folders of a run folder that Lightning creates and writes (checkpoints, TensorBoard logs).
RUN_SUBDIRS = ("checkpoints", "tb", "tb/detector")


def check_run_folder(run_dir: Path) -> None:
    """Refuse a run folder whose ``checkpoints``/``tb`` sub-folder is a symbolic link out of it, before anything
    is written (Lightning writes there through its own code; ``core.errors.check_subdirs``)."""
    check_subdirs(run_dir, *RUN_SUBDIRS)


def refuse_existing_run(run_dir: Path) -> NoReturn:
    """Raise the error for a fresh (not resumed) run into a folder that already holds a run."""
    raise InputError(
        run_dir,
        "already holds a training run (checkpoints/last.ckpt); pass --resume or choose a new --out",
    )


class AtomicCheckpointIO(TorchCheckpointIO if pl else object):  # type: ignore[misc]
    """Writes checkpoints to a temporary file and renames it, so a killed run never leaves a torn .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        check_subdirs(path.parent.parent, path.parent.name)  # never through a link out of the run folder
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())


class HistoryInCheckpoint:
    """Mixin for our LightningModules: ``self.history`` (epoch rows, step losses) travels inside checkpoints,
    so a resumed run's metrics.csv and loss curves continue where they stopped."""

    history: dict[str, list]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lungtumor_history"] = copy.deepcopy(self.history)
        hp = checkpoint.get("hyper_parameters")
        info = hp.get("lungtumor") if isinstance(hp, dict) else None
        if isinstance(info, dict) and isinstance(
            info.get("card"), dict
        ):  # the card: these weights' validation
            card = with_validation(
                info["card"], self.history["epochs"], int(getattr(self, "current_epoch", -1))
            )
            checkpoint["hyper_parameters"] = {**hp, "lungtumor": {**info, "card": card}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = copy.deepcopy(checkpoint.get("lungtumor_history", {"epochs": [], "steps": []}))

    def record_epoch(self, step: int, step_losses: list[float], row: dict[str, Any]) -> None:
        """Append the losses of the steps up to ``step`` and put ``row`` in place of any row of its epoch."""
        first = step - len(step_losses)
        self.history["steps"].extend([[first + i + 1, v] for i, v in enumerate(step_losses)])
        self.history["epochs"] = [r for r in self.history["epochs"] if r["epoch"] != row["epoch"]] + [row]


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


def device_count(devices: int | list[int]) -> int:
    """How many devices ``train.devices`` names: the count, or the number of GPU indices."""
    return len(devices) if isinstance(devices, list) else devices


def trainer_devices(cfg: RunConfig, accelerator: str) -> int | list[int]:
    """``train.devices`` for ``pl.Trainer`` on ``accelerator`` (resolved, see :func:`resolve_runtime`): a count
    as it is, a list of GPU indices after checking that training runs on CUDA and that each GPU exists.

    Raises:
        InputError: GPU indices off CUDA, or an index this machine does not have.
    """
    devices = cfg.train.devices
    if not isinstance(devices, list):
        return devices
    if accelerator not in ("gpu", "cuda"):
        raise InputError(
            "train.devices", f"{devices} are GPU indices but training runs on {accelerator}; give a count"
        )
    n = torch.cuda.device_count()
    missing = [i for i in devices if i >= n]
    if missing:
        raise InputError("train.devices", f"GPU {missing[0]} requested but only {n} CUDA device(s) exist")
    return list(devices)


@contextlib.contextmanager
def quiet_lightning():
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


class ProgressBar(TQDMProgressBar if pl else object):  # type: ignore[misc]
    """Progress bar with epoch, loss and slices/s (no logger version number)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class EpochLines(pl.Callback if pl else object):  # type: ignore[misc]
    """Progress as one plain line per epoch (``epoch 3/20: train_loss 0.4121, val_dice 0.6034 (14 s)``), used
    instead of the redrawn bar when stderr is not a terminal (a log file, a pipe): no carriage returns."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4f}" for k in ("train_loss", "val_dice", "val_loss") if k in m]
        took = time.monotonic() - getattr(self, "_t0", time.monotonic())
        log_line(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {', '.join(parts)} ({took:.0f} s)")


def progress_callbacks(progress: bool) -> list[Any]:
    """The progress display of a run: the bar on a terminal, :class:`EpochLines` otherwise, none when off."""
    if not progress:
        return []
    return [ProgressBar()] if stderr_is_terminal() else [EpochLines()]


def make_trainer(
    run_dir: Path,
    cfg: RunConfig,
    accelerator: str,
    precision: str,
    *,
    progress: bool,
    log_every_n_steps: int,
    callbacks: tuple[Any, ...] = (),
    **trainer_kw: Any,
) -> Any:
    """A ``pl.Trainer`` writing into ``run_dir``: best/last checkpoints by ``val_dice`` (atomic writes), TensorBoard
    logs in ``tb/``, no sanity validation, validation every ``train.val_every_n_epochs`` epochs.

    ``callbacks`` come after the checkpoint callback and before the progress bar; ``trainer_kw`` (devices,
    strategy, ...) go to ``pl.Trainer`` as they are. Call inside :func:`quiet_lightning`.
    """

    best_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val_dice",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # last.ckpt after EVERY epoch, from its own callback: Lightning (>= 2.4) writes a save_last copy only when
    # the monitored checkpoint was saved in that step, so after an epoch that did not improve val_dice the
    # "last" checkpoint stayed behind and --resume lost the epochs since (test_last_checkpoint_is_every_epoch).
    last_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    bar = progress_callbacks(progress)
    return pl.Trainer(
        accelerator=accelerator,
        precision=precision,
        max_epochs=cfg.train.epochs,
        logger=TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False),
        callbacks=[best_cb, *callbacks, last_cb, *bar],
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in bar),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=cfg.train.val_every_n_epochs,
        log_every_n_steps=log_every_n_steps,
        benchmark=accelerator in ("gpu", "cuda"),
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        **trainer_kw,
    )


def ema_callbacks(decay: float) -> tuple[Any, ...]:
    """Callbacks for ``train.ema_decay``: none when it is 0, else Lightning's ``WeightAveraging`` keeping an
    exponential moving average of the weights and buffers (decay per optimiser step). Lightning then validates
    and checkpoints the average (``state_dict``; the raw weights go to ``current_model_state`` for resuming),
    so prediction uses it with no change."""
    if decay <= 0:
        return ()

    return (WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay)),)
