"""Acquisition augmentation: training slices as if scanned at another dose, kernel or slice thickness.

Real chest CTs differ from our phantoms in their noise level, the texture a reconstruction kernel gives it
and their slice thickness (issue 23; docs/decisions/0036). :func:`reacquire` re-"acquires" a batch of
normalised context slices on its own device, per sample: thicker slices (each context slice averaged with
its neighbours, weights 1/4, 1/2, 1/4), added Gaussian noise of an sd drawn in HU, then a reconstruction
kernel between a 1-px Gaussian blur and an unsharp mask of the same width (after the noise, so a sharp kernel
sharpens the noise as a real one does), and the prepared window's clip. Masks are not touched. Pure torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lungtumor.core.config import AugmentConfig

_BLUR_SIGMA_PX = 1.0


def _gauss_kernel(device: torch.device) -> torch.Tensor:
    """The separable 1-px Gaussian (5 taps, sum 1) as a (1, 1, 5) tensor."""
    x = torch.arange(-2, 3, device=device, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * _BLUR_SIGMA_PX**2))
    return (k / k.sum()).view(1, 1, 5)


def blur_px(img: torch.Tensor) -> torch.Tensor:
    """A 1-px Gaussian blur of every (H, W) plane of ``img`` (B, C, H, W), edges replicated."""
    b, c, h, w = img.shape
    k = _gauss_kernel(img.device)
    x = F.pad(img.reshape(b * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    x = F.conv2d(x, k.view(1, 1, 5, 1))
    return x.view(b, c, h, w)


def thicken(img: torch.Tensor) -> torch.Tensor:
    """Each context channel of ``img`` (B, C, H, W), C slices along z, averaged with its neighbours
    (1/4, 1/2, 1/4; the edge slices repeat themselves). C = 1 is returned as is."""
    if img.shape[1] < 3:
        return img
    up = torch.cat([img[:, :1], img[:, :-1]], 1)
    down = torch.cat([img[:, 1:], img[:, -1:]], 1)
    return 0.25 * up + 0.5 * img + 0.25 * down


def reacquire(
    img: torch.Tensor,
    cfg: AugmentConfig,
    scale: tuple[float, float, float],
    n_ct: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Re-acquire a batch of normalised context slices, per sample with probability ``cfg.acq_p``.

    Args:
        img: (B, C, H, W) float32 model input, C context slices along z (the first ``n_ct`` are CT; any
            channel after them, e.g. a blob channel, is left alone).
        cfg: ``acq_p``, ``acq_noise_hu`` (sd range of the added noise, HU), ``acq_kernel`` (-1 blur .. +1
            sharpen), ``acq_thick_p`` (share of the re-acquired samples with thicker slices).
        scale: (model-input units per HU, window low, window high) of the cache's normalisation
            (``preprocessing.frame.hu_scale``); the result is clipped to the window.
        generator: a ``torch.Generator`` on ``img.device`` for reproducible draws.

    Returns:
        float32 (B, C, H, W); samples left out (and ``acq_p`` 0) unchanged.
    """
    if cfg.acq_p <= 0:
        return img
    b, dev = img.shape[0], img.device
    n_ct = img.shape[1] if n_ct is None else n_ct
    with torch.autocast(dev.type, enabled=False):
        x = img[:, :n_ct].float()
        u = torch.rand((b, 4), generator=generator, device=dev)
        on = (u[:, 0] < cfg.acq_p).view(b, 1, 1, 1)
        thick = on & (u[:, 1] < cfg.acq_thick_p).view(b, 1, 1, 1)
        x = torch.where(thick, thicken(x), x)
        sd = (cfg.acq_noise_hu[0] + u[:, 2] * (cfg.acq_noise_hu[1] - cfg.acq_noise_hu[0])) * scale[0]
        noise = torch.randn(x.shape, generator=generator, device=dev) * sd.view(b, 1, 1, 1)
        x = torch.where(on, x + noise, x)
        k = cfg.acq_kernel[0] + u[:, 3] * (cfg.acq_kernel[1] - cfg.acq_kernel[0])
        x = torch.where(on, x + k.view(b, 1, 1, 1) * (x - blur_px(x)), x)
        if math.isfinite(scale[1]) or math.isfinite(scale[2]):
            x = torch.where(on, x.clamp(scale[1], scale[2]), x)
        return torch.cat([x, img[:, n_ct:].float()], 1) if n_ct < img.shape[1] else x
