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
import torch.nn.functional as F

from lungtumor.config import PrepConfig
from lungtumor.prepgeom import PrepGeometry, _geometry, _overlap, _pad_hu
from lungtumor.volume import Volume

_RESTORE_CHUNK = 32  # slices restored at a time: bounds the float32 map on the input grid held on the device


def _resize(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(n, y, x) float32 → (n, h, w), bilinear, ``align_corners=False`` (as ``prepgeom._resize``)."""
    if tuple(t.shape[-2:]) == tuple(hw):
        return t
    return F.interpolate(t[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]


def prepare_on_device(
    hu: torch.Tensor, prep: PrepConfig, stats: Mapping[str, float] | None, geom: PrepGeometry
) -> torch.Tensor:
    """HU (z, y, x), any dtype, on the device → model input float32 (z, H, W) on the same device.

    Same values as ``prepgeom.preprocess_volume`` (clip for ``window_zscore``, bilinear resize, pad/crop to
    the frame with air, then ``(HU - mean) / std`` or ``HU / hu_divisor``).
    """
    x = hu.float()
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
    if prep.norm == "divide":
        return x.div_(float(np.float32(prep.hu_divisor)))
    if prep.norm != "window_zscore":
        raise ValueError(f"unknown norm {prep.norm!r}")
    if not stats or "mean" not in stats or "std" not in stats:
        raise ValueError("norm='window_zscore' needs stats {'mean', 'std'} from the prepared cache")
    return x.sub_(float(np.float32(stats["mean"]))).div_(float(np.float32(stats["std"])))


def restore_on_device(
    prob: torch.Tensor, geom: PrepGeometry, threshold: float, keep_prob: bool
) -> tuple[np.ndarray | None, np.ndarray]:
    """Prepared-frame probabilities (z, H, W) on the device → (float32 map or None, uint8 mask) on the input
    grid (z, y, x), as numpy arrays; the same values as ``prepgeom.restore_geometry`` / ``restore_mask``."""
    z, y, x = geom.orig_shape
    h, w = geom.resized
    rs, rd = _overlap(h, geom.size[0], geom.offset[0])
    cs, cd = _overlap(w, geom.size[1], geom.offset[1])
    mask = torch.empty((z, y, x), dtype=torch.bool, device=prob.device)
    full = np.empty((z, y, x), np.float32) if keep_prob else None
    for i in range(0, z, _RESTORE_CHUNK):
        part = prob[i : i + _RESTORE_CHUNK]
        canvas = torch.zeros((part.shape[0], h, w), dtype=torch.float32, device=prob.device)
        canvas[:, rs, cs] = part[:, rd, cd]
        back = _resize(canvas, (y, x))
        torch.ge(back, threshold, out=mask[i : i + part.shape[0]])
        if full is not None:
            full[i : i + part.shape[0]] = back.cpu().numpy()
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
