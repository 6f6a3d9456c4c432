"""``train``: one entry that trains any recipe on a prepared cache and writes a run folder.

``train(cache, out, cfg)`` writes into OUT (see docs/architecture.md): ``checkpoints/best.ckpt`` (best per-patient
validation Dice), ``checkpoints/last.ckpt``, ``config.yaml``, ``metrics.csv``, ``loss_curves.png`` and TensorBoard
logs in ``tb/``. The recipe is the config's: ``model.arch`` ``unet3d`` trains the 3D recipe on a 3D cache (one
device), any other architecture the 2D/2.5D recipe on a 2D cache (DDP over ``train.devices`` x
``train.num_nodes``, then the nodule detector when ``nodule.enabled``). Both go through the one LightningModule
(``training.module.SegModule``) and the shared ``pl.Trainer`` set-up (``training.trainer``).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungtumor.core.config import ARCH_3D, PrepConfig, RunConfig
from lungtumor.core.config_io import config_from_dict, from_dict, to_dict, validate
from lungtumor.core.errors import InputError, ensure_writable_dir
from lungtumor.inference.checkpoint import read_checkpoint
from lungtumor.models import create_model, is_3d, padded_size
from lungtumor.preprocessing.cache import Cache, check_split
from lungtumor.training.card import build_card
from lungtumor.training.detector import source_images, train_for_run
from lungtumor.training.module import SegModule
from lungtumor.training.patches import resolve_plan
from lungtumor.training.trainer import (
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
)

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
DATA_ON_DEVICE = ("auto", "always", "never")
SCHEDULES = ("constant", "cosine")


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
    if not 0 <= t.negative_fraction < 1:
        bad("train.negative_fraction", "must be in [0, 1): the share of each batch from tumour-free cases")
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
    _validate_acquisition(cfg, bad)


def _validate_acquisition(cfg: RunConfig, bad: Callable[[str, str], None]) -> None:
    """The acquisition augmentation's ranges (training.acquisition); the 3D recipe does not have it."""
    a = cfg.train.augment
    for key in ("acq_p", "acq_thick_p"):
        if not 0 <= getattr(a, key) <= 1:
            bad(f"train.augment.{key}", "must be a probability in [0, 1]")
    if not 0 <= a.acq_noise_hu[0] <= a.acq_noise_hu[1]:
        bad("train.augment.acq_noise_hu", "needs 0 <= low <= high (HU)")
    if not -1 <= a.acq_kernel[0] <= a.acq_kernel[1] <= 1:
        bad("train.augment.acq_kernel", "needs -1 <= low <= high <= 1 (-1 blur, 0 as is, +1 sharpen)")
    if a.acq_p > 0 and cfg.model.arch == ARCH_3D:
        bad("train.augment.acq_p", "is for the 2D/2.5D trainer; the 3D recipe (model.arch unet3d) has none")


class _ValidateLastEpoch(pl.Callback if pl else object):  # type: ignore[misc]
    """Validate the final epoch even when ``val_every_n_epochs`` would skip it, so a run always ends with a
    scored model and a best.ckpt (a 1-epoch run with validation every 2 epochs would otherwise have none)."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.check_val_every_n_epoch = 1


def _check_slices(data: Cache, cfg: RunConfig) -> None:
    """The 2D network must take the cache's slices whole: (H, W) multiples of 2**model.depth."""
    h, w = data.shape_hw
    if (h, w) != padded_size(h, w, cfg.model.depth):
        ph, pw = padded_size(h, w, cfg.model.depth)
        raise InputError(
            data.root / "cache.json",
            f"slices are {h}x{w}, not a multiple of {2**cfg.model.depth} (2**model.depth); "
            f"prepare with prep.size [{ph}, {pw}] or lower model.depth",
        )
    create_model(cfg.model)  # validates the model settings before anything is written


def _resumed_config(last: Path, cfg: RunConfig) -> RunConfig:
    """The config to continue ``last`` with: 3D, the checkpoint's own (its plan is resolved); 2D, ``cfg``,
    which must keep the run's model, prep and EMA settings."""
    old = read_checkpoint(last)["hyper_parameters"]["lungtumor"]["config"]
    if is_3d(cfg):
        return config_from_dict(old, str(last))
    if old.get("model") != to_dict(cfg.model) or old.get("prep") != to_dict(cfg.prep):
        raise InputError(
            last, "model or prep settings differ from the run being resumed; use the run's config.yaml"
        )
    if (float(old.get("train", {}).get("ema_decay", 0.0)) > 0) != (cfg.train.ema_decay > 0):
        # with EMA the checkpoint's state_dict holds the average and the raw weights sit beside it
        raise InputError(last, "train.ema_decay was switched on or off; resume with the run's config.yaml")
    return cfg


def _devices_3d(devices: int | list[int], accelerator: str) -> tuple[int | list[int], torch.device]:
    """The 3D recipe trains on one device: (Lightning's devices, the torch device)."""
    if isinstance(devices, list) and len(devices) > 1:
        raise InputError("train.devices", "the 3D recipe trains on one GPU; give one index, such as [1]")
    index = devices[0] if isinstance(devices, list) else None  # a count: one device, as ever
    device = torch.device("cuda", index) if accelerator in ("gpu", "cuda") else torch.device("cpu")
    return ([index] if index is not None else 1), device


def train(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    cfg: RunConfig,
    resume: bool = False,
    progress: bool = True,
    *,
    train_names: list[str] | None = None,
    val_names: list[str] | None = None,
    source: str = "config",
) -> TrainResult:
    """Train ``cfg`` on a prepared cache and write the run folder ``out``.

    ``train_names``/``val_names`` (default: the cache's splits.json) choose the cases, as cross-validation
    does. A 2D cache's preprocessing (cache.json ``prep``) replaces ``cfg.prep``; the 3D recipe resolves
    spacing, pooling, patch and batch size from the cache and the memory budget. Either way the saved config
    describes exactly what the model was trained on. ``resume=True`` continues from ``out/checkpoints/last.ckpt``.
    ``source`` is what a config error names (the config file, when there is one).

    Raises:
        InputError: bad cache (or one of the other recipe's kind), config, or run folder (an existing run
            without ``resume``, or no checkpoint to resume from).
    """
    if pl is None:  # pragma: no cover
        raise InputError("train", "PyTorch Lightning is not installed (pip install lightning)")
    t0 = time.perf_counter()
    three_d = is_3d(cfg)
    data = Cache.open(cache, "3d" if three_d else "2d")
    names = list(data.train if train_names is None else train_names)
    val = list(data.val if val_names is None else val_names)
    check_split(data, names, val)
    if (
        not three_d and cfg.nodule.enabled
    ):  # the detector reads the source CTs: fail now, not after the 2D model
        source_images(data.root, data.source, names + val)
    cfg = copy.deepcopy(cfg)
    if not three_d:
        cfg.prep = from_dict(PrepConfig, data.prep, source=str(data.root / "cache.json"))
    validate(cfg, "config")
    _check_train_config(cfg, source)
    if not three_d:
        _check_slices(data, cfg)
    accelerator, precision = resolve_runtime(cfg)
    devices = trainer_devices(cfg, accelerator)
    if three_d:
        devices, device = _devices_3d(devices, accelerator)
    run_dir = ensure_writable_dir(out)
    check_run_folder(run_dir)  # Lightning writes checkpoints/ and tb/: never through a link out of the run
    last = run_dir / "checkpoints" / "last.ckpt"
    child = os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"
    if resume:
        cfg = _resumed_config(last, cfg)
    elif last.exists() and not child:
        refuse_existing_run(run_dir)
    if three_d:
        cfg = cfg if resume else resolve_plan(cfg, data, device)
        if sum(int(np.prod(data.shapes[n])) * 3 for n in names + val) < 4 << 30:
            data.load_into_memory(names + val)
    n_proc = device_count(devices) * cfg.train.num_nodes
    strategy: Any = "ddp" if cfg.train.strategy == "auto" and n_proc > 1 else cfg.train.strategy
    with quiet_lightning():
        pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
        # the 2D checkpoints say nodule.enabled: false until the detector is stored beside the 2D weights
        # (train_for_run): a best.ckpt written mid-run is always a complete, loadable 2D model
        ck_cfg = copy.deepcopy(cfg)
        if not three_d:
            ck_cfg.nodule.enabled = False
        card = build_card(data.source, cfg, len(names), len(val))  # what the model saw
        module = SegModule(
            {"config": to_dict(ck_cfg), "stats": dict(data.stats), "prep": dict(data.prep), "card": card}
        )
        module.attach(data, run_dir, names, val)
        trainer = make_trainer(
            run_dir, cfg, accelerator, precision,
            progress=progress,
            log_every_n_steps=min(cfg.train.log_every_n_steps, module.steps_per_epoch(n_proc)),
            callbacks=(_ValidateLastEpoch(), *ema_callbacks(cfg.train.ema_decay)),
            devices=devices,
            num_nodes=cfg.train.num_nodes,
            strategy=strategy,
            use_distributed_sampler=False,
        )  # fmt: skip
        trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    if not three_d and cfg.nodule.enabled and trainer.is_global_zero:  # the 3D nodule detector beside 2D
        train_for_run(data, run_dir, cfg, progress=progress, names=names + val)
    return train_result(
        run_dir, module.history, trainer, module.ratio, t0, is_global_zero=trainer.is_global_zero
    )
