"""A 3D U-Net in the spirit of nnU-Net's 3d_fullres network (pure ``nn.Module``, imports only torch).

Input (B, C, D, H, W) float, output logits (B, out_channels, D, H, W). Level ``i`` (1..depth) is reached by
pooling with ``pools[i - 1]`` (strided convolution), each a (z, y, x) factor of 1 or 2, so anisotropic data
can keep z at full resolution in the first levels ((1, 2, 2) pooling). D, H and W must be multiples of the
product of the pooling factors along that axis (:func:`divisor`).

In training mode with ``deep_supervision=True`` the forward pass returns a list of logits, full resolution
first, then each lower decoder scale (``n_ds`` outputs); in eval mode it returns one tensor.
"""

from __future__ import annotations

import torch
from torch import nn

Pool = tuple[int, int, int]


def make_pools(depth: int, anisotropic_levels: int = 0) -> list[Pool]:
    """Pooling factors (z, y, x) per level: the first ``anisotropic_levels`` are (1, 2, 2), the rest (2, 2, 2)."""
    return [(1, 2, 2) if i < anisotropic_levels else (2, 2, 2) for i in range(depth)]


def divisor(pools: list[Pool]) -> Pool:
    """(z, y, x) factor every input side must be a multiple of: the product of the pooling factors."""
    out = [1, 1, 1]
    for p in pools:
        for a in range(3):
            out[a] *= p[a]
    return (out[0], out[1], out[2])


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(ch, affine=True, eps=1e-5)
    if kind == "batch":
        return nn.BatchNorm3d(ch)
    return nn.GroupNorm(8 if ch % 8 == 0 else 1, ch)


class ConvNormAct(nn.Sequential):
    """3x3x3 conv (given stride), norm, LeakyReLU(0.01); (B, cin, D, H, W) -> (B, cout, D/s, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, norm: str, stride: Pool = (1, 1, 1), act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
            _norm(norm, cout),
        ]
        if act:
            layers.append(nn.LeakyReLU(0.01, inplace=True))
        super().__init__(*layers)


class Stage(nn.Module):
    """Two conv blocks, the first with ``stride``; plain or residual (1x1x1 strided projection on the skip)."""

    def __init__(self, cin: int, cout: int, norm: str, stride: Pool, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.a = ConvNormAct(cin, cout, norm, stride)
        self.b = ConvNormAct(cout, cout, norm, act=not residual)
        if residual:
            self.skip = (
                nn.Identity()
                if cin == cout and stride == (1, 1, 1)
                else nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))
            )
            self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        return self.act(y + self.skip(x)) if self.residual else y


class UNet3D(nn.Module):
    """3D U-Net: strided-conv down-sampling, transposed-conv up-sampling, optional deep supervision.

    Args:
        in_channels, out_channels: input channels and logit channels.
        base_channels: channels of level 0; doubled per level, capped at ``max_channels``.
        pools: (z, y, x) pooling factor per level (its length is the depth).
        norm: ``"instance"`` (nnU-Net), ``"batch"`` or ``"group"``.
        residual: residual encoder stages.
        deep_supervision: return ``n_ds`` logits (full resolution first) in training mode.
        n_ds: number of supervised scales (capped at depth).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 32,
        pools: list[Pool] | None = None,
        norm: str = "instance",
        residual: bool = False,
        deep_supervision: bool = False,
        n_ds: int = 4,
        max_channels: int = 320,
    ) -> None:
        super().__init__()
        pools = [tuple(int(v) for v in p) for p in (pools if pools is not None else make_pools(4))]  # type: ignore[misc]
        if not pools or any(len(p) != 3 or any(v not in (1, 2) for v in p) for p in pools):
            raise ValueError(f"pools must be a non-empty list of (z, y, x) factors in {{1, 2}}, got {pools}")
        if norm not in ("instance", "batch", "group"):
            raise ValueError(f"norm must be instance, batch or group, got {norm!r}")
        self.pools: list[Pool] = pools  # type: ignore[assignment]
        self.deep_supervision = deep_supervision
        self.n_ds = max(1, min(n_ds, len(pools)))
        ch = [min(base_channels * 2**i, max_channels) for i in range(len(pools) + 1)]
        self.encoder = nn.ModuleList([Stage(in_channels, ch[0], norm, (1, 1, 1), residual)])
        for i, p in enumerate(pools):
            self.encoder.append(Stage(ch[i], ch[i + 1], norm, p, residual))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in reversed(range(len(pools))):  # decoder level i: from ch[i + 1] up to ch[i]
            self.up.append(nn.ConvTranspose3d(ch[i + 1], ch[i], pools[i], stride=pools[i], bias=False))
            self.decoder.append(Stage(2 * ch[i], ch[i], norm, (1, 1, 1), False))
            self.heads.append(nn.Conv3d(ch[i], out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, C, D, H, W) -> logits (B, out, D, H, W), or a list of logits per scale (training + DS)."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outs = []
        n = len(self.decoder)
        for j, (up, dec, head) in enumerate(zip(self.up, self.decoder, self.heads, strict=True)):
            x = dec(torch.cat([up(x), skips.pop()], 1))
            if self.deep_supervision and self.training and j >= n - self.n_ds:
                outs.append(head(x))
        if self.deep_supervision and self.training:
            return outs[::-1]
        return self.heads[-1](x)
