"""How the one LightningModule (``training.module``) sees a 3D cache: as patches, validated by sliding windows.

Each step draws ``vol3d.batch_size`` patches of ``vol3d.patch_size`` (a ``vol3d.foreground_fraction`` of them
centred on tumour; ``training.patches``), moves them to the device and augments them there in one
``grid_sample``. The loss is summed over the deep-supervision scales (``losses.deep_supervision_loss``).
Validation predicts each validation case whole with Gaussian sliding windows at the target spacing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lungtumor.core.config import RunConfig
from lungtumor.inference.sliding_window import sliding_window_probs
from lungtumor.preprocessing.cache import Cache
from lungtumor.training.losses import deep_supervision_loss
from lungtumor.training.patches import PatchSampler, augment_batch_3d
from lungtumor.training.slice_plan import CaseCounts


class PatchPlan:
    """The 3D data side of training: patch sampling, batches, augmentation and sliding-window validation."""

    #: The optimiser of the 3D recipe (AdamW: decoupled weight decay ``train.weight_decay``, as nnU-Net's
    #: successors use with Adam-type optimisers).
    optimizer = torch.optim.AdamW

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.ratio = float(cfg.vol3d.foreground_fraction)

    @property
    def batch_size(self) -> int:
        """Patches per training step."""
        return self.cfg.vol3d.batch_size

    def attach(self, cache: Cache, train: list[str], val: list[str]) -> None:
        """Sample training patches from ``train`` of ``cache``; validate on ``val``."""
        v = self.cfg.vol3d
        self.cache, self.val = cache, val
        self.sampler = PatchSampler(cache, train, tuple(v.patch_size), v.foreground_fraction)  # type: ignore[arg-type]

    def setup(self, device: torch.device) -> None:
        """Nothing to place: patches are cut in the main process each step."""

    def on_fit_start(self, module: Any) -> None:
        """Nothing beyond what the module does."""

    def steps_per_epoch(self, world: int) -> int:
        """``vol3d.steps_per_epoch`` (one process)."""
        return self.cfg.vol3d.steps_per_epoch

    def train_loader(self, trainer: Any) -> torch.utils.data.DataLoader:
        """Step numbers only: :meth:`batch` draws the patches."""
        return torch.utils.data.DataLoader(list(range(self.cfg.vol3d.steps_per_epoch)), batch_size=None)

    def batch(self, module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: (B, 1, D, H, W) float32 patches and masks {0, 1}, augmented on the module's device;
        drawn from a generator seeded by ``train.seed`` and the global step."""
        v = self.cfg.vol3d
        rng = np.random.default_rng([self.cfg.train.seed, module.global_step])
        img, seg = self.sampler.sample(v.batch_size, rng)
        img, seg = img.to(module.device, non_blocking=True), seg.to(module.device, non_blocking=True)
        gen = torch.Generator(device=module.device)
        gen.manual_seed(int(rng.integers(2**62)))
        jitter = self.cfg.train.augment.intensity_jitter
        return augment_batch_3d(img, seg, v, self.cache.spacing, jitter, gen)  # type: ignore[arg-type]

    def loss(
        self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor, loss_fn: Any
    ) -> torch.Tensor:
        """``loss_fn`` summed over the deep-supervision outputs."""
        return deep_supervision_loss(outputs, target, loss_fn)

    def validate_case(self, module: Any, c: int) -> CaseCounts:
        """Predict validation case ``c`` whole (sliding windows, overlap at most 0.25, bf16 on CUDA) and count
        the voxels of the prediction (probability >= 0.5) and of the truth."""
        name, v = self.val[c], self.cfg.vol3d
        img = np.asarray(self.cache.array(name, "img"), dtype=np.float32)
        prec = "bf16" if module.device.type == "cuda" else "32"
        prob = sliding_window_probs(
            module.net, img, v.patch_size, device=module.device, overlap=min(v.overlap, 0.25),
            sw_batch_size=v.sw_batch_size, precision=prec,
        )  # fmt: skip
        pred = prob >= 0.5
        truth = torch.from_numpy(np.asarray(self.cache.array(name, "seg"))).to(pred.device).bool()
        return CaseCounts(int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))
