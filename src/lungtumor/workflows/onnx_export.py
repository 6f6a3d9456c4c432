"""``lungtumor export RUN OUT_DIR --format onnx``: every network of a checkpoint as an ONNX file.

Writes ``model.onnx`` (the 2D/2.5D network: input (B, C, H, W) of the prepared frame, logits (B, 1, H, W); or
the 3D network: input (B, 1, D, H, W) patches, logits (B, 1, D, H, W)), ``detector.onnx`` when the
checkpoint holds a nodule detector (input (B, 1, P, P, P) ``(HU + 400) / 500`` cubes, outputs ``score`` (B,)
and ``seg`` (B, P, P, P) logits) and ``onnx_export.json`` (inputs, outputs, the config, preprocessing, card and
the check below; each file's sha256 and size, checked when ``predict --model OUT_DIR`` loads the folder:
``inference.onnx_runtime``). The batch axis is dynamic, the others are those the checkpoint predicts with.
Only the networks are exported: preprocessing, sliding windows, thresholds and postprocessing stay in
lungtumor, which runs them around onnxruntime when it predicts with the folder.

Needs the ``onnx`` package (``pip install 'lungtumor[onnx]'``); with onnxruntime installed as well, each file
is run on a random batch and its largest absolute difference to PyTorch is recorded (and must be < 1e-3).
The TorchScript-based exporter (``dynamo=False``) is used: the torch.export-based one specialises the batch
axis, which the 2D network reads with ``int()`` to check its input shape (docs/decisions/0029).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungtumor import __version__
from lungtumor.core.config_io import to_dict
from lungtumor.core.errors import InputError, atomic_path, atomic_write_text, ensure_writable_dir
from lungtumor.inference.checkpoint import LoadedModel, load_any
from lungtumor.inference.onnx_runtime import (
    DESCRIPTION,
    FORMAT,
    ONNX_EXTRA,
    ONNX_FORMAT_VERSION,
    sha256_of,
)
from lungtumor.models import is_3d

#: The largest absolute logit difference to PyTorch accepted in the onnxruntime check.
MAX_DIFF = 1e-3
#: The opset used when none is given.
DEFAULT_OPSET = 17


def _networks(m: LoadedModel) -> list[tuple[str, nn.Module, tuple[int, ...], list[str]]]:
    """(file stem, network, one input's shape without the batch axis, output names) of each network."""
    cfg = m.config
    if is_3d(cfg):
        nets = [("model", m.model, (cfg.model.in_channels, *cfg.vol3d.patch_size), ["logits"])]
    else:
        nets = [("model", m.model, (cfg.model.in_channels, *cfg.prep.size), ["logits"])]
    if m.nodule is not None:
        p = int(cfg.nodule.patch)
        nets.append(("detector", m.nodule, (1, p, p, p), ["score", "seg"]))
    return nets


def _check_onnxruntime(path: Path, net: nn.Module, shape: tuple[int, ...]) -> float | None:
    """Largest |onnxruntime - torch| over the outputs for a random batch of 2 (None: onnxruntime absent)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    ort = importlib.import_module("onnxruntime")
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    with torch.inference_mode():
        want = net(x)
    want = want if isinstance(want, (tuple, list)) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def _export_one(net: nn.Module, shape: tuple[int, ...], outputs: list[str], path: Path, opset: int) -> None:
    """One network to ``path`` (atomically), batch axis dynamic."""
    axes = {name: {0: "batch"} for name in ["input", *outputs]}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            net.eval(),
            (torch.zeros((1, *shape)),),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
        )


def export_onnx(
    source: str | os.PathLike, out_dir: str | os.PathLike, opset: int | None = None
) -> list[Path]:
    """Export every network of checkpoint ``source`` into the folder ``out_dir``; return the files written.

    Raises:
        InputError: onnx is not installed, an unreadable checkpoint, or an export that onnxruntime does not
            reproduce within :data:`MAX_DIFF`.
    """
    if importlib.util.find_spec("onnx") is None:
        raise InputError("--format", f"onnx needs the onnx package, and it is not installed: {ONNX_EXTRA}")
    m = load_any(source)  # before the folder exists: a bad checkpoint leaves nothing behind
    if m.runtime != "torch":
        raise InputError(source, "is an ONNX export already; export the checkpoint or package it came from")
    out = ensure_writable_dir(out_dir)
    opset = opset or DEFAULT_OPSET
    files, records = [], {}
    for stem, net, shape, outputs in _networks(m):
        path = out / f"{stem}.onnx"
        _export_one(net, shape, outputs, path, opset)
        diff = _check_onnxruntime(path, net, shape)
        if diff is not None and diff >= MAX_DIFF:
            path.unlink()
            raise InputError(path, f"onnxruntime differs from PyTorch by {diff:.3g} (>= {MAX_DIFF:g})")
        files.append(path)
        records[path.name] = {
            "input": {"name": "input", "shape": ["batch", *shape], "dtype": "float32"},
            "outputs": outputs,
            "onnxruntime_max_abs_diff": diff,
            "sha256": sha256_of(path),
            "bytes": path.stat().st_size,
        }
    files.append(_write_description(m, out / DESCRIPTION, records, opset))
    return files


def _write_description(m: LoadedModel, path: Path, records: dict[str, Any], opset: int) -> Path:
    """``onnx_export.json``: what each file takes and gives, and the preprocessing it expects."""
    doc = {
        "format": FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "lungtumor_version": __version__,
        "source": str(m.path),
        "opset": opset,
        "files": records,
        "config": to_dict(m.config),
        "stats": m.stats,
        "prep": m.prep,
        "card": m.card,
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path
