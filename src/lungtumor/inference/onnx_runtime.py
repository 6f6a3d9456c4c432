"""ONNX export folders (``lungtumor export RUN DIR --format onnx``) run by onnxruntime on the CPU.

:class:`OnnxNetwork` wraps an ``onnxruntime.InferenceSession`` as a torch module: it takes the tensor a torch
network would take and returns torch tensors of the same outputs (one tensor, or a tuple for the detector's
``score`` (B,) and ``seg`` (B, P, P, P)), on the input's device. So the one Predictor runs an export through
the same slice plan, sliding windows, detector and postprocessing as a checkpoint (docs/decisions/0030).

:func:`read_onnx_export` checks a folder before it runs anything: ``onnx_export.json`` readable, of this
format and a version this code reads, every listed file present and matching its sha256, the inputs of the
shapes the config predicts with; a problem is one :class:`InputError` line naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungtumor import __version__
from lungtumor.core.config import RunConfig
from lungtumor.core.config_io import config_from_dict, to_dict
from lungtumor.core.errors import InputError
from lungtumor.inference.card import card_of
from lungtumor.models import is_3d

#: The description file of an export folder, its ``format`` value and the newest version this code reads.
DESCRIPTION = "onnx_export.json"
FORMAT = "lungtumor-onnx-export"
ONNX_FORMAT_VERSION = 1
#: The files of an export: the segmentation network (always) and the nodule detector (when trained).
MODEL, DETECTOR = "model.onnx", "detector.onnx"
#: The install line named when onnx or onnxruntime is missing.
ONNX_EXTRA = "pip install 'lungtumor[onnx]'"
#: What ``LoadedModel.runtime`` says for a network run by onnxruntime.
RUNTIME = "onnxruntime"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_onnx_export(path: str | os.PathLike) -> bool:
    """True for a folder holding ``onnx_export.json`` or ``*.onnx`` files, or for such a description file."""
    p = Path(path)
    if p.is_file():
        return p.name == DESCRIPTION
    return p.is_dir() and ((p / DESCRIPTION).is_file() or any(p.glob("*.onnx")))


def _onnxruntime(where: Path):
    """The onnxruntime module.

    Raises:
        InputError: onnxruntime is not installed.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        raise InputError(
            where, f"an ONNX export runs with onnxruntime, and it is not installed: {ONNX_EXTRA}"
        )
    return importlib.import_module("onnxruntime")


class OnnxNetwork(nn.Module):
    """One ONNX file run by onnxruntime's CPU provider, called like the torch network it was exported from.

    The session uses ``torch.get_num_threads()`` intra-op threads, read at each call (predict sets
    ``--threads`` after loading): a change builds the session again. Autocast does not reach it: it
    computes in float32 whatever ``--precision`` says.

    Args:
        path: the ``.onnx`` file; its input is named ``input``.
        outputs: the output names, in the torch network's order.
    """

    def __init__(self, path: Path, outputs: list[str]) -> None:
        super().__init__()
        self.path, self.outputs = Path(path), list(outputs)
        self._ort = _onnxruntime(self.path)
        self._session: Any = None
        self._threads = 0
        self._lock = threading.Lock()  # a session is rebuilt by one thread at a time; ``run`` is thread-safe
        self._check(self._session_for(torch.get_num_threads()))

    def _session_for(self, threads: int) -> Any:
        with self._lock:
            return (
                self._build(threads) if self._session is None or threads != self._threads else self._session
            )

    def _build(self, threads: int) -> Any:
        """A new session of ``threads`` intra-op threads (the caller holds the lock)."""
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, threads), 1
        opts.log_severity_level = 3  # errors only: the optimiser's notes are not the user's business
        # no spinning between calls: predict's own numpy/torch steps run in between, on the same cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = self._ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise InputError(self.path, f"not a readable ONNX model ({first})") from None
        self._threads = max(1, threads)
        return self._session

    def _check(self, session: Any) -> None:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != ["input"] or outputs != self.outputs:
            raise InputError(
                self.path,
                f"takes {inputs} and gives {outputs}, not ['input'] and {self.outputs} as {DESCRIPTION} says",
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The network's outputs for ``x`` (float32 on the CPU for onnxruntime), on ``x``'s device."""
        session = self._session_for(torch.get_num_threads())
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        got = tuple(torch.from_numpy(o).to(x.device) for o in session.run(None, {"input": arr}))
        return got[0] if len(got) == 1 else got

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, outputs={self.outputs}"


@dataclass
class OnnxExport:
    """What an export folder holds, checked: the fields :class:`inference.checkpoint.LoadedModel` takes."""

    model: OnnxNetwork
    config: RunConfig
    stats: dict[str, float]
    prep: dict[str, Any]
    path: Path  # the description file: its sha256 covers every network's
    nodule: OnnxNetwork | None = None
    card: dict[str, Any] = field(default_factory=lambda: {"version": 0})


def _description(folder: Path) -> dict[str, Any]:
    """The parsed ``onnx_export.json`` with its format and version checked."""
    path = folder / DESCRIPTION
    if not path.is_file():
        raise InputError(
            folder,
            f"an ONNX folder without {DESCRIPTION}: export it with lungtumor export RUN DIR --format onnx",
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(path, f"not readable JSON ({type(e).__name__}); export the model again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict) or "config" not in doc:
        raise InputError(path, "not a lungtumor ONNX export description (no files or config)")
    if doc.get("format", FORMAT) != FORMAT:
        raise InputError(path, f"format {doc.get('format')!r} is not {FORMAT!r}")
    version = doc.get("format_version", 0)  # 0: written before the format had a version (no sha256s)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InputError(path, f"format_version {version!r} is not a version number")
    if version > ONNX_FORMAT_VERSION:
        raise InputError(
            path,
            f"ONNX export format version {version} is newer than this lungtumor {__version__} reads "
            f"(up to {ONNX_FORMAT_VERSION}); upgrade lungtumor (pip install -U lungtumor)",
        )
    return doc


def _folder(path: str | os.PathLike) -> Path:
    """The export folder that ``path`` names: itself, or the folder of its ``onnx_export.json``."""
    p = Path(path)
    return p.parent if p.is_file() else p


def read_onnx_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card in an export folder's ``onnx_export.json`` (``{"version": 0}`` without one); runs nothing.

    Raises:
        InputError: a missing or unreadable description, or a newer format.
    """
    return card_of(_description(_folder(path)))


def _expected_shape(cfg: RunConfig, name: str) -> list[int]:
    """The input shape without the batch axis that lungtumor feeds the network ``name``."""
    if name == DETECTOR:
        return [1, *[int(cfg.nodule.patch)] * 3]
    size = cfg.vol3d.patch_size if is_3d(cfg) else cfg.prep.size
    return [int(cfg.model.in_channels), *(int(s) for s in size)]


def _network(folder: Path, doc: dict[str, Any], name: str, cfg: RunConfig) -> OnnxNetwork:
    """One listed network, its file present, unchanged (sha256) and of the input shape the config implies."""
    rec, path = doc["files"][name], folder / name
    if not isinstance(rec, dict) or not isinstance(rec.get("outputs"), list):
        raise InputError(folder / DESCRIPTION, f"the entry of {name} lacks its outputs")
    if not path.is_file():
        raise InputError(path, f"missing: {DESCRIPTION} lists it (copy the whole export folder)")
    if "sha256" in rec and sha256_of(path) != rec["sha256"]:
        raise InputError(
            path, f"does not match its sha256 in {DESCRIPTION} (the file was changed or is corrupt)"
        )
    shape = list((rec.get("input") or {}).get("shape", []))[1:]
    want = _expected_shape(cfg, name)
    if shape != want:
        raise InputError(path, f"takes inputs of shape {shape}, but its config predicts with {want}")
    return OnnxNetwork(path, [str(o) for o in rec["outputs"]])


def read_onnx_export(path: str | os.PathLike, nodules: bool = True) -> OnnxExport:
    """Check and load an export folder (or its ``onnx_export.json``); ``nodules=False`` skips the detector.

    Raises:
        InputError: a missing or unreadable description, a newer format, a missing or changed file, a file
            onnxruntime cannot read, or onnxruntime not installed (the message names the file).
    """
    folder = _folder(path)
    doc = _description(folder)
    where = folder / DESCRIPTION
    if MODEL not in doc["files"]:
        raise InputError(where, f"lists no {MODEL}")
    _onnxruntime(folder)  # before any hashing: the missing package is the first thing to say
    cfg = config_from_dict(doc["config"], source=str(where))
    model = _network(folder, doc, MODEL, cfg)
    nodule = _network(folder, doc, DETECTOR, cfg) if nodules and DETECTOR in doc["files"] else None
    stats = {k: float(v) for k, v in dict(doc.get("stats") or {}).items()}
    prep = dict(doc.get("prep") or to_dict(cfg.prep))
    return OnnxExport(model, cfg, stats, prep, where, nodule, card_of(doc))
