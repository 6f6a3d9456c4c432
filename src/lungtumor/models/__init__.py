"""Model registry: ``create_model(cfg)`` builds a pure ``nn.Module`` from a :class:`ModelConfig`.

Every model takes (B, C, H, W) float input, C = ``cfg.in_channels`` (2 * context_slices + 1 neighbouring
axial slices), and returns logits (B, ``cfg.out_channels``, H, W). Imports only torch (no SimpleITK/monai).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lungtumor.core.config import ModelConfig
from lungtumor.core.errors import InputError
from lungtumor.models.unet2d import UNet2D, check_input_shape, padded_size
from lungtumor.models.unet3d import UNet3D

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "unet2d": UNet2D.from_config,
    "unet3d": UNet3D.from_config,
}


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the model named ``cfg.arch``.

    Raises:
        InputError: unknown architecture (the message lists the valid names) or an invalid setting.
    """
    if cfg.arch not in MODELS:
        raise InputError(
            "model.arch", f"unknown architecture {cfg.arch!r}; valid names: {', '.join(sorted(MODELS))}"
        )
    return MODELS[cfg.arch](cfg)


__all__ = ["MODELS", "UNet2D", "UNet3D", "check_input_shape", "create_model", "padded_size"]
