"""3D inference: checkpoint loading, Gaussian sliding windows with optional mirror TTA, and 2D+3D ensembling.

``predict_volume_3d(loaded, vol, ...)`` runs the checkpoint's own preprocessing (``prepare3d``: resample to the
stored spacing, clip + z-score with the stored stats), MONAI's ``sliding_window_inference`` (Gaussian
importance weights, ``overlap``, ``sw_batch_size`` windows per forward), sigmoid probabilities averaged over
windows (and over the 8 axis flips with TTA), a trilinear resample back onto the input's (z, y, x) grid and the
threshold on probabilities. ``load_any``/``predict_any`` dispatch between the 2D and the 3D recipe.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lungtumor.checkpoint import LoadedModel, _read_checkpoint, checkpoint_file, load_checkpoint
from lungtumor.config import RunConfig, config_from_dict
from lungtumor.errors import InputError
from lungtumor.models.unet3d import UNet3D, make_pools
from lungtumor.volume import Volume

ARCH_3D = "unet3d"


def is_3d(cfg: RunConfig) -> bool:
    """True when ``cfg`` is the 3D recipe."""
    return cfg.model.arch == ARCH_3D


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


def gaussian_importance(
    patch: Sequence[int], sigma_scale: float = 0.125, device: torch.device | None = None
) -> torch.Tensor:
    """MONAI's Gaussian importance map for a (D, H, W) window: float32, positive, peak at the centre."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(
        tuple(int(p) for p in patch), mode="gaussian", sigma_scale=sigma_scale, device=device or "cpu"
    ).float()


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
    x = x.to(device=device, dtype=torch.float32)[None, None]
    flips = [f for k in range(4) for f in itertools.combinations((2, 3, 4), k)] if tta else [()]

    def predictor(w: torch.Tensor) -> torch.Tensor:
        acc = None
        with _autocast(device, precision):
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


def load_checkpoint3d(path: str | os.PathLike):
    """Load a 3D-recipe checkpoint (.ckpt or run folder) as ``checkpoint.LoadedModel`` (model in eval, CPU).

    Raises:
        InputError: missing, foreign or mismatching checkpoint, or not a 3D one.
    """
    p = checkpoint_file(path)
    ck = _read_checkpoint(p)
    info = ck["hyper_parameters"]["lungtumor"]
    try:
        cfg = config_from_dict(info["config"], source=str(p))
        if not is_3d(cfg):
            raise InputError(p, f"not a 3D checkpoint (model.arch {cfg.model.arch!r})")
        model = build_model3d(cfg)
        model.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    except (KeyError, RuntimeError, TypeError) as e:
        raise InputError(
            p, f"checkpoint does not match its config ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    model.eval()
    stats = {k: float(v) for k, v in dict(info.get("stats", {})).items()}
    return LoadedModel(model, cfg, stats, dict(info.get("prep", {})), p)


def _arch_of(path: Path) -> str:
    cfg = _read_checkpoint(checkpoint_file(path))["hyper_parameters"]["lungtumor"].get("config", {})
    return str(cfg.get("model", {}).get("arch", "")) if isinstance(cfg, dict) else ""


def load_any(path: str | os.PathLike):
    """Load a 2D or 3D lungtumor checkpoint (``checkpoint.load_checkpoint`` or :func:`load_checkpoint3d`)."""
    return load_checkpoint3d(path) if _arch_of(Path(path)) == ARCH_3D else load_checkpoint(path)


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
    from lungtumor.prepare3d import preprocess_3d, restore_3d

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


def predict_any(
    loaded,
    vol: Volume,
    *,
    device: torch.device,
    threshold: float,
    batch_size: int = 16,
    tta: bool = False,
    precision: str = "32",
    keep_prob: bool = True,
    z_range: tuple[int, int] | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """``inference.predict_volume`` for 2D checkpoints, :func:`predict_volume_3d` for 3D ones.

    ``keep_prob`` False: the probabilities come back as None (the 2D path then never holds the float32 map
    on the input grid). ``z_range``: see ``predict_volume`` (2D checkpoints only; 3D ones predict everywhere)."""
    if is_3d(loaded.config):
        return predict_volume_3d(
            loaded, vol, device=device, threshold=threshold, tta=tta, precision=precision, keep_prob=keep_prob
        )
    from lungtumor.inference import predict_volume

    loaded.model.to(device).eval()
    return predict_volume(
        loaded,
        vol,
        device=device,
        threshold=threshold,
        batch_size=batch_size,
        tta=tta,
        precision=precision,
        keep_prob=keep_prob,
        z_range=z_range,
    )


def ensemble_probabilities(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of probability maps on one grid: float32 (z, y, x)."""
    if not probs:
        raise ValueError("no probability maps to ensemble")
    shapes = {p.shape for p in probs}
    if len(shapes) != 1:
        raise ValueError(f"probability maps have different shapes {sorted(shapes)}")
    out = np.zeros(probs[0].shape, dtype=np.float32)
    for p in probs:
        out += p
    return out / len(probs)


def predict_ensemble(
    models: Sequence,
    vol: Volume,
    *,
    device: torch.device,
    threshold: float = 0.5,
    tta: bool = False,
    precision: str = "32",
    keep_prob: bool = True,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Average the input-grid probabilities of several loaded models (e.g. one 2D and one 3D), then threshold.

    Returns:
        (probabilities float32, or None when not ``keep_prob``; mask uint8), both (z, y, x) on ``vol``'s grid.
    """
    probs = []
    for m in models:
        p, _ = predict_any(
            m,
            vol,
            device=device,
            threshold=threshold,
            batch_size=m.config.infer.batch_size,
            tta=tta,
            precision=precision,
        )
        probs.append(p)
    prob = ensemble_probabilities(probs)
    del probs
    mask = (prob >= threshold).astype(np.uint8)
    return (prob if keep_prob else None), mask
