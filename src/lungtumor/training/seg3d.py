"""Training of the 3D recipe with PyTorch Lightning (patches, deep supervision, sliding-window validation).

``train3d(cache, out, cfg)`` writes the same run folder as ``seg2d.train``: ``checkpoints/best.ckpt`` (best
per-patient validation Dice) and ``last.ckpt``, ``config.yaml``, ``metrics.csv``, ``loss_curves.png``, ``tb/``.
Before training it resolves and records in the config: the target spacing (the cache's), the pooling
(``vol3d.anisotropic_levels``), the patch size and the batch size (from the memory budget). Each step draws
a batch of patches (a third centred on tumour), augments it on the device in one ``grid_sample`` and applies
Dice + BCE on every deep-supervision scale (weights 1, 1/2, 1/4, ..., lowest 0, normalised; nnU-Net).
Validation predicts each validation case whole (Gaussian sliding windows at the target spacing) and reports
the mean per-patient Dice at threshold 0.5. Single device (no DDP). Load with ``inference.checkpoint.load_checkpoint3d``.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungtumor.core.config import RunConfig
from lungtumor.core.config_io import config_from_dict, save_config, to_dict, validate
from lungtumor.core.errors import InputError, ensure_writable_dir
from lungtumor.inference.checkpoint import read_checkpoint
from lungtumor.inference.sliding_window import sliding_window_probs
from lungtumor.models import build_model, is_3d
from lungtumor.models.unet3d import divisor
from lungtumor.training.artifacts import write_history
from lungtumor.training.card import build_card
from lungtumor.training.losses import LossFn, dice_bce_loss, dice_score, make_loss
from lungtumor.training.patches import (
    Cache3D,
    PatchSampler,
    augment_batch_3d,
    memory_budget_bytes,
    plan_patch,
    plan_pools,
)
from lungtumor.training.trainer import (
    HistoryInCheckpoint,
    LightningModuleBase,
    TrainResult,
    check_run_folder,
    make_trainer,
    pl,
    quiet_lightning,
    refuse_existing_run,
    resolve_runtime,
    train_result,
    trainer_devices,
    warmup_cosine,
)


def ds_weights(n: int) -> list[float]:
    """Deep-supervision loss weights for ``n`` scales: 1/2**i, the lowest scale 0 (when n > 1), summing to 1."""
    w = [0.5**i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    s = sum(w)
    return [x / s for x in w]


def deep_supervision_loss(
    outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor, loss_fn: LossFn = dice_bce_loss
) -> torch.Tensor:
    """``loss_fn`` (default Dice + BCE) summed over scales with :func:`ds_weights`; ``target`` (B, 1, D, H, W)
    is resized (nearest) to each output."""
    outs = outputs if isinstance(outputs, list) else [outputs]
    total = torch.zeros((), device=target.device)
    for w, o in zip(ds_weights(len(outs)), outs, strict=True):
        if w == 0:
            continue
        t = (
            target
            if o.shape[2:] == target.shape[2:]
            else F.interpolate(target, size=o.shape[2:], mode="nearest")
        )
        total = total + w * loss_fn(o, t)
    return total


def resolve_plan(cfg: RunConfig, cache: Cache3D, device: torch.device) -> RunConfig:
    """Copy of ``cfg`` with spacing, pooling, patch and batch resolved from the cache and the memory budget."""
    cfg = copy.deepcopy(cfg)
    v = cfg.vol3d
    v.target_spacing = tuple(float(s) for s in cache.spacing)  # type: ignore[assignment]
    pools = plan_pools(cache.spacing, cfg.model.depth, v.anisotropic_levels)
    v.anisotropic_levels = sum(1 for p in pools if p[0] == 1)
    median = tuple(int(np.median([s[a] for s in cache.shapes.values()])) for a in range(3))
    patch, batch = plan_patch(
        cache.spacing, median, pools, memory_budget_bytes(v, device), cfg.model.base_channels
    )  # type: ignore[arg-type]
    if min(v.patch_size) <= 0:
        v.patch_size = patch
    if v.batch_size <= 0:
        v.batch_size = batch

    div = divisor(pools)
    bad = [a for a in range(3) if v.patch_size[a] % div[a]]
    if bad:
        raise InputError(
            "vol3d.patch_size", f"{list(v.patch_size)} must be multiples of {list(div)} (the pooling)"
        )
    return cfg


class Seg3DModule(HistoryInCheckpoint, LightningModuleBase):
    """Lightning orchestration of the 3D recipe; ``hyper_parameters["lungtumor"]`` = config, stats, prep, card."""

    def __init__(self, lungtumor: dict[str, Any]) -> None:
        super().__init__()

        self.save_hyperparameters({"lungtumor": lungtumor}, logger=False)
        self.cfg = config_from_dict(lungtumor["config"])
        self.net = build_model(self.cfg)
        self.loss_fn = make_loss(self.cfg.train.loss)  # train.loss, as in 2D (every loss takes 5D tensors)
        self.history: dict[str, list] = {"epochs": [], "steps": []}
        self._losses: list[float] = []
        self.cache: Cache3D | None = None
        self.run_dir: Path | None = None

    def attach(self, cache: Cache3D, train: list[str], val: list[str], run_dir: Path) -> None:
        v = self.cfg.vol3d
        self.cache, self.train_names, self.val_names, self.run_dir = cache, train, val, run_dir
        self.sampler = PatchSampler(cache, train, tuple(v.patch_size), v.foreground_fraction)  # type: ignore[arg-type]

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(list(range(self.cfg.vol3d.steps_per_epoch)), batch_size=None)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(list(range(len(self.val_names))), batch_size=None)

    def on_fit_start(self) -> None:
        save_config(self.cfg, self.run_dir / "config.yaml")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        v = self.cfg.vol3d
        rng = np.random.default_rng([self.cfg.train.seed, self.global_step])
        img, seg = self.sampler.sample(v.batch_size, rng)
        img, seg = img.to(self.device, non_blocking=True), seg.to(self.device, non_blocking=True)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(rng.integers(2**62)))
        img, seg = augment_batch_3d(
            img, seg, v, self.cache.spacing, self.cfg.train.augment.intensity_jitter, gen
        )
        loss = deep_supervision_loss(self.net(img), seg, self.loss_fn)
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=v.batch_size)
        self._losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> Any:
        t = self.cfg.train
        opt = torch.optim.AdamW(self.net.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = warmup_cosine(opt, t.epochs * self.cfg.vol3d.steps_per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_validation_epoch_start(self) -> None:
        self._dice: list[float] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        name = self.val_names[int(batch)]
        v = self.cfg.vol3d
        img = np.asarray(self.cache.array(name, "img"), dtype=np.float32)
        seg = torch.from_numpy(np.asarray(self.cache.array(name, "seg"))).to(self.device)
        prec = "bf16" if self.device.type == "cuda" else "32"
        prob = sliding_window_probs(
            self.net, img, v.patch_size, device=self.device, overlap=min(v.overlap, 0.25),
            sw_batch_size=v.sw_batch_size, precision=prec,
        )  # fmt: skip
        self._dice.append(dice_score(prob >= 0.5, seg))

    def on_validation_epoch_end(self) -> None:
        val_dice = float(np.mean(self._dice)) if self._dice else 0.0
        self.log("val_dice", val_dice, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        row = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "train_loss": float(np.mean(self._losses)) if self._losses else float("nan"),
            "val_loss": float("nan"),
            "val_dice": val_dice,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "epoch_s": time.perf_counter() - getattr(self, "_t0", time.perf_counter()),
            "val_dice_per_case": " ".join(f"{d:.4f}" for d in self._dice),
        }
        self.record_epoch(self.global_step, self._losses, row)
        self._losses = []
        write_history(self.history, self.run_dir, self.cfg.vol3d.steps_per_epoch)

    def on_train_epoch_start(self) -> None:
        self._t0 = time.perf_counter()


def train3d(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    cfg: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    train_names: list[str] | None = None,
    val_names: list[str] | None = None,
) -> TrainResult:
    """Train the 3D recipe on a 3D cache into the run folder ``out`` (default split: the cache's splits.json).

    Raises:
        InputError: bad cache, config or run folder (an existing run without ``resume``).
    """
    if pl is None:  # pragma: no cover
        raise InputError("train", "PyTorch Lightning is not installed (pip install lightning)")
    t0 = time.perf_counter()
    data = Cache3D.open(cache)
    cfg = copy.deepcopy(cfg)
    validate(cfg, "config")
    if not is_3d(cfg):
        raise InputError("model.arch", f"the 3D trainer needs model.arch 'unet3d', got {cfg.model.arch!r}")
    train = list(train_names if train_names is not None else data.splits.get("train", []))
    val = list(val_names if val_names is not None else data.splits.get("val", []))
    missing = [n for n in train + val if n not in data.shapes]
    if missing or not train or not val:
        what = (
            f"case {missing[0]!r} is not in the cache" if missing else "needs training and validation cases"
        )
        raise InputError(data.root / "splits.json", what)
    accelerator, precision = resolve_runtime(cfg)
    devices = trainer_devices(cfg, accelerator)
    if isinstance(devices, list) and len(devices) > 1:
        raise InputError("train.devices", "the 3D recipe trains on one GPU; give one index, such as [1]")
    index = devices[0] if isinstance(devices, list) else None  # a count: one device, as ever
    device = torch.device("cuda", index) if accelerator in ("gpu", "cuda") else torch.device("cpu")
    run_dir = ensure_writable_dir(out)
    check_run_folder(run_dir)  # Lightning writes checkpoints/ and tb/: never through a link out of the run
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        cfg = config_from_dict(read_checkpoint(last)["hyper_parameters"]["lungtumor"]["config"], str(last))
    else:
        if last.exists():
            refuse_existing_run(run_dir)
        cfg = resolve_plan(cfg, data, device)
    nbytes = sum(int(np.prod(data.shapes[n])) * 3 for n in train + val)
    if nbytes < 4 << 30:
        data.load_into_memory(train + val)
    with quiet_lightning():
        pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
        module = Seg3DModule(
            {
                "config": to_dict(cfg),
                "stats": dict(data.stats),
                "prep": {"kind": "3d", "spacing": list(data.spacing)},
                "card": build_card(data.source, cfg, len(train), len(val)),  # what the model saw
            }
        )
        module.attach(data, train, val, run_dir)
        trainer = make_trainer(
            run_dir, cfg, accelerator, precision,
            progress=progress,
            log_every_n_steps=min(cfg.train.log_every_n_steps, cfg.vol3d.steps_per_epoch),
            devices=[index] if index is not None else 1,
        )  # fmt: skip
        trainer.fit(module, ckpt_path=str(last) if resume else None, weights_only=True)
    return train_result(run_dir, module.history, trainer, float(cfg.vol3d.foreground_fraction), t0)
