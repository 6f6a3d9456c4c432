"""Checkpoints: the one reader of lungtumor checkpoints, 2D and 3D (no Lightning needed).

``load_checkpoint(path) -> LoadedModel`` (2D, with the nodule detector stored beside it), ``load_checkpoint3d``
and ``load_any`` (either, by the stored arch). A checkpoint's ``hyper_parameters["lungtumor"]`` holds
``{"config": to_dict(RunConfig), "stats": {...}, "prep": {...}, "card": {...}}`` (the model card,
``inference.card``; absent in older checkpoints) with primitives only, so ``torch.load(weights_only=True)``
reads it and nothing but tensors and primitives is ever unpickled; ``read_card`` reads the card alone. A model
package (``*.zip``, ``inference.package``: safetensors weights, JSON config, verified sha256s) is read into the
same checkpoint dict by ``read_checkpoint``, so every loader here takes one. Writing
checkpoints (atomically) is ``training.trainer.AtomicCheckpointIO``; ``add_detector_to_checkpoint`` adds the
detector's weights to a written checkpoint.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungtumor.core.config import ARCH_3D, NoduleConfig, RunConfig
from lungtumor.core.config_io import config_from_dict, to_dict
from lungtumor.core.errors import InputError, atomic_write_bytes
from lungtumor.inference.card import card_of
from lungtumor.inference.detector import CKPT_KEY, load_detector
from lungtumor.inference.onnx_runtime import RUNTIME, is_onnx_export, read_onnx_card, read_onnx_export
from lungtumor.inference.package import is_package, read_package
from lungtumor.models import build_model, create_model, is_3d
from lungtumor.models.nodule3d import NodulePatchNet


def load_checkpoint3d(path: str | os.PathLike):
    """Load a 3D-recipe checkpoint (.ckpt or run folder) as :class:`LoadedModel` (model in eval, CPU).

    Raises:
        InputError: missing, foreign or mismatching checkpoint, or not a 3D one.
    """
    p = checkpoint_file(path)
    ck = read_checkpoint(p)
    info = ck["hyper_parameters"]["lungtumor"]
    try:
        cfg = config_from_dict(info["config"], source=str(p))
        if not is_3d(cfg):
            raise InputError(p, f"not a 3D checkpoint (model.arch {cfg.model.arch!r})")
        model = build_model(cfg)
        model.load_state_dict({k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")})
    except (KeyError, RuntimeError, TypeError) as e:
        raise InputError(
            p, f"checkpoint does not match its config ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    model.eval()
    stats = {k: float(v) for k, v in dict(info.get("stats", {})).items()}
    return LoadedModel(model, cfg, stats, dict(info.get("prep", {})), p, card=card_of(info))


def _arch_of(path: Path) -> str:
    cfg = read_checkpoint(checkpoint_file(path))["hyper_parameters"]["lungtumor"].get("config", {})
    return str(cfg.get("model", {}).get("arch", "")) if isinstance(cfg, dict) else ""


def load_any(path: str | os.PathLike, nodules: bool = True):
    """Load a 2D or 3D lungtumor checkpoint or model package (:func:`load_checkpoint` or
    :func:`load_checkpoint3d`), or an ONNX export folder (:func:`load_onnx`); ``nodules=False``: an ONNX
    export's detector is not loaded (a checkpoint's always is)."""
    if is_onnx_export(path):
        return load_onnx(path, nodules)
    return load_checkpoint3d(path) if _arch_of(Path(path)) == ARCH_3D else load_checkpoint(path)


def load_onnx(path: str | os.PathLike, nodules: bool = True):
    """An ONNX export folder (``lungtumor export RUN DIR --format onnx``) as a :class:`LoadedModel` whose
    networks run with onnxruntime on the CPU (``inference.onnx_runtime``); ``path`` is the folder or its
    ``onnx_export.json``.

    Raises:
        InputError: onnxruntime missing, or a folder that fails its checks (the message names the file).
    """
    e = read_onnx_export(path, nodules)
    return LoadedModel(e.model, e.config, e.stats, e.prep, e.path, e.nodule, card=e.card, runtime=RUNTIME)


def add_detector_to_checkpoint(path: Path, net: NodulePatchNet, cfg: NoduleConfig | None = None) -> None:
    """Store ``net``'s weights in the checkpoint file ``path`` (atomically rewritten) and, with ``cfg``, its
    settings as the checkpoint's ``nodule`` config (``enabled`` then on): until this rename the file is the
    2D model alone, after it the 2D model with its detector; never anything in between."""

    ck = torch.load(path, map_location="cpu", weights_only=True)
    ck[CKPT_KEY] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if cfg is not None:
        ck["hyper_parameters"]["lungtumor"]["config"]["nodule"] = to_dict(replace(cfg, enabled=True))
    buf = io.BytesIO()
    torch.save(ck, buf)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class LoadedModel:
    """A model restored from a checkpoint, ready for prediction.

    Attributes:
        model: the network in eval mode, on the CPU; input (B, C, H, W), logits (B, 1, H, W).
        config: the resolved RunConfig of the run (``config.prep`` is the cache's preprocessing).
        stats: intensity statistics of the training set, e.g. ``{"mean": ..., "std": ...}``.
        prep: the cache's preprocessing parameters as a plain dict.
        path: the checkpoint file.
        nodule: the 3D nodule detector trained beside the model (``config.nodule.enabled``), else None.
        card: the model card (``inference.card``): training data, preset, validation; ``{"version": 0}``
            for a checkpoint written before cards existed.
        runtime: what runs the networks: ``"torch"``, or ``"onnxruntime"`` for an ONNX export folder (then
            ``path`` is its ``onnx_export.json``).
    """

    model: nn.Module
    config: RunConfig
    stats: dict[str, float]
    prep: dict[str, Any]
    path: Path
    nodule: nn.Module | None = None
    card: dict[str, Any] = field(default_factory=lambda: {"version": 0})
    runtime: str = "torch"


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The .ckpt that ``path`` names: the file itself, or a run folder's checkpoints/best.ckpt (or best.ckpt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "best.ckpt" if (p / "checkpoints").is_dir() else p / "best.ckpt"
    return p


def _is_pickle_or_torch_zip(path: Path) -> bool:
    """True when the file is a torch zip archive or starts like a pickle (protocol >= 2)."""

    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict of a .ckpt (``torch.load(weights_only=True)``) or of a model package (``*.zip``).

    Raises:
        InputError: missing, unreadable, unsafe or foreign file; a package that fails its checks.
    """
    if is_package(path):
        return read_package(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() and _is_pickle_or_torch_zip(path):
            raise InputError(
                path,
                "refused: the file holds pickled objects other than tensors (unsafe, not a lungtumor checkpoint)",
            ) from None
        raise InputError(path, "not a readable checkpoint: not a PyTorch file, or corrupt") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise InputError(
            path, f"not a readable checkpoint: truncated or not a PyTorch file ({first})"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means a bad file
        raise InputError(path, f"not a readable checkpoint ({type(e).__name__})") from None
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("lungtumor"), dict) or "state_dict" not in ck:
        raise InputError(path, "not a lungtumor checkpoint (no hyper_parameters['lungtumor'])")
    return ck


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Load a lungtumor checkpoint (a .ckpt file, a run folder: then its checkpoints/best.ckpt, or a model
    package .zip).

    Uses ``torch.load(weights_only=True)``: nothing but tensors and primitives is unpickled.

    Raises:
        InputError: missing, truncated or foreign file (the message names it).
    """
    p = checkpoint_file(path)
    ck = read_checkpoint(p)
    info = ck["hyper_parameters"]["lungtumor"]
    try:
        cfg = config_from_dict(info["config"], source=str(p))
        model = create_model(cfg.model)
        state = {k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise InputError(p, f"checkpoint does not match its config ({detail[:160]})") from None
    model.eval()

    nodule = load_detector(ck, cfg.nodule, p)
    stats = {k: float(v) for k, v in dict(info.get("stats", {})).items()}
    prep = dict(info.get("prep", to_dict(cfg.prep)))
    return LoadedModel(model, cfg, stats, prep, p, nodule, card=card_of(info))


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card of a checkpoint (.ckpt or run folder), package or ONNX export folder without reading its
    weights (memory-mapped).

    Raises:
        InputError: missing, foreign or unreadable checkpoint (as :func:`load_checkpoint`).
    """
    if is_onnx_export(path):
        return read_onnx_card(path)
    p = checkpoint_file(path)
    if is_package(p):
        return card_of(read_checkpoint(p)["hyper_parameters"]["lungtumor"])
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        info = ck["hyper_parameters"]["lungtumor"]
    except Exception:  # noqa: BLE001 - anything odd: the full reader gives the precise message
        info = read_checkpoint(p)["hyper_parameters"]["lungtumor"]
    return card_of(info)
