"""2D / 2.5D prediction slice by slice: the prepared frame in, probabilities on the input grid out.

``predict_probabilities`` runs a 2D model over the prepared frame (z, H, W) in batches of slices (context
stacked as 2.5D channels); ``predict_volume`` takes a CT (HU, (z, y, x)) through the checkpoint's own
preprocessing (``preprocessing.frame``), the model, the nodule detector when the checkpoint has one, and back to
the input grid. On a GPU the same steps run on the device (``predict_volume_on_device``: the HU volume is
uploaded once as stored, only the uint8 mask comes back), with the CPU path's values to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from contextlib import nullcontext
from typing import Any, TypeVar

import numpy as np
import torch

from lungtumor.core.config import PrepConfig
from lungtumor.core.runtime import autocast
from lungtumor.imaging.volume import Volume
from lungtumor.inference.detector import detector_probability
from lungtumor.inference.workers import side_thread_useful, torch_side_thread
from lungtumor.postprocessing.detector import add_missed_lesions, drop_unconfirmed_small
from lungtumor.preprocessing.cache import append_blob, context_step, stack_context
from lungtumor.preprocessing.detector_grid import hu_on_detector_grid
from lungtumor.preprocessing.frame import (
    PrepGeometry,
    frame_spacing,
    geometry,
    normalise,
    overlap,
    pad_hu,
    preprocess_inputs,
    resize,
    restore_geometry,
    restore_mask,
    restored_chunks,
)

T = TypeVar("T")


@torch.inference_mode()
def predict_probabilities(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    context_slices: int,
    *,
    device: torch.device,
    batch_size: int = 16,
    precision: str = "32",
    tta: bool = False,
    context_step: float = 1.0,
    blob: np.ndarray | None = None,
    z_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Tumour probabilities for every slice of a prepared volume (or the slices ``z_range``).

    Args:
        model: maps (B, 2k+1, H, W) to logits (B, 1, H, W).
        image: prepared input, (z, H, W) float32; a tensor (already on ``device``) gives a tensor back, on
            ``device`` (:func:`predict_volume_on_device`), a numpy array a numpy array.
        context_slices: k neighbours each side (edge slices are repeated).
        context_step: slices between context channels (1: adjacent; fractional steps interpolate, see
            ``preprocessing.cache.context_step``).
        blob: (z, H, W) blobness channel (``prep.blob``), appended after the CT slices; None without.
        tta: also predict the left-right mirrored input and average the probabilities.
        z_range: [lo, hi): predict only these slices (their context still comes from their neighbours); the
            others get probability 0. None: all.

    Returns:
        (z, H, W) float32 probabilities in [0, 1].
    """
    lo, hi = (0, image.shape[0]) if z_range is None else z_range
    full = (lo, hi) == (0, image.shape[0])
    as_tensor = torch.is_tensor(image)
    if as_tensor:
        vol = image.to(device=device, dtype=torch.float32)
        make = torch.empty if full else torch.zeros
        out: np.ndarray | torch.Tensor = make(vol.shape, dtype=torch.float32, device=device)
    else:
        vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
        out = (np.empty if full else np.zeros)(image.shape, dtype=np.float32)
    blob_t = None if blob is None else torch.from_numpy(np.ascontiguousarray(blob)).to(device)
    for start in range(lo, hi, batch_size):
        idx = torch.arange(start, min(start + batch_size, hi), device=device)
        x = append_blob(stack_context(vol, idx, context_slices, context_step), blob_t, idx)
        x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W); faster on CUDA and CPU
        with autocast(device, precision):
            prob = torch.sigmoid(model(x).float())
            if tta:
                prob = 0.5 * (prob + torch.sigmoid(model(x.flip(-1)).float()).flip(-1))
        out[start : start + len(idx)] = prob[:, 0] if as_tensor else prob[:, 0].cpu().numpy()
    return out


def predict_volume(
    loaded,
    vol: Volume,
    *,
    device: torch.device,
    threshold: float,
    batch_size: int,
    tta: bool = False,
    precision: str = "32",
    keep_prob: bool = True,
    z_range: tuple[int, int] | None = None,
    parallel: bool = True,
    prepared: Callable[[], None] | None = None,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Predict one CT with a loaded checkpoint.

    Args:
        loaded: ``training.LoadedModel`` (model, config, stats).
        vol: the CT in HU, array (z, y, x).
        keep_prob: return the probability map; False: None instead, and the mask is thresholded chunk by
            chunk while restoring (the same values), so the float32 map on the input grid never exists.
        z_range: [lo, hi): run the 2D model only on these slices, probability 0 elsewhere; predict passes
            the lungs' slices plus 30 mm (``imaging.lungs.lung_z_range``) when the lung gate follows, which
            drops lesions away from the lungs anyway. None: every slice. Not on the on-device path (a GPU,
            no blob channel or detector), which predicts every slice.
        parallel: on the CPU, with a torch network and more than one torch thread, run the nodule detector
            in a side thread beside the 2D model's batches (``inference.workers``): the same values, sooner.
            False: one after the other.
        prepared: called when ``vol``'s voxels are no longer read (on the CPU, after preprocessing), so that the
            caller may free them while the networks run.

    Returns:
        (probabilities float32 or None, mask uint8 {0, 1}), both (z, y, x) on ``vol``'s grid.
    """

    cfg = loaded.config
    nodule = getattr(loaded, "nodule", None)
    if device.type != "cpu" and not cfg.prep.blob and nodule is None:  # a GPU: resample and restore there
        return predict_volume_on_device(
            loaded, vol, device=device, threshold=threshold, batch_size=batch_size, tta=tta,
            precision=precision, keep_prob=keep_prob,
        )  # fmt: skip
    x, blob, geom = preprocess_inputs(vol, cfg.prep, loaded.stats)
    spacing, step = (
        frame_spacing(geom, vol.spacing),
        context_step(cfg.train.context_mm, float(vol.spacing[2])),
    )
    # the detector reads the CT's own voxels (its plan, decision 0035): held here, not through ``vol``, whose
    # voxels the caller may free now; the detector's task lets go of them once they are on its grid
    held = [vol.array] if nodule is not None else []
    if prepared is not None:
        prepared()
    side = parallel and nodule is not None and side_thread_useful(device, loaded)
    with torch_side_thread() if side else nullcontext() as pool:
        detected = None
        if held:  # the detector first: in the side thread it runs beside the 2D model's batches
            bf16 = precision == "bf16"
            detected = _submit(
                pool, _detect, nodule, held, geom, spacing, x.shape, cfg.nodule, bf16=bf16, device=device
            )
            del held
        prob_small = predict_probabilities(
            loaded.model,
            x,
            cfg.train.context_slices,
            device=device,
            batch_size=batch_size,
            precision=precision,
            tta=tta,
            context_step=step,
            blob=blob,
            z_range=z_range,  # the prepared frame keeps the input's slices
        )
        del x, blob  # the model input is not needed any more
        det = None if detected is None else detected.result()
    if nodule is not None and det is not None:  # lesions the 3D nodule detector finds and the 2D model missed
        min_voxels = int(np.ceil(np.pi / 6 * cfg.nodule.min_diameter_mm**3 / np.prod(spacing)))
        if cfg.nodule.confirm_small:
            prob_small = drop_unconfirmed_small(prob_small, det, threshold, min_voxels)
        prob_small = add_missed_lesions(prob_small, det, threshold, min_voxels)
        del det
    if not keep_prob:
        return None, restore_mask(prob_small, geom, threshold)
    prob = restore_geometry(prob_small, geom)
    del prob_small
    mask = (prob >= threshold).view(np.uint8)  # bool -> uint8 without a copy
    return prob, mask


def _detect(
    net: Any,
    held: list[np.ndarray],
    geom: PrepGeometry,
    spacing: tuple[float, float, float],
    frame_shape: tuple[int, ...],
    cfg: Any,
    **kw: Any,
) -> np.ndarray:
    """The detector's probability on the prepared frame, from the canonical HU in ``held`` (emptied as soon as
    the voxels are on the detector's grid, so that the CT's memory goes when its caller has let go of it)."""
    grid = hu_on_detector_grid(held.pop(), geom, spacing, cfg.spacing_mm, max(1, torch.get_num_threads()))
    return detector_probability(net, grid, frame_shape, cfg, **kw)


def _submit(pool: Executor | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """``fn(*args, **kwargs)`` in ``pool``, or now in this thread (a finished future) without one."""
    if pool is not None:
        return pool.submit(fn, *args, **kwargs)
    done: Future[T] = Future()
    done.set_result(fn(*args, **kwargs))
    return done


_RESTORE_CHUNK = 32  # slices restored at a time: bounds the float32 map on the input grid held on the device


def prepare_on_device(
    hu: torch.Tensor, prep: PrepConfig, stats: Mapping[str, float] | None, geom: PrepGeometry
) -> torch.Tensor:
    """HU (z, y, x), any dtype, on the device → model input float32 (z, H, W) on the same device.

    Same values as ``preprocessing.frame.preprocess_volume`` (clip for ``window_zscore``, bilinear resize, pad/crop to
    the frame with air, then ``(HU - mean) / std`` or ``HU / hu_divisor``).
    """
    x = hu.to(torch.float32, copy=True)  # a float32 input must not be clipped and normalised in place
    if prep.norm == "window_zscore":
        x = x.clamp_(float(prep.window_hu[0]), float(prep.window_hu[1]))
    x = resize(x, geom.resized)
    H, W = geom.size
    if tuple(x.shape[-2:]) != (H, W) or geom.offset != (0, 0):
        rs, rd = overlap(geom.resized[0], H, geom.offset[0])
        cs, cd = overlap(geom.resized[1], W, geom.offset[1])
        frame = torch.full((x.shape[0], H, W), pad_hu(prep), dtype=torch.float32, device=x.device)
        frame[:, rd, cd] = x[:, rs, cs]
        x = frame
    return normalise(x, prep, stats)  # in place; the same arithmetic on a tensor


def restore_on_device(
    prob: torch.Tensor, geom: PrepGeometry, threshold: float, keep_prob: bool
) -> tuple[np.ndarray | None, np.ndarray]:
    """Prepared-frame probabilities (z, H, W) on the device → (float32 map or None, uint8 mask) on the input
    grid (z, y, x), as numpy arrays; the same values as ``preprocessing.frame.restore_geometry`` / ``restore_mask``."""
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
    """:func:`predict_volume` for a 2D checkpoint without the blob channel, every step on ``device``.

    Returns:
        (probabilities float32 or None, mask uint8 {0, 1}), both (z, y, x) on ``vol``'s grid.
    """

    cfg = loaded.config
    if cfg.prep.blob:
        raise ValueError("the device path does not compute the blob channel; use inference.predict_volume")
    geom = geometry(vol, cfg.prep)
    hu = torch.from_numpy(np.ascontiguousarray(vol.array)).to(device)
    x = prepare_on_device(hu, cfg.prep, loaded.stats, geom)
    del hu
    prob = predict_probabilities(
        loaded.model, x, cfg.train.context_slices, device=device, batch_size=batch_size, precision=precision,
        tta=tta, context_step=context_step(cfg.train.context_mm, float(vol.spacing[2])),
    )  # fmt: skip
    del x
    return restore_on_device(prob, geom, threshold, keep_prob)
