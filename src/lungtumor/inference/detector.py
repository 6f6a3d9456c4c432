"""The nodule detector at predict time: candidates, scoring (with flip TTA) and the cubes' probabilities.

The detector (config ``nodule``) works on its own plan: the canonical HU volume sampled on an isotropic grid of
``spacing_mm`` that spans the 2D recipe's prepared frame (``preprocessing.detector_grid``; decision 0035), so
that its probabilities land on the frame beside the 2D model's. Candidates are local maxima of the
scale-normalised Laplacian of Gaussian (bright blobs of radius ``radii_mm``) inside the lungs: every lesion from
about 5 mm up gives at least one, and so do many vessels, which the network then tells apart. Training it is
``training.detector``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from lungtumor.core.config import NoduleConfig
from lungtumor.core.errors import InputError
from lungtumor.core.runtime import autocast
from lungtumor.imaging.lungs import lung_mask_from_hu
from lungtumor.imaging.resample import resample_sparse
from lungtumor.models.nodule3d import NodulePatchNet, normalise_hu

#: Checkpoint key of the detector's weights.
CKPT_KEY = "lungtumor_nodule"


def candidates_on_grid(hu_iso: np.ndarray, cfg: NoduleConfig, threads: int = 1) -> np.ndarray:
    """Candidate centres (N, 3) (grid voxel indices) on the detector's grid ``hu_iso`` (float32 HU, from
    ``preprocessing.detector_grid.hu_on_detector_grid``)."""
    return find_candidates(hu_iso, cfg.spacing_mm, cfg.radii_mm, cfg.min_response, cfg.min_hu, threads)


def bf16_autocast(device: torch.device, bf16: bool):
    """bf16 autocast when ``bf16``, else a no-op context."""
    return autocast(device, "bf16" if bf16 else "32")


# channels-last: oneDNN's faster layout for these convolutions (19 % per bf16 training step on 2 cores,
# benchmarks/layout_speed.py)
CL3D = torch.channels_last_3d


def cubes_in(hu: np.ndarray, dev: torch.device) -> torch.Tensor:
    """HU cubes (B, P, P, P) → the network's input (B, 1, P, P, P), normalised, channels-last, on ``dev``."""
    return normalise_hu(torch.from_numpy(np.asarray(hu)).to(dev))[:, None].contiguous(memory_format=CL3D)


@torch.no_grad()
def cube_logits(
    net: NodulePatchNet,
    hu: np.ndarray,
    dev: torch.device,
    bf16: bool,
    index: np.ndarray | None = None,
    batch: int = 256,
) -> np.ndarray:
    """Score logits (N,) float32 of the HU cubes ``hu[index]`` (all when None; (N, P, P, P)), ``batch`` at a
    time, so that only one batch of cubes is copied at once."""
    index = np.arange(len(hu)) if index is None else np.asarray(index)
    out = [np.zeros(0, np.float32)]
    for i in range(0, len(index), batch):
        with bf16_autocast(dev, bf16):
            out.append(net(cubes_in(hu[index[i : i + batch]], dev))[0].float().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def score_candidates(
    net: NodulePatchNet,
    hu_iso: np.ndarray,
    centres: np.ndarray,
    cfg: NoduleConfig,
    *,
    bf16: bool = True,
    batch: int | None = None,
    device: torch.device | str = "cpu",
    seg_from: float | None = None,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) in [0, 1] of the candidates ``centres`` (N, 3) of ``hu_iso`` (HU on the detector's frame),
    and the segmentation probability cubes (M, P, P, P) of those scoring at least ``seg_from`` (all when None).

    ``tta``: a candidate's score and cube are the means over the 8 flips of the cube's three axes (the
    unflipped pass and :func:`_flip_sum`). Only candidates that can still reach ``seg_from`` get them: the
    mean of 8 scores, each at most 1, reaches t only when the unflipped score is at least 8t - 7, so the
    others keep their one-pass score (below ``seg_from`` either way) and the result is that of flipping every
    candidate.

    ``batch`` None: 32 cubes at a time on the CPU (against 128, predict's peak memory on a 512x512x300 CT is
    0.4-0.65x of the input lower and the step is faster: ``benchmarks/predict_memory.py``), 256
    on a GPU (not timed yet)."""
    p = cfg.patch
    scores, cubes = [np.zeros(0, np.float32)], [np.zeros((0, p, p, p), np.float32)]
    padded = np.pad(np.clip(hu_iso, *PATCH_HU), p // 2, constant_values=PATCH_HU[0])  # once, not per batch
    dev = torch.device(device)
    if batch is None:
        batch = 32 if dev.type == "cpu" else 256
    net.to(dev, memory_format=CL3D).eval()
    # with tta: candidates that can still reach seg_from (one-pass score >= 8t - 7, the mean of 8 scores each
    # <= 1 reaching t needs that) keep their one-pass score and cube as the unflipped term of the mean
    bound = None if not tta else (-np.inf if seg_from is None else 8 * seg_from - 7 - 1e-6)
    cube_from = seg_from if bound is None else bound
    for i in range(0, len(centres), batch):
        c = centres[i : i + batch]
        x = cubes_in(cut_patches(padded, c, p), dev)
        with bf16_autocast(dev, bf16):
            score, seg = net(x)
        sc = torch.sigmoid(score.float()).cpu().numpy()
        scores.append(sc)
        keep = np.ones(len(sc), bool) if cube_from is None else sc >= cube_from
        if keep.any():
            cubes.append(torch.sigmoid(seg.float())[torch.from_numpy(keep).to(dev)].cpu().numpy())
    out, first = np.concatenate(scores), np.concatenate(cubes)
    if bound is None:
        return out, first
    sel = np.flatnonzero(out >= bound)  # the candidates whose cubes are in `first`, in order
    flipped = [np.zeros((0, p, p, p), np.float32)]
    for i in range(0, len(sel), batch):
        j = sel[i : i + batch]
        sc, cu = _flip_sum(net, cubes_in(cut_patches(padded, centres[j], p), dev), bf16)
        out[j] = (out[j] + sc) / 8
        cu = (first[i : i + batch] + cu) / 8
        flipped.append(cu if seg_from is None else cu[out[j] >= seg_from])
    return out, np.concatenate(flipped)


@torch.no_grad()
def _flip_sum(net: NodulePatchNet, x: torch.Tensor, bf16: bool) -> tuple[np.ndarray, np.ndarray]:
    """Summed scores (B,) and segmentation probabilities (B, P, P, P) over the 7 flips of one, two or all
    three axes of the network input ``x`` (B, 1, P, P, P) (the unflipped pass is the caller's), each
    segmentation flipped back before summing."""
    score = torch.zeros(x.shape[0], device=x.device)
    seg = torch.zeros(x.shape[:1] + x.shape[2:], device=x.device)
    for k in range(1, 8):
        dims = [d for d, bit in zip((2, 3, 4), (1, 2, 4), strict=True) if k & bit]
        with bf16_autocast(x.device, bf16):
            s, g = net(torch.flip(x, dims))
        score += torch.sigmoid(s.float())
        seg += torch.flip(torch.sigmoid(g.float()), [d - 1 for d in dims])
    return score.cpu().numpy(), seg.cpu().numpy()


def detector_probability(
    net: NodulePatchNet,
    hu_iso: np.ndarray,
    frame_shape: Sequence[int],
    cfg: NoduleConfig,
    *,
    bf16: bool = True,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """The detector's tumour probability on the prepared frame of shape ``frame_shape`` (z, H, W), from the HU on
    its grid ``hu_iso`` (``preprocessing.detector_grid.hu_on_detector_grid``, which spans that frame).

    Each candidate whose score is at least ``cfg.threshold`` contributes its segmentation cube; where cubes
    overlap the maximum counts; 0 elsewhere. float32 (z, H, W).
    """
    threads = max(1, torch.get_num_threads())
    centres = candidates_on_grid(hu_iso, cfg, threads)
    out = np.zeros(tuple(frame_shape), np.float32)
    if len(centres) == 0:
        return out
    scores, cubes = score_candidates(
        net, hu_iso, centres, cfg, bf16=bf16, device=device, seg_from=cfg.threshold, tta=cfg.tta
    )
    keep = scores >= cfg.threshold
    if not keep.any():
        return out
    return resample_sparse(paste_max(hu_iso.shape, centres[keep], cubes), tuple(frame_shape))


def load_detector(ck: Mapping[str, Any], cfg: NoduleConfig, path: Path) -> NodulePatchNet | None:
    """The detector stored in checkpoint dict ``ck`` (None when ``cfg.enabled`` is off).

    Raises:
        InputError: enabled but missing (training stopped before the detector was trained) or mismatched.
    """
    if not cfg.enabled:
        return None
    state = ck.get(CKPT_KEY)
    if not isinstance(state, Mapping):
        raise InputError(
            path, "nodule.enabled but the checkpoint holds no nodule detector (training did not finish)"
        )
    net = NodulePatchNet(cfg.channels)
    try:
        net.load_state_dict(dict(state))
    except RuntimeError as e:
        raise InputError(
            path, f"nodule detector does not match nodule.channels ({str(e).splitlines()[0][:120]})"
        ) from None
    return net.eval()


#: HU range the blob filter sees: bone and contrast count as soft tissue.
LOG_HU = (-1000.0, 100.0)


#: HU range of the patches the network sees.
PATCH_HU = (-1000.0, 400.0)


def find_candidates(
    hu_iso: np.ndarray,
    spacing_mm: float,
    radii_mm: Sequence[float],
    min_response: float,
    min_hu: float,
    threads: int = 1,
) -> np.ndarray:
    """Bright-blob centres inside the lungs.

    Args:
        hu_iso: (z, y, x) HU on an isotropic grid of ``spacing_mm``.
        threads: filter the scales in this many threads (scipy releases the GIL; the result is the same).

    Returns:
        int (N, 3) voxel indices (z, y, x): local maxima (3x3x3) of max over radii r of
        -sigma² LoG (sigma = r / sqrt(3)) of the clipped HU, at least ``min_response``, with at least
        ``min_hu`` at the centre, within 2 voxels of a lung mask computed from HU (none when no lung is found).
    """

    hu = np.asarray(hu_iso, dtype=np.float32)
    if min(hu.shape) < 3:
        return np.zeros((0, 3), np.int64)
    lung = lung_mask_from_hu(hu, (spacing_mm,) * 3, coarse_mm=0.0)
    if not lung.any():
        return np.zeros((0, 3), np.int64)
    # filter only the lungs' box plus a margin wider than the largest kernel (scipy truncates at 4 sigma) and
    # the 3x3x3 maximum: inside the box the values are those of the whole volume, at a fraction of the cost
    sigmas = [float(r) / np.sqrt(3.0) / spacing_mm for r in radii_mm]
    margin = int(4 * max(sigmas) + 0.5) + 4
    box = tuple(
        slice(max(0, int(np.flatnonzero(lung.any(axis=other)).min()) - margin),
              min(n, int(np.flatnonzero(lung.any(axis=other)).max()) + margin + 1))
        for other, n in (((1, 2), hu.shape[0]), ((0, 2), hu.shape[1]), ((0, 1), hu.shape[2]))
    )  # fmt: skip
    sub = hu[box]
    inner = ndi.binary_dilation(lung[box], iterations=2)
    clipped = np.clip(sub, *LOG_HU)

    def scale(s: float, clipped: np.ndarray = clipped) -> np.ndarray:
        x = ndi.gaussian_laplace(clipped, s)
        x *= np.float32(-(s**2))
        return x

    response: np.ndarray | None = None
    if threads > 1 and len(sigmas) > 1:
        with ThreadPoolExecutor(min(threads, len(sigmas))) as ex:
            futures = [ex.submit(scale, s) for s in sigmas]
            while futures:  # fold each map in as it is ready: few of them are alive at once
                x = futures.pop(0).result()
                response = x if response is None else np.maximum(response, x, out=response)
                del x
    else:
        for s in sigmas:
            x = scale(s)
            response = x if response is None else np.maximum(response, x, out=response)
    assert response is not None
    del clipped
    peaks = response == ndi.maximum_filter(response, size=3)
    peaks &= response >= min_response
    peaks &= inner
    peaks &= sub >= min_hu
    return np.argwhere(peaks) + np.array([b.start for b in box])


def extract_patches(vol: np.ndarray, centres: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Cubes of side ``size`` centred on ``centres`` (N, 3) of ``vol`` (z, y, x), padded with ``fill``.

    Returns (N, size, size, size) of ``vol``'s dtype; cube voxel (i, j, k) is ``vol[c - size // 2 + (i, j, k)]``.
    """
    return cut_patches(np.pad(vol, size // 2, constant_values=fill), centres, size)


def cut_patches(padded: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """:func:`extract_patches` from a volume already padded by ``size // 2`` on every side (pad once, cut in
    batches)."""
    out = np.empty((len(centres), size, size, size), dtype=padded.dtype)
    for n, (z, y, x) in enumerate(np.asarray(centres, dtype=np.int64)):
        out[n] = padded[z : z + size, y : y + size, x : x + size]
    return out


def paste_max(shape: Sequence[int], centres: np.ndarray, cubes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`extract_patches`: a float32 volume of ``shape`` holding, at each voxel, the maximum of
    the cubes that cover it (0 where none does)."""
    size = cubes.shape[1] if len(cubes) else 0
    h = size // 2
    out = np.zeros(tuple(int(n) + 2 * h for n in shape), np.float32)
    for (z, y, x), cube in zip(np.asarray(centres, dtype=np.int64), cubes, strict=True):
        view = out[z : z + size, y : y + size, x : x + size]
        np.maximum(view, cube, out=view)
    return out[h : h + shape[0], h : h + shape[1], h : h + shape[2]] if h else out
