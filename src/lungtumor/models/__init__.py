"""Model registry, one build path: ``build_model(run_config)`` is the network a run trains and predicts with.

2D (``unet2d``): input (B, C, H, W) float, C = ``cfg.in_channels`` (2 * context_slices + 1 neighbouring axial
slices), logits (B, ``cfg.out_channels``, H, W); ``create_model(model_config)`` builds it alone. 3D (``unet3d``):
input (B, 1, D, H, W), its pools and deep supervision from the run's ``vol3d`` settings, so it needs the whole
RunConfig. Imports only torch (no SimpleITK/monai).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lungtumor.core.config import ARCH_3D, ModelConfig, RunConfig
from lungtumor.core.errors import InputError
from lungtumor.models.unet2d import UNet2D, check_input_shape, padded_size
from lungtumor.models.unet3d import UNet3D, make_pools

#: The 2D architectures ``create_model`` builds from a ModelConfig alone.
MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "unet2d": UNet2D.from_config,
}


def is_3d(cfg: RunConfig) -> bool:
    """True when ``cfg`` is the 3D recipe."""
    return cfg.model.arch == ARCH_3D


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the model named ``cfg.arch``.

    Raises:
        InputError: unknown architecture (the message lists the valid names) or an invalid setting.
    """
    if cfg.arch == ARCH_3D:
        raise InputError(
            "model.arch", "the 3D network takes its pools from the run's vol3d settings: use build_model"
        )
    if cfg.arch not in MODELS:
        raise InputError(
            "model.arch",
            f"unknown architecture {cfg.arch!r}; valid names: {', '.join(sorted([*MODELS, ARCH_3D]))}",
        )
    return MODELS[cfg.arch](cfg)


def build_model(cfg: RunConfig) -> nn.Module:
    """The network of a resolved run config: the 3D U-Net (pools from ``vol3d.anisotropic_levels``, which must be
    >= 0) for ``unet3d``, else :func:`create_model` of ``cfg.model``."""
    if not is_3d(cfg):
        return create_model(cfg.model)
    v, m = cfg.vol3d, cfg.model
    return UNet3D(
        m.in_channels,
        m.out_channels,
        m.base_channels,
        make_pools(m.depth, max(0, v.anisotropic_levels)),
        m.norm,
        residual=v.residual_encoder,
        deep_supervision=v.deep_supervision,
        n_ds=min(4, m.depth),
    )


__all__ = [
    "MODELS",
    "UNet2D",
    "UNet3D",
    "build_model",
    "check_input_shape",
    "create_model",
    "is_3d",
    "padded_size",
]
