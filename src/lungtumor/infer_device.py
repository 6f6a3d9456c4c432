"""2D prediction with every array step on the model's device (the GPU path of ``inference.predict_volume``).

The CPU path (``prepgeom`` + ``inference``) resamples and restores on the host in chunks, to keep host memory
low. On a GPU that host work costs more than the network (BENCHMARKS.md, "predict on the H100"), so here the
HU volume is uploaded once as it is stored (int16: half the bytes of float32), clipped, resized, framed and
normalised on the device, predicted, restored to the input grid and thresholded there; only the uint8 mask
(and, when asked, the float32 probability map) comes back. The operations are those of the CPU path
(bilinear ``interpolate`` with ``align_corners=False``, the same padding value and order), so the values agree
to float rounding (``tests/test_infer_device.py`` checks this on the CPU). The blob channel (``prep.blob``) is
computed by SimpleITK on the host, so runs that use it take the CPU path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from lungtumor.config import PrepConfig
from lungtumor.prepgeom import (
    PrepGeometry,
    _geometry,
    _normalise,
    _overlap,
    _pad_hu,
    _resize,
    restored_chunks,
)
from lungtumor.volume import Volume

_RESTORE_CHUNK = 32  # slices restored at a time: bounds the float32 map on the input grid held on the device


def prepare_on_device(
    hu: torch.Tensor, prep: PrepConfig, stats: Mapping[str, float] | None, geom: PrepGeometry
) -> torch.Tensor:
    """HU (z, y, x), any dtype, on the device → model input float32 (z, H, W) on the same device.

    Same values as ``prepgeom.preprocess_volume`` (clip for ``window_zscore``, bilinear resize, pad/crop to
    the frame with air, then ``(HU - mean) / std`` or ``HU / hu_divisor``).
    """
    x = hu.to(torch.float32, copy=True)  # a float32 input must not be clipped and normalised in place
    if prep.norm == "window_zscore":
        x = x.clamp_(float(prep.window_hu[0]), float(prep.window_hu[1]))
    x = _resize(x, geom.resized)
    H, W = geom.size
    if tuple(x.shape[-2:]) != (H, W) or geom.offset != (0, 0):
        rs, rd = _overlap(geom.resized[0], H, geom.offset[0])
        cs, cd = _overlap(geom.resized[1], W, geom.offset[1])
        frame = torch.full((x.shape[0], H, W), _pad_hu(prep), dtype=torch.float32, device=x.device)
        frame[:, rd, cd] = x[:, rs, cs]
        x = frame
    return _normalise(x, prep, stats)  # in place; the same arithmetic on a tensor


def restore_on_device(
    prob: torch.Tensor, geom: PrepGeometry, threshold: float, keep_prob: bool
) -> tuple[np.ndarray | None, np.ndarray]:
    """Prepared-frame probabilities (z, H, W) on the device → (float32 map or None, uint8 mask) on the input
    grid (z, y, x), as numpy arrays; the same values as ``prepgeom.restore_geometry`` / ``restore_mask``."""
    mask = torch.empty(geom.orig_shape, dtype=torch.bool, device=prob.device)
    full = np.empty(geom.orig_shape, np.float32) if keep_prob else None
    for i, back in restored_chunks(prob, geom, _RESTORE_CHUNK):
        torch.ge(back, threshold, out=mask[i : i + back.shape[0]])
        if full is not None:
            full[i : i + back.shape[0]] = back.cpu().numpy()
    return full, mask.cpu().numpy().view(np.uint8)


def predict_volume_on_device(
    loaded, vol: Volume, *, device: torch.device, threshold: float, batch_size: int, tta: bool, precision: str,
    keep_prob: bool,
) -> tuple[np.ndarray | None, np.ndarray]:  # fmt: skip
    """``inference.predict_volume`` for a 2D checkpoint without the blob channel, every step on ``device``.

    Returns:
        (probabilities float32 or None, mask uint8 {0, 1}), both (z, y, x) on ``vol``'s grid.
    """
    from lungtumor.data import context_step
    from lungtumor.inference import predict_probabilities

    cfg = loaded.config
    if cfg.prep.blob:
        raise ValueError("the device path does not compute the blob channel; use inference.predict_volume")
    geom = _geometry(vol, cfg.prep)
    hu = torch.from_numpy(np.ascontiguousarray(vol.array)).to(device)
    x = prepare_on_device(hu, cfg.prep, loaded.stats, geom)
    del hu
    prob = predict_probabilities(
        loaded.model, x, cfg.train.context_slices, device=device, batch_size=batch_size, precision=precision,
        tta=tta, context_step=context_step(cfg.train.context_mm, float(vol.spacing[2])),
    )  # fmt: skip
    del x
    return restore_on_device(prob, geom, threshold, keep_prob)
