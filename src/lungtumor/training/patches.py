"""3D data (the cache is ``preprocessing.cache.Cache``, kind ``3d``): planning patch/batch size, patch sampling and batched 3D augmentation.

Patches are cut from memory-mapped (or RAM-resident) float16 volumes in the main process (slicing only), moved
to the training device, and augmented there as one batch: one ``affine_grid``/``grid_sample`` for flips,
rotation and scaling, then intensity jitter. No per-sample CPU workers.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from lungtumor.core.config import RunConfig, Vol3DConfig
from lungtumor.core.errors import InputError
from lungtumor.models.unet3d import Pool, divisor, make_pools
from lungtumor.preprocessing.cache import Cache

_BYTES_PER_VOXEL_BASE32 = (
    3000  # training activation memory per patch voxel for a base-32 3D U-Net (bf16/fp32 mix)
)
_CPU_BUDGET = 1 << 30
_MAX_PATCH_VOXELS = 160 * 160 * 128


# ----------------------------------------------------------------------------- planning


def memory_budget_bytes(cfg: Vol3DConfig, device: torch.device) -> int:
    """Activation memory to plan with: configured, else 60 % of free GPU memory, else 1 GiB on the CPU."""
    if cfg.memory_budget_gb > 0:
        return int(cfg.memory_budget_gb * (1 << 30))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    return _CPU_BUDGET


def plan_pools(spacing_xyz: tuple[float, ...], depth: int, anisotropic_levels: int) -> list[Pool]:
    """Pooling per level: (1, 2, 2) while z spacing > 2x the in-plane spacing (halved per (1,2,2) level)."""
    if anisotropic_levels < 0:
        ratio = spacing_xyz[2] / max(min(spacing_xyz[0], spacing_xyz[1]), 1e-6)
        anisotropic_levels = 0
        while ratio > 2.0 and anisotropic_levels < depth - 1:
            anisotropic_levels += 1
            ratio /= 2.0
    return make_pools(depth, anisotropic_levels)


def plan_patch(
    spacing_xyz: tuple[float, ...],
    median_shape_zyx: tuple[int, int, int],
    pools: list[Pool],
    budget_bytes: int,
    base_channels: int,
) -> tuple[tuple[int, int, int], int]:
    """Patch (z, y, x) voxels and batch size for a memory budget.

    The patch covers about the same extent in mm on every axis (voxels proportional to 1/spacing), is no
    larger than the median case (rounded up to the pooling divisor) and than ``_MAX_PATCH_VOXELS``; it
    takes at most half the budget, and the batch fills the rest (2 to 16).
    """
    per_voxel = _BYTES_PER_VOXEL_BASE32 * base_channels / 32
    vox_budget = max(budget_bytes / per_voxel, 4096.0)
    target = min(vox_budget / 2, _MAX_PATCH_VOXELS)
    div = divisor(pools)
    sp = np.asarray(spacing_xyz[::-1], dtype=np.float64)  # (z, y, x)
    rel = (1.0 / sp) / (1.0 / sp).max()
    cap = np.asarray([-(-n // d) * d for n, d in zip(median_shape_zyx, div, strict=True)], dtype=np.float64)
    f = (target / np.prod(rel)) ** (1 / 3)
    for _ in range(50):  # grow the axes that are not capped until the voxel target is met
        p = np.minimum(rel * f, cap)
        if np.prod(p) >= target * 0.98 or np.all(p >= cap):
            break
        f *= 1.05
    patch = [max(d, int(v // d) * d) for v, d in zip(p, div, strict=True)]
    batch = int(np.clip(vox_budget // float(np.prod(patch)), 2, 16))
    return (patch[0], patch[1], patch[2]), batch


def resolve_plan(cfg: RunConfig, cache: Cache, device: torch.device) -> RunConfig:
    """Copy of ``cfg`` with spacing, pooling, patch and batch resolved from the cache and the memory budget."""
    cfg = copy.deepcopy(cfg)
    v = cfg.vol3d
    v.target_spacing = tuple(float(s) for s in cache.spacing)  # type: ignore[assignment]
    pools = plan_pools(cache.spacing, cfg.model.depth, v.anisotropic_levels)
    v.anisotropic_levels = sum(1 for p in pools if p[0] == 1)
    median = tuple(int(np.median([s[a] for s in cache.shapes.values()])) for a in range(3))
    patch, batch = plan_patch(
        cache.spacing, median, pools, memory_budget_bytes(v, device), cfg.model.base_channels
    )  # type: ignore[arg-type]
    if min(v.patch_size) <= 0:
        v.patch_size = patch
    if v.batch_size <= 0:
        v.batch_size = batch

    div = divisor(pools)
    bad = [a for a in range(3) if v.patch_size[a] % div[a]]
    if bad:
        raise InputError(
            "vol3d.patch_size", f"{list(v.patch_size)} must be multiples of {list(div)} (the pooling)"
        )
    return cfg


# ----------------------------------------------------------------------------- sampling


def _crop(a: np.ndarray, start: np.ndarray, patch: tuple[int, int, int], fill: float) -> np.ndarray:
    """Patch of ``a`` (z, y, x) starting at ``start`` (may be negative / run past the end: padded with ``fill``)."""
    out = np.full(patch, fill, dtype=a.dtype)
    src, dst = [], []
    for s, p, n in zip(start, patch, a.shape, strict=True):
        a0, a1 = max(0, s), min(n, s + p)
        src.append(slice(a0, max(a0, a1)))
        dst.append(slice(a0 - s, a0 - s + max(0, a1 - a0)))
    out[tuple(dst)] = a[tuple(src)]
    return out


class PatchSampler:
    """Draws training batches: (img float16 (B, 1, D, H, W), seg uint8 (B, 1, D, H, W)) as CPU tensors.

    A fraction ``fg_fraction`` of each batch (rounded, at least one patch when > 0 and tumour exists) is
    centred on a random tumour voxel of its case; the rest is uniform over the case.
    """

    def __init__(
        self, cache: Cache, names: list[str], patch: tuple[int, int, int], fg_fraction: float
    ) -> None:
        self.cache, self.names, self.patch, self.fg = cache, list(names), patch, fg_fraction

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n_fg = int(round(batch * self.fg)) if self.fg > 0 else 0
        if self.fg > 0:
            n_fg = max(1, n_fg)
        half = np.asarray(self.patch) // 2
        imgs, segs = [], []
        for b in range(batch):
            name = self.names[int(rng.integers(len(self.names)))]
            img, seg = self.cache.array(name, "img"), self.cache.array(name, "seg")
            fg = self.cache.array(name, "fg")
            shape = np.asarray(img.shape)
            if b >= batch - n_fg and len(fg):
                centre = np.asarray(fg[int(rng.integers(len(fg)))], dtype=np.int64)
            else:
                lo = np.minimum(half, shape - 1)
                hi = np.maximum(shape - (np.asarray(self.patch) - half), lo)
                centre = np.asarray([rng.integers(a, b_ + 1) for a, b_ in zip(lo, hi, strict=True)])
            start = centre - half
            imgs.append(_crop(img, start, self.patch, 0.0))
            segs.append(_crop(seg, start, self.patch, 0))
        return torch.from_numpy(np.stack(imgs)[:, None]), torch.from_numpy(np.stack(segs)[:, None])


# ----------------------------------------------------------------------------- augmentation


def augment_batch_3d(
    img: torch.Tensor,
    seg: torch.Tensor,
    cfg: Vol3DConfig,
    spacing_xyz: tuple[float, ...],
    jitter: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch jointly on its device with one ``affine_grid``/``grid_sample``.

    Per sample: a flip of each axis with p 0.5, a rotation up to ``cfg.rotation_deg`` about z (and, for
    near-isotropic spacing, a third of that about x and y), zoom in ``cfg.scale``; rotation is done in mm so
    anisotropic patches are not sheared. Then gain/offset jitter of +-``jitter`` (z-score units).

    Args:
        img: (B, 1, D, H, W) float; seg: (B, 1, D, H, W) {0, 1}.

    Returns:
        (img float32, seg float32 in {0, 1}), shapes unchanged.
    """
    b, _, d, h, w = img.shape
    dev = img.device
    img, seg = img.float(), seg.float()

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator, device=dev) * (hi - lo) + lo

    rad = math.radians(cfg.rotation_deg)
    iso = spacing_xyz[2] <= 2.0 * min(spacing_xyz[0], spacing_xyz[1])
    az = u(-rad, rad)
    ax_, ay = (u(-rad / 3, rad / 3), u(-rad / 3, rad / 3)) if iso else (torch.zeros(b, device=dev),) * 2

    def rot(a: torch.Tensor, i: int, j: int) -> torch.Tensor:
        r = torch.eye(3, device=dev).repeat(b, 1, 1)
        c, s = torch.cos(a), torch.sin(a)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        return r

    # affine_grid works on normalised (x, y, z) coordinates; half-extents in mm map them to physical space
    ext = torch.tensor([w * spacing_xyz[0], h * spacing_xyz[1], d * spacing_xyz[2]], device=dev) / 2
    r = rot(az, 0, 1) @ rot(ax_, 1, 2) @ rot(ay, 0, 2)
    zoom = u(cfg.scale[0], cfg.scale[1]).view(b, 1, 1)
    flips = torch.where(torch.rand(b, 3, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    m = torch.diag_embed(1 / ext) @ r @ torch.diag_embed(ext) / zoom @ torch.diag_embed(flips)
    theta = torch.cat([m, torch.zeros(b, 3, 1, device=dev)], 2)
    grid = F.affine_grid(theta, [b, 1, d, h, w], align_corners=False)
    out = F.grid_sample(
        torch.cat([img, seg], 1), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    img, seg = out[:, :1], (out[:, 1:] >= 0.5).float()
    if jitter > 0:
        img = img * u(1 - jitter, 1 + jitter).view(b, 1, 1, 1, 1) + u(-jitter, jitter).view(b, 1, 1, 1, 1)
    return img, seg
