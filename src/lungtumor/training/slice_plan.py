"""How the one LightningModule (``training.module``) sees a 2D cache: as slices, with 2k+1 context slices as channels.

2D is depth 1 (k = 0) and 2.5D adds k slices on each side (``train.context_slices``, spaced ``train.context_mm``
apart). A training batch is ``train.batch_size`` slices drawn with tumour oversampling
(``training.sampling``), augmented (and cropped) on the device in one ``grid_sample``. Validation predicts every
slice of a patient in batches; the module turns the per-patient counts into the per-patient Dice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lungtumor.core.config import RunConfig
from lungtumor.preprocessing.cache import (
    Cache,
    SliceTable,
    append_blob,
    context_step,
    resident_fits,
    stack_context,
)
from lungtumor.preprocessing.frame import hu_scale
from lungtumor.training.acquisition import reacquire
from lungtumor.training.augment import augment_batch, augment_crop_batch, random_crop
from lungtumor.training.sampling import (
    EpochBatchSampler,
    IndexDataset,
    ResidentSlices,
    SliceDataset,
    lesion_balanced_weights,
    negative_case_weights,
    oversample_weights,
)

log = logging.getLogger("lungtumor.training")


@dataclass
class CaseCounts:
    """What validating one patient gives: voxel counts (predicted and true, tumour), loss summed over
    ``n_loss`` items (0: no validation loss), and an example (image, truth, prediction) (H, W) slice or None."""

    inter: int
    psum: int
    tsum: int
    loss_sum: float = 0.0
    n_loss: int = 0
    example: Any = None


class SlicePlan:
    """The 2D/2.5D data side of training: sampling, batches, augmentation and per-patient validation."""

    #: The optimiser of the slice recipes (Adam, L2 weight decay ``train.weight_decay``).
    optimizer = torch.optim.Adam

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.k = cfg.train.context_slices
        self.resident: ResidentSlices | None = None
        self._gen: torch.Generator | None = None
        self.ratio = 1.0

    @property
    def batch_size(self) -> int:
        """Slices per training step and process."""
        return self.cfg.train.batch_size

    def attach(self, cache: Cache, train: list[str], val: list[str]) -> None:
        """Index ``train + val`` of ``cache`` and weight the training slices (tumour oversampling)."""
        self.cache, self.val = cache, val
        # HU -> model units and the window's edges, for the acquisition augmentation (cfg.prep is the cache's)
        self.hu_scale = hu_scale(self.cfg.prep, cache.stats) if self.cfg.train.augment.acq_p > 0 else None
        self.table = SliceTable(cache, train + val)
        self.train_ids = self.table.slices_of(train)
        tumour = self.table.tumour[self.train_ids]
        self.weights, self.ratio = oversample_weights(tumour)
        if not self.cfg.train.oversample:
            self.weights = np.ones_like(self.weights)
        elif self.cfg.train.lesion_balance > 0:
            self.weights = lesion_balanced_weights(
                cache, self.table, self.train_ids, self.weights, self.cfg.train.lesion_balance
            )
        if self.cfg.train.negative_fraction > 0:  # hard negatives in every epoch (issue 23)
            self.weights = negative_case_weights(
                cache, self.table, self.train_ids, self.weights, self.cfg.train.negative_fraction
            )
        self.n_tumour_slices = int(tumour.sum())

    def setup(self, device: torch.device) -> None:
        """Keep the slices on ``device`` when ``train.data_on_device`` says so (or fits, for ``auto``)."""
        mode = self.cfg.train.data_on_device
        if mode == "always" or (mode == "auto" and resident_fits(self.cache, self.table.names, device)):
            self.resident = ResidentSlices(self.cache, self.table, device, self.cfg.train.context_mm)

    def on_fit_start(self, module: Any) -> None:
        """channels_last weights; log the oversampling ratio once."""
        if self.cfg.train.channels_last:  # faster on CUDA and on the CPU (oneDNN): benchmarks/layout_speed.py
            module.net.to(memory_format=torch.channels_last)
        if module.trainer.is_global_zero:
            log.info(
                "oversampling tumour slices x%.2f (%d of %d training slices contain tumour)",
                self.ratio, self.n_tumour_slices, len(self.train_ids),
            )  # fmt: skip
            if module.logger is not None:
                module.logger.log_metrics({"data/oversample_ratio": self.ratio}, step=0)

    def steps_per_epoch(self, world: int) -> int:
        """Batches per epoch and rank: one pass over the training slices, capped by max_steps_per_epoch."""
        steps = max(1, len(self.train_ids) // (self.cfg.train.batch_size * world))
        cap = self.cfg.train.max_steps_per_epoch
        return min(steps, cap) if cap > 0 else steps

    def train_loader(self, trainer: Any) -> torch.utils.data.DataLoader:
        """Batches of global slice indices (resident data) or of (image, mask) tensors read by workers."""
        world, rank, t = trainer.world_size, trainer.global_rank, self.cfg.train
        sampler = EpochBatchSampler(
            self.train_ids, self.weights, t.batch_size, self.steps_per_epoch(world), t.seed, rank, world
        )
        if self.resident is not None:
            return torch.utils.data.DataLoader(IndexDataset(len(self.table)), batch_sampler=sampler)
        return torch.utils.data.DataLoader(
            SliceDataset(self.cache, self.table, self.k, t.context_mm),
            batch_sampler=sampler,
            num_workers=t.num_workers,
            persistent_workers=t.num_workers > 0,
            pin_memory=trainer.strategy.root_device.type == "cuda",
        )

    def _generator(self, module: Any) -> torch.Generator:
        if self._gen is None or self._gen.device != module.device:
            self._gen = torch.Generator(device=module.device)
        seed = (self.cfg.train.seed * 1_000_003 + module.global_step) * 1024 + module.global_rank
        self._gen.manual_seed(seed % (2**63))
        return self._gen

    def batch(self, module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: (B, C, H, W) float32 context slices and (B, 1, H, W) float32 {0, 1} masks,
        augmented and cropped on the module's device."""
        img, seg = self.resident.gather(batch, self.k) if isinstance(batch, torch.Tensor) else batch[:2]
        t, g = self.cfg.train, self._generator(module)
        if t.crop_size > 0 and t.augment.p > 0:  # augmentation and crop in one grid_sample of crop size
            img, seg = augment_crop_batch(img, seg, t.augment, t.crop_size, g, t.crop_tumour_fraction)
        elif t.crop_size > 0:
            img, seg = random_crop(img.float(), seg.float(), t.crop_size, g, t.crop_tumour_fraction)
        elif t.augment.p > 0:
            img, seg = augment_batch(img, seg, t.augment, g)
        else:
            img, seg = img.float(), seg.float()
        if t.augment.acq_p > 0:  # after the crop: noise and kernel cost the crop's pixels only
            img = reacquire(img, t.augment, self.hu_scale, 2 * self.k + 1, g)  # type: ignore[arg-type]
        return img, seg

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, loss_fn: Any) -> torch.Tensor:
        """``loss_fn`` of the (B, 1, H, W) logits and the masks."""
        return loss_fn(outputs, target)

    def _case(self, c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Validation case ``c``: (img float16 (z, H, W), seg uint8 (z, H, W), blob float16 (z, H, W) or None)."""
        name = self.val[c]
        if self.resident is not None:
            return self.resident.case(self.table.names.index(name))
        img = torch.from_numpy(np.array(self.cache.image(name), dtype=np.float16))
        seg = torch.from_numpy(np.array(self.cache.seg(name), dtype=np.uint8))
        blob = None
        if self.cache.has_blob:
            blob = torch.from_numpy(np.array(self.cache.blob(name), dtype=np.float16)).to(device)
        return img.to(device), seg.to(device), blob

    def validate_case(self, module: Any, c: int) -> CaseCounts:
        """Predict every slice of validation case ``c`` (batches of ``train.val_batch_size``), threshold the
        probabilities at 0.5 and count; the first case also gives the example of its most tumorous slice."""
        img, seg, blob = self._case(c, module.device)
        z = img.shape[0]
        step = context_step(self.cfg.train.context_mm, self.cache.cases[self.val[c]].dz_mm)
        inter = psum = tsum = 0
        loss_sum, example = 0.0, None
        show = int(seg.flatten(1).sum(1).argmax()) if c == 0 else -1
        bs = max(1, self.cfg.train.val_batch_size)
        for a in range(0, z, bs):
            zi = torch.arange(a, min(z, a + bs), device=img.device)
            x = append_blob(stack_context(img, zi, self.k, step).float(), blob, zi)
            t = seg[zi][:, None].float()
            logits = module.net_forward(x).float()
            loss_sum += float(module.loss_fn(logits, t)) * len(zi)
            pred = torch.sigmoid(logits) >= 0.5  # threshold on probabilities
            tb = t.bool()
            inter += int((pred & tb).sum())
            psum += int(pred.sum())
            tsum += int(tb.sum())
            if a <= show < a + len(zi):
                j = show - a
                example = (
                    x[j, self.k].cpu().numpy(),
                    t[j, 0].cpu().numpy(),
                    pred[j, 0].float().cpu().numpy(),
                )
        return CaseCounts(inter, psum, tsum, loss_sum, z, example)
