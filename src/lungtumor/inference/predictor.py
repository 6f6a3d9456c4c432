"""The one Predictor: any checkpoint (2D, 2.5D or 3D, with or without its nodule detector) or an ensemble of
them, on the CPU or a GPU, in one precision, with or without mirror TTA.

How each network sees the CT is its checkpoint's plan: a 2D/2.5D model predicts the prepared frame slice by slice,
each slice a depth-1 window with its context channels (``inference.slices``, the way MONAI's SliceInferer
treats a volume); a 3D model predicts Gaussian-weighted sliding windows over the volume resampled to its
spacing (``inference.sliding_window``); the nodule detector scores cubes around candidates on its own isotropic
frame (``inference.detector``) and its lesions join the 2D mask (``postprocessing.detector``). Several
checkpoints average their probabilities on the input grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lungtumor.core.errors import InputError
from lungtumor.imaging.volume import Volume
from lungtumor.inference.checkpoint import LoadedModel, load_any
from lungtumor.inference.slices import predict_volume
from lungtumor.inference.sliding_window import predict_volume_3d
from lungtumor.models import is_3d


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


class Predictor:
    """Predict CTs with loaded checkpoints.

    Args:
        models: one or more ``LoadedModel`` (``inference.checkpoint``); several are an ensemble.
        device: where the networks run (they are moved there, in eval mode; 2D ones channels-last).
        precision: ``"32"`` or ``"bf16"`` (autocast of the forward passes).
        tta: also predict the left-right mirror (3D models: their mirror axes) and average.
        batch_size: slices per forward pass of a 2D model; None: each checkpoint's ``infer.batch_size``.
        parallel: a 2D model's batches and its nodule detector side by side on the CPU
            (``inference.slices.predict_volume``); the same values either way.
    """

    def __init__(
        self,
        models: Sequence[LoadedModel],
        *,
        device: torch.device,
        precision: str = "32",
        tta: bool = False,
        batch_size: int | None = None,
        parallel: bool = True,
    ) -> None:
        if not models:
            raise ValueError("a Predictor needs at least one model")
        self.models, self.device = list(models), device
        self.precision, self.tta, self.batch_size, self.parallel = precision, tta, batch_size, parallel
        for m in self.models:
            m.model.to(device).eval()
            if not is_3d(m.config):
                m.model.to(memory_format=torch.channels_last)

    @staticmethod
    def load(paths: Sequence[str | os.PathLike], nodules: bool | None = None) -> list[LoadedModel]:
        """Load checkpoints (files, run folders, packages or ONNX export folders); ``nodules=False`` drops their
        detectors, ``True`` requires one.

        Raises:
            InputError: no path, a checkpoint that cannot be read, or ``nodules=True`` without a detector.
        """
        if not paths:
            raise InputError("--model", "no model given")
        models = [load_any(p, nodules=nodules is not False) for p in paths]
        if nodules is False:  # --no-nodules: the 2D model alone
            for m in models:
                m.nodule = None
        elif nodules and not any(m.nodule is not None for m in models):
            raise InputError(
                Path(paths[0]), "--nodules: the checkpoint has no nodule detector (nodule.enabled is off)"
            )
        return models

    def _one(
        self,
        m: LoadedModel,
        vol: Volume,
        threshold: float,
        keep_prob: bool,
        z_range: tuple[int, int] | None,
        prepared: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        kw = dict(device=self.device, threshold=threshold, tta=self.tta, precision=self.precision)
        if is_3d(m.config):  # the 3D plan predicts everywhere
            return predict_volume_3d(m, vol, keep_prob=keep_prob, **kw)
        batch = self.batch_size or m.config.infer.batch_size
        return predict_volume(
            m, vol, batch_size=batch, keep_prob=keep_prob, z_range=z_range, parallel=self.parallel,
            prepared=prepared, **kw
        )  # fmt: skip

    def predict(
        self,
        vol: Volume,
        *,
        threshold: float,
        keep_prob: bool = True,
        z_range: tuple[int, int] | None = None,
        prepared: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Probabilities and mask of one CT (HU, (z, y, x), canonical axial order) on its own grid.

        ``keep_prob`` False: the probabilities come back as None (one 2D model then never holds the float32
        map on the input grid). ``z_range`` [lo, hi): a single 2D model predicts only these slices
        (probability 0 elsewhere; predict passes the lungs' slices when the lung gate follows); 3D models and
        ensembles predict everywhere. ``prepared``: called once ``vol``'s voxels are no longer read (a single
        2D model on the CPU: after preprocessing), so that a caller can free them while the networks run.

        Returns:
            (probabilities float32 or None, mask uint8 {0, 1}), both (z, y, x) on ``vol``'s grid.
        """
        if len(self.models) == 1:
            return self._one(self.models[0], vol, threshold, keep_prob, z_range, prepared)
        probs = [self._one(m, vol, threshold, True, None)[0] for m in self.models]
        prob = ensemble_probabilities(probs)
        del probs
        mask = (prob >= threshold).astype(np.uint8)
        return (prob if keep_prob else None), mask
