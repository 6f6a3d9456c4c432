"""3D inference: Gaussian-weighted sliding windows (MONAI) with optional mirror TTA, on the 3D recipe's frame.

``predict_volume_3d`` resamples a CT to the checkpoint's spacing, normalises it with its stored statistics,
runs ``sliding_window_probs`` and restores the probabilities to the input grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference

from lungtumor.core.errors import InputError
from lungtumor.core.runtime import autocast
from lungtumor.imaging.volume import Volume
from lungtumor.preprocessing.prepare3d import preprocess_3d, restore_3d


def gaussian_importance(
    patch: Sequence[int], sigma_scale: float = 0.125, device: torch.device | None = None
) -> torch.Tensor:
    """MONAI's Gaussian importance map for a (D, H, W) window: float32, positive, peak at the centre."""

    return compute_importance_map(
        tuple(int(p) for p in patch), mode="gaussian", sigma_scale=sigma_scale, device=device or "cpu"
    ).float()


@torch.inference_mode()
def sliding_window_probs(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    patch: Sequence[int],
    *,
    device: torch.device,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    precision: str = "32",
) -> torch.Tensor:
    """Tumour probabilities of a prepared volume with Gaussian-weighted sliding windows.

    Args:
        model: (B, 1, D, H, W) -> logits (B, 1, D, H, W), in eval mode.
        image: prepared input (z, y, x) float.
        patch: window (D, H, W) voxels; a smaller volume is padded with 0.
        tta: average the probabilities over the 8 flips of the three axes.

    Returns:
        float32 (z, y, x) probabilities in [0, 1], on ``device``.
    """

    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
    x = x.to(device=device, dtype=torch.float32)[None, None]
    flips = [f for k in range(4) for f in itertools.combinations((2, 3, 4), k)] if tta else [()]

    def predictor(w: torch.Tensor) -> torch.Tensor:
        acc = None
        with autocast(device, precision if device.type == "cuda" else "32"):  # bf16 3D: GPU only
            for f in flips:
                p = torch.sigmoid(model(w.flip(f) if f else w).float())
                p = p.flip(f) if f else p
                acc = p if acc is None else acc + p
        return acc / len(flips)

    out = sliding_window_inference(
        x,
        roi_size=tuple(int(p) for p in patch),
        sw_batch_size=max(1, sw_batch_size),
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        sigma_scale=0.125,
        padding_mode="constant",
        cval=0.0,
        sw_device=device,
        device=device,
    )
    return out[0, 0].float().clamp_(0, 1)


# ----------------------------------------------------------------------------- checkpoints


# ----------------------------------------------------------------------------- prediction


def predict_volume_3d(
    loaded,
    vol: Volume,
    *,
    device: torch.device,
    threshold: float,
    tta: bool = False,
    precision: str = "32",
    keep_prob: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Predict one CT (HU, (z, y, x)) with a loaded 3D checkpoint.

    Returns:
        (probabilities float32, or None when not ``keep_prob``; mask uint8), both (z, y, x) on ``vol``'s grid.
    """

    cfg = loaded.config
    v = cfg.vol3d
    if min(v.target_spacing) <= 0 or min(v.patch_size) <= 0:
        raise InputError(loaded.path, "3D checkpoint lacks its resolved spacing/patch size")
    loaded.model.to(device).eval()
    x = preprocess_3d(vol, v.target_spacing, loaded.stats)
    prob = sliding_window_probs(
        loaded.model,
        x,
        v.patch_size,
        device=device,
        overlap=v.overlap,
        sw_batch_size=v.sw_batch_size,
        tta=tta,
        precision=precision,
    )
    del x
    prob = restore_3d(prob.cpu().numpy(), vol.shape)
    mask = (prob >= threshold).astype(np.uint8)
    return (prob if keep_prob else None), mask
