"""Joint image + mask augmentation.

:func:`augment_batch` is the training path: a whole batch on its own device (GPU or CPU), with scale,
rotation, left-right flip and elastic deformation combined into ONE sampling grid and ONE ``grid_sample``
call over image and mask together (the mask is sampled bilinearly and thresholded at 0.5, so it stays
binary and aligned with the image). :func:`augment_numpy` is the seed-style per-sample CPU version
(scipy), kept for the throughput benchmark. Pure functions: torch/numpy/scipy only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lungtumor.core.config import AugmentConfig


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _draw_transform(
    b: int, cfg: AugmentConfig, g: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample draws, each (B,) float32: on (1 = augment, with probability ``cfg.p``), scale (1 when off),
    rotation angle in radians (0 when off) and flip (-1 mirrors x, only when on and ``cfg.flip``)."""
    on = (torch.rand(b, generator=g, device=device) < cfg.p).to(torch.float32)
    s = _uniform(b, cfg.scale[0], cfg.scale[1], g, device)
    s = on * s + (1 - on)
    ang = _uniform(b, -cfg.rotation_deg, cfg.rotation_deg, g, device) * (math.pi / 180) * on
    flip = torch.ones(b, device=device)
    if cfg.flip:
        flip = torch.where((torch.rand(b, generator=g, device=device) < 0.5) & (on > 0), -1.0, 1.0)
    return on, s, ang, flip


def _elastic_noise(
    b: int,
    h: int,
    w: int,
    cfg: AugmentConfig,
    on: torch.Tensor,
    g: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unit smooth noise (B, 2, h, w) (Gaussian on control points 3 sigma apart, upsampled bicubically) and the
    per-sample switch (B,) (1 with probability ``cfg.elastic_p`` when on); None when elastic is off.
    Multiply by ``cfg.elastic_alpha_px`` for a displacement in pixels."""
    if not (cfg.elastic_p > 0 and cfg.elastic_alpha_px > 0):
        return None
    spacing = 3 * max(cfg.elastic_sigma_px, 1.0)
    gh, gw = max(2, math.ceil(h / spacing)) + 1, max(2, math.ceil(w / spacing)) + 1
    noise = torch.randn(b, 2, gh, gw, generator=g, device=device)
    disp = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True)
    el = (torch.rand(b, generator=g, device=device) < cfg.elastic_p).to(torch.float32) * on
    return disp, el


def _jitter(
    b: int, j: float, g: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity gain in [1-j, 1+j] and bias in [-j, j], each (B, 1, 1, 1)."""
    gain = _uniform(b, 1 - j, 1 + j, g, device).view(b, 1, 1, 1)
    bias = _uniform(b, -j, j, g, device).view(b, 1, 1, 1)
    return gain, bias


def random_grid(
    b: int, h: int, w: int, cfg: AugmentConfig, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """A random sampling grid (B, H, W, 2) in ``grid_sample``'s normalised (x, y) coordinates.

    Per sample, with probability ``cfg.p``: scale in ``cfg.scale`` (factor > 1 zooms in), rotation
    uniform in +-``cfg.rotation_deg`` degrees, a left-right flip with probability 0.5 if ``cfg.flip``, and
    with probability ``cfg.elastic_p`` a smooth displacement field with standard deviation
    ``cfg.elastic_alpha_px`` pixels, like Gaussian-smoothed noise of width ``cfg.elastic_sigma_px`` pixels
    (Gaussian noise on control points 3 sigma apart, upsampled bicubically). Rotation is done in pixel units so non-square slices are not sheared.
    """
    f32 = torch.float32
    on, s, ang, flip = _draw_transform(b, cfg, generator, device)
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    # theta maps output (x, y) to input (x, y) in normalised units: D^-1 R D / s, with D = diag(W/2, H/2),
    # then the flip multiplies the input x.
    theta = torch.zeros(b, 2, 3, device=device, dtype=f32)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin * (h / w) * flip
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    elastic = _elastic_noise(b, h, w, cfg, on, generator, device)
    if elastic is not None:
        disp, el = elastic[0], elastic[1].view(b, 1, 1, 1)
        scale = torch.tensor([2.0 / w, 2.0 / h], device=device).view(1, 2, 1, 1) * cfg.elastic_alpha_px
        grid = grid + (disp * scale * el).permute(0, 2, 3, 1)
    return grid


def augment_batch(
    img: torch.Tensor, seg: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch jointly on its device.

    Args:
        img: (B, C, H, W) float, normalised CT (C = neighbouring slices).
        seg: (B, 1, H, W) float or uint8 in {0, 1}.
        cfg: the augmentation settings.
        generator: a ``torch.Generator`` on ``img.device`` for reproducible draws.

    Returns:
        (img float32 (B, C, H, W), seg float32 (B, 1, H, W) in {0, 1}).
    """
    b, c, h, w = img.shape
    device = img.device
    with torch.autocast(device.type, enabled=False):
        img = img.float()
        seg = seg.float()
        if cfg.p <= 0:
            return img, seg
        grid = random_grid(b, h, w, cfg, generator, device)
        out = F.grid_sample(
            torch.cat([img, seg], 1), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        img, seg = out[:, :c], (out[:, c:] > 0.5).float()
        if cfg.intensity_jitter > 0:
            gain, bias = _jitter(b, cfg.intensity_jitter, generator, device)
            img = img * gain + bias
    return img, seg


def augment_numpy(
    img: np.ndarray, seg: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seed-style per-sample CPU augmentation (scipy): the same transforms as :func:`augment_batch`.

    Args:
        img: (C, H, W) float32.
        seg: (H, W) uint8 {0, 1}.

    Returns:
        (img (C, H, W) float32 bilinear, seg (H, W) uint8 nearest-neighbour).
    """

    c, h, w = img.shape
    if rng.random() >= cfg.p:
        return img.astype(np.float32), seg
    s = rng.uniform(*cfg.scale)
    a = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    flip = -1.0 if cfg.flip and rng.random() < 0.5 else 1.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y0, x0 = yy - cy, xx - cx
    xs = (math.cos(a) * x0 - math.sin(a) * y0) / s * flip + cx
    ys = (math.sin(a) * x0 + math.cos(a) * y0) / s + cy
    if cfg.elastic_alpha_px > 0 and rng.random() < cfg.elastic_p:
        for arr in (xs, ys):
            d = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)).astype(np.float32), cfg.elastic_sigma_px)
            d *= cfg.elastic_alpha_px / max(float(np.abs(d).max()), 1e-6)
            arr += d
    coords = np.stack([ys, xs])
    out = np.stack(
        [ndimage.map_coordinates(ch, coords, order=1, mode="nearest") for ch in img.astype(np.float32)]
    )
    seg_out = ndimage.map_coordinates(seg, coords, order=0, mode="nearest").astype(np.uint8)
    if cfg.intensity_jitter > 0:
        j = cfg.intensity_jitter
        out = out * rng.uniform(1 - j, 1 + j) + rng.uniform(-j, j)
    return out.astype(np.float32), seg_out


def _crop_corners(
    seg: torch.Tensor, size: tuple[int, int], p_tumour: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer top-left corners (y0, x0), each (B,), of ``size`` crops of seg (B, 1, H, W).

    With probability ``p_tumour`` a sample that contains tumour gets a crop around one of its tumour pixels
    (chosen at random, then shifted by up to a quarter crop so the tumour is not always dead centre);
    otherwise the crop lies anywhere. Corners keep the crop inside the slice.
    """
    b, _, h, w = seg.shape
    s_h, s_w = size
    dev = seg.device
    u = torch.rand((b, 5), generator=generator, device=dev)
    y0 = (u[:, 0] * (h - s_h + 1)).long().clamp_(0, h - s_h)
    x0 = (u[:, 1] * (w - s_w + 1)).long().clamp_(0, w - s_w)
    flat = seg[:, 0].flatten(1) > 0
    has = flat.any(1) & (u[:, 2] < p_tumour)
    if bool(has.any()):
        # a random tumour pixel per sample: argmax of random scores restricted to tumour pixels
        scores = torch.rand(flat.shape, generator=generator, device=dev) * flat
        pick = scores.argmax(1)
        cy = pick // w + ((u[:, 3] - 0.5) * (s_h / 2)).long()
        cx = pick % w + ((u[:, 4] - 0.5) * (s_w / 2)).long()
        y0 = torch.where(has, (cy - s_h // 2).clamp(0, h - s_h), y0)
        x0 = torch.where(has, (cx - s_w // 2).clamp(0, w - s_w), x0)
    return y0, x0


def random_crop(
    img: torch.Tensor,
    seg: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    p_tumour: float = 0.67,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop every sample of a batch to ``size`` x ``size`` without resampling (see :func:`_crop_corners`).

    img (B, C, H, W), seg (B, 1, H, W) -> (B, C, s, s), (B, 1, s, s).
    """
    b, _, h, w = img.shape
    s_h, s_w = min(size, h), min(size, w)
    dev = img.device
    y0, x0 = _crop_corners(seg, (s_h, s_w), p_tumour, generator)
    iy = y0[:, None] + torch.arange(s_h, device=dev)[None]  # (B, s_h)
    ix = x0[:, None] + torch.arange(s_w, device=dev)[None]  # (B, s_w)
    bi = torch.arange(b, device=dev)[:, None, None]
    img_c = img.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    seg_c = seg.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    return img_c.contiguous(), seg_c.contiguous()


def augment_crop_batch(
    img: torch.Tensor,
    seg: torch.Tensor,
    cfg: AugmentConfig,
    size: int,
    generator: torch.Generator | None = None,
    p_tumour: float = 0.67,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment and crop a batch in ONE ``grid_sample`` whose output is the crop (training on crops).

    The sampling grid has the crop's size, so the affine, flip and elastic work costs (s/H)² of a full
    slice. Scale and rotation turn about the crop centre, so a tumour-centred crop keeps its tumour in view.
    A sample with augmentation off (probability ``1 - cfg.p``) is an exact pixel crop.

    Args:
        img: (B, C, H, W) float, normalised CT (C = neighbouring slices).
        seg: (B, 1, H, W) float or uint8 in {0, 1}.
        cfg: the augmentation settings (as :func:`random_grid`).
        size: crop side in pixels (clipped to H and W).
        generator: a ``torch.Generator`` on ``img.device`` for reproducible draws.
        p_tumour: share of crops centred near a tumour pixel (samples that have one).

    Returns:
        (img float32 (B, C, s, s), seg float32 (B, 1, s, s) in {0, 1}).
    """
    b, c, h, w = img.shape
    s_h, s_w = min(size, h), min(size, w)
    dev = img.device
    f32 = torch.float32
    with torch.autocast(dev.type, enabled=False):
        y0, x0 = _crop_corners(seg, (s_h, s_w), p_tumour, generator)
        on, sc, ang, flip = _draw_transform(b, cfg, generator, dev)
        # output pixel offsets from the crop centre (pixels), then rotate / scale / flip into the input
        oy = (torch.arange(s_h, device=dev, dtype=f32) - (s_h - 1) / 2).view(1, s_h, 1)
        ox = (torch.arange(s_w, device=dev, dtype=f32) - (s_w - 1) / 2).view(1, 1, s_w)
        cos, sin = (torch.cos(ang) / sc).view(b, 1, 1), (torch.sin(ang) / sc).view(b, 1, 1)
        px = flip.view(b, 1, 1) * (cos * ox - sin * oy)
        py = sin * ox + cos * oy
        elastic = _elastic_noise(b, s_h, s_w, cfg, on, generator, dev)
        if elastic is not None:
            disp, el = elastic
            disp = disp * (el * cfg.elastic_alpha_px).view(b, 1, 1, 1)
            px, py = px + disp[:, 0], py + disp[:, 1]
        cy = (y0.to(f32) + (s_h - 1) / 2).view(b, 1, 1)
        cx = (x0.to(f32) + (s_w - 1) / 2).view(b, 1, 1)
        # pixel centre i sits at (2i + 1) / n - 1 in grid_sample's align_corners=False coordinates
        grid = torch.stack([(2 * (cx + px) + 1) / w - 1, (2 * (cy + py) + 1) / h - 1], -1)
        out = F.grid_sample(
            torch.cat([img.float(), seg.float()], 1), grid, mode="bilinear", padding_mode="border",
            align_corners=False,
        )  # fmt: skip
        img_o, seg_o = out[:, :c], (out[:, c:] > 0.5).float()
        if cfg.intensity_jitter > 0:
            gain, bias = _jitter(b, cfg.intensity_jitter, generator, dev)
            img_o = torch.where(on.view(b, 1, 1, 1) > 0, img_o * gain + bias, img_o)
    return img_o, seg_o
