"""Building the 3D recipe's network (``UNet3D`` with nnU-Net-style pools) from a RunConfig."""

from __future__ import annotations

from lungtumor.core.config import RunConfig
from lungtumor.models.unet3d import UNet3D, make_pools


def build_model3d(cfg: RunConfig) -> UNet3D:
    """The 3D U-Net of a resolved config (pools from ``vol3d.anisotropic_levels``, which must be >= 0)."""
    v = cfg.vol3d
    levels = max(0, v.anisotropic_levels)
    m = cfg.model
    return UNet3D(
        m.in_channels,
        m.out_channels,
        m.base_channels,
        make_pools(m.depth, levels),
        m.norm,
        residual=v.residual_encoder,
        deep_supervision=v.deep_supervision,
        n_ds=min(4, m.depth),
    )
