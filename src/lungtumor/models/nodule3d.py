"""The nodule detector's network: a small 3D U-Net on a candidate's cube that scores it and segments it.

Pure torch. Input (B, 1, P, P, P) normalised HU (``(HU + 400) / 500``) on the detector's isotropic frame,
P a multiple of 4; output (score logits (B,), segmentation logits (B, P, P, P)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)
    )


class NodulePatchNet(nn.Module):
    """Three levels (widths ``channels``); the score reads the deepest level's max-pooled features, the
    segmentation head decodes back to full resolution with skip connections."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.enc1 = nn.Sequential(_block(1, max(1, c1 // 2)), _block(max(1, c1 // 2), c1))
        self.enc2 = nn.Sequential(_block(c1, c2), _block(c2, c2))
        self.enc3 = _block(c2, c3)
        self.score = nn.Linear(c3, 1)
        self.dec2 = _block(c3 + c2, c2)
        self.dec1 = _block(c2 + c1, c1)
        self.seg = nn.Conv3d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.enc1(x)
        b = self.enc2(F.max_pool3d(a, 2))
        c = self.enc3(F.max_pool3d(b, 2))
        score = self.score(torch.amax(c, dim=(2, 3, 4)))[:, 0]
        u = self.dec2(torch.cat([F.interpolate(c, size=b.shape[2:]), b], 1))
        u = self.dec1(torch.cat([F.interpolate(u, size=a.shape[2:]), a], 1))
        return score, self.seg(u)[:, 0]


def normalise_hu(hu: torch.Tensor) -> torch.Tensor:
    """HU (any shape) → the network's input scale."""
    return (hu.float() + 400.0) / 500.0
