"""Segmentation losses on logits. Pure torch; every function takes logits and targets (B, 1, H, W) or
(B, 1, D, H, W)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lungtumor.core.errors import InputError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits (the seed's loss). Shapes (B, 1, H, W); returns a scalar."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch (batch Dice: slices without tumour do not give 0/0 terms).

    Shapes (B, 1, H, W); ``smooth`` is in pixels. Returns a scalar in [0, 1].
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + t.sum() + smooth)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft batch Dice, equally weighted. Shapes (B, 1, H, W); returns a scalar."""
    return bce_loss(logits, target) + soft_dice_loss(logits, target)


def sample_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the samples that hold tumour (0 when none does).

    Each tumour-holding crop weighs the same, so a 5 mm nodule pulls as hard as a 7 cm mass; in the batch
    Dice it is a few pixels among thousands. Samples without tumour are left to the BCE term.
    Shapes (B, 1, H, W) or (B, 1, D, H, W); returns a scalar in [0, 1].
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    has = t.sum(1) > 0
    if not bool(has.any()):
        return p.sum() * 0.0
    p, t = p[has], t[has]
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1 - dice.mean()


def dice_bce_sample_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + per-sample soft Dice (:func:`sample_dice_loss`), equally weighted. Returns a scalar."""
    return bce_loss(logits, target) + sample_dice_loss(logits, target)


def small_lesion_weights(target: torch.Tensor, window: int = 11, cap: float = 8.0) -> torch.Tensor:
    """Per-pixel weights that lift the pixels of small lesions: 1 on background, and on a tumour pixel
    ``min(1 / density, 1 + cap)`` with ``density`` the tumour fraction of the ``window`` x ``window`` axial
    neighbourhood (pixels). Inside a large mass the density is 1 (weight 1); a 4 x 4-pixel nodule in an
    11 x 11 window has 0.13 (weight 7.6). Torch only, so it runs on the training device.

    target (B, 1, H, W) or (B, 1, D, H, W) in {0, 1}; returns float32 of the same shape.
    """
    t = target.float()
    flat = t if t.dim() == 4 else t.transpose(1, 2).flatten(0, 1)  # (B*D, 1, H, W): per axial slice
    density = F.avg_pool2d(flat, window, stride=1, padding=window // 2, count_include_pad=False)
    if t.dim() == 5:
        density = density.unflatten(0, (t.shape[0], t.shape[2])).transpose(1, 2)
    return 1 + t * (1 / density.clamp_min(1 / (1 + cap)) - 1)


def dice_bce_small_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch soft Dice + BCE in which small lesions' pixels weigh more (:func:`small_lesion_weights`).

    In the batch Dice and the plain BCE a 5 mm nodule is a few pixels among tens of thousands, so a model can
    call it a vessel at no cost; here each of its pixels counts up to 9 times. Returns a scalar.
    """
    w = small_lesion_weights(target)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight=w)
    return bce + soft_dice_loss(logits, target)


LOSSES: dict[str, LossFn] = {
    "bce": bce_loss,
    "dice_bce": dice_bce_loss,
    "dice_bce_sample": dice_bce_sample_loss,
    "dice_bce_small": dice_bce_small_loss,
}


def make_loss(name: str) -> LossFn:
    """The loss called ``name``. Raises InputError listing the valid names."""
    if name not in LOSSES:
        raise InputError("train.loss", f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def dice_score(pred: torch.Tensor, target: torch.Tensor, empty: float = 1.0) -> float:
    """Hard Dice of two binary volumes of any shape; ``empty`` when both are empty."""
    p, t = pred.bool(), target.bool()
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return empty
    return 2.0 * int((p & t).sum()) / denom


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
    is resized (nearest) to each output (nnU-Net's deep supervision)."""
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
