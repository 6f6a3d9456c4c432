"""One entry for any checkpoint: predict a CT with a 2D or 3D model, or average an ensemble."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lungtumor.imaging.volume import Volume
from lungtumor.inference.slices import predict_volume
from lungtumor.inference.sliding_window import predict_volume_3d
from lungtumor.models import is_3d


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
    """``slices.predict_volume`` for 2D checkpoints, :func:`predict_volume_3d` for 3D ones.

    ``keep_prob`` False: the probabilities come back as None (the 2D path then never holds the float32 map
    on the input grid). ``z_range``: see ``predict_volume`` (2D checkpoints only; 3D ones predict everywhere)."""
    if is_3d(loaded.config):
        return predict_volume_3d(
            loaded, vol, device=device, threshold=threshold, tta=tta, precision=precision, keep_prob=keep_prob
        )

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
