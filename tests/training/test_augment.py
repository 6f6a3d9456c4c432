"""Joint augmentation keeps masks binary and aligned with the image."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lungtumor.core.config import AugmentConfig
from lungtumor.training.augment import augment_batch, augment_numpy


def squares(b: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    seg = torch.zeros(b, 1, size, size)
    for i in range(b):
        y, x = 12 + 3 * i, 20 + 2 * i
        seg[i, 0, y : y + 18, x : x + 14] = 1
    img = torch.cat([seg, seg * 2, seg], 1)  # 3 context channels carrying the same square
    return img, seg


def test_batch_augment_binary_and_aligned():
    cfg = dataclasses.replace(AugmentConfig(), intensity_jitter=0.0, elastic_p=1.0)
    img, seg = squares()
    g = torch.Generator().manual_seed(1)
    a_img, a_seg = augment_batch(img, seg, cfg, g)
    assert a_img.shape == img.shape and a_seg.shape == seg.shape
    assert set(torch.unique(a_seg).tolist()) <= {0.0, 1.0}
    moved = (a_seg != seg).float().mean()
    assert moved > 0.01  # something happened
    for i in range(len(seg)):
        from_img = a_img[i, 0] > 0.5
        m = a_seg[i, 0].bool()
        iou = (from_img & m).sum() / (from_img | m).sum()
        assert iou > 0.97, float(iou)
        assert abs(int(m.sum()) - 18 * 14) < 0.45 * 18 * 14  # scale 0.85-1.15 keeps the area plausible


def test_batch_augment_reproducible_and_identity_when_off():
    img, seg = squares()
    cfg = AugmentConfig()
    a = augment_batch(img, seg, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(img, seg, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    off = dataclasses.replace(cfg, p=0.0)
    c = augment_batch(img, seg, off, torch.Generator().manual_seed(3))
    assert torch.equal(c[0], img) and torch.equal(c[1], seg)


def test_numpy_augment_binary_and_aligned():
    img, seg = squares(1)
    cfg = dataclasses.replace(AugmentConfig(), intensity_jitter=0.0, elastic_p=1.0)
    a_img, a_seg = augment_numpy(
        img[0].numpy(), seg[0, 0].numpy().astype(np.uint8), cfg, np.random.default_rng(0)
    )
    assert set(np.unique(a_seg)) <= {0, 1}
    from_img = a_img[0] > 0.5
    iou = (from_img & (a_seg > 0)).sum() / (from_img | (a_seg > 0)).sum()
    assert iou > 0.9


def test_random_crop_keeps_alignment_and_finds_tumour():
    from lungtumor.training.augment import random_crop

    img = torch.zeros(4, 3, 64, 64)
    seg = torch.zeros(4, 1, 64, 64)
    seg[:, :, 50:54, 8:12] = 1
    img[:, :, 50:54, 8:12] = 5.0
    g = torch.Generator().manual_seed(0)
    ic, sc = random_crop(img, seg, 32, g, p_tumour=1.0)
    assert ic.shape == (4, 3, 32, 32) and sc.shape == (4, 1, 32, 32)
    assert torch.all(sc.sum((1, 2, 3)) == 16)  # the whole 4x4 tumour is inside every crop
    assert torch.equal(ic[:, 0] == 5.0, sc[:, 0] == 1)  # image and mask cropped identically


def test_augment_crop_binary_aligned_and_keeps_tumour_in_view():
    from lungtumor.training.augment import augment_crop_batch

    img, seg = squares(8, 96)
    cfg = dataclasses.replace(AugmentConfig(), intensity_jitter=0.0, elastic_p=1.0)
    a_img, a_seg = augment_crop_batch(img, seg, cfg, 48, torch.Generator().manual_seed(2), p_tumour=1.0)
    assert a_img.shape == (8, 3, 48, 48) and a_seg.shape == (8, 1, 48, 48)
    assert set(torch.unique(a_seg).tolist()) <= {0.0, 1.0}
    for i in range(8):
        from_img = a_img[i, 0] > 0.5
        m = a_seg[i, 0].bool()
        assert m.sum() > 0.25 * 18 * 14  # tumour-centred crops keep the square in view
        iou = (from_img & m).sum() / (from_img | m).sum()
        assert iou > 0.97, float(iou)


def test_augment_crop_is_an_exact_crop_when_augmentation_is_off():
    from lungtumor.training.augment import augment_crop_batch, random_crop

    img, seg = squares(4, 64)
    img = img + torch.linspace(0, 1, 64)  # a ramp, so any resampling would show
    off = dataclasses.replace(AugmentConfig(), p=0.0)
    a = augment_crop_batch(img, seg, off, 32, torch.Generator().manual_seed(5))
    b = random_crop(img, seg, 32, torch.Generator().manual_seed(5))
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.equal(a[1], b[1])
