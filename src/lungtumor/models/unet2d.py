"""A plain 2D U-Net (Ronneberger et al. 2015) with configurable width, depth and normalisation.

Input (B, C, H, W) float, output logits (B, out_channels, H, W). H and W must be multiples of 2**depth;
:func:`check_input_shape` says which padded size to use when they are not.
"""

from __future__ import annotations

import torch
from torch import nn

from lungtumor.core.config import ModelConfig
from lungtumor.core.errors import InputError

NORMS = ("batch", "instance", "group")


def padded_size(h: int, w: int, depth: int) -> tuple[int, int]:
    """The smallest (H, W) >= (h, w) that are multiples of 2**depth (pixels)."""
    m = 2**depth
    return (-(-h // m) * m, -(-w // m) * m)


def check_input_shape(shape: tuple[int, ...] | torch.Size, in_channels: int, depth: int) -> None:
    """Raise ValueError unless ``shape`` is (B, in_channels, H, W) with H, W multiples of 2**depth.

    The message names the padded size to use, e.g. ``pad to 112x112``.
    """
    if len(shape) != 4:
        raise ValueError(f"expected input (B, C, H, W), got shape {tuple(shape)}")
    _, c, h, w = (int(s) for s in shape)
    if c != in_channels:
        raise ValueError(f"expected {in_channels} input channels (2*context_slices+1), got {c}")
    m = 2**depth
    if h % m or w % m:
        ph, pw = padded_size(h, w, depth)
        raise ValueError(
            f"input size {h}x{w} is not a multiple of {m} (2**depth, depth={depth}); pad to {ph}x{pw} "
            f"(or prepare with prep.size = [{ph}, {pw}])"
        )


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    return nn.GroupNorm(min(8, ch) if ch % min(8, ch) == 0 else 1, ch)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, norm, ReLU); (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class UNet2D(nn.Module):
    """U-Net with ``depth`` 2x down-samplings; level i has ``base_channels * 2**i`` channels.

    Args:
        in_channels: C of the (B, C, H, W) input.
        out_channels: channels of the (B, out_channels, H, W) logits.
        base_channels: width of the first level (UNet-64 means 64).
        depth: number of max-pool steps (1 to 7); H and W must be multiples of 2**depth.
        norm: ``"batch"``, ``"instance"`` or ``"group"``.

    Raises:
        InputError: an invalid setting, naming the ``model.*`` key and the reason.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        depth: int = 4,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        for key, value, lo, hi in (
            ("in_channels", in_channels, 1, 64),
            ("out_channels", out_channels, 1, 64),
            ("base_channels", base_channels, 1, 512),
            ("depth", depth, 1, 7),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise InputError(f"model.{key}", f"must be an integer between {lo} and {hi}, got {value!r}")
        if norm not in NORMS:
            raise InputError("model.norm", f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        self.in_channels, self.out_channels, self.depth = in_channels, out_channels, depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([ConvBlock(in_channels, widths[0], norm)])
        self.down.extend(ConvBlock(widths[i - 1], widths[i], norm) for i in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(depth, 0, -1)
        )
        self.up = nn.ModuleList(
            ConvBlock(2 * widths[i - 1], widths[i - 1], norm) for i in range(depth, 0, -1)
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> UNet2D:
        """Build from a :class:`ModelConfig`."""
        return cls(cfg.in_channels, cfg.out_channels, cfg.base_channels, cfg.depth, cfg.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> logits (B, out_channels, H, W)."""
        check_input_shape(x.shape, self.in_channels, self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.upsample, self.up, strict=True):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
