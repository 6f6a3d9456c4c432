"""Model packages: one ``.zip`` holding everything ``predict`` needs, and its reader (format version 1).

A package is written from a checkpoint (``workflows.export``) and read back as a checkpoint-shaped dict, so
that ``inference.checkpoint`` builds the model from it by the one build path (same tensors, same masks).
Members (every one but the manifest is listed in it with its sha256 and size)::

    lungtumor_package.json  {"format": "lungtumor-model-package", "format_version": 1,
                             "lungtumor_version": str, "arch": str, "nodule_detector": bool,
                             "source": {"file": str, "sha256": str},
                             "members": {name: {"sha256": str, "bytes": int}}}
    model.safetensors       the network's weights (its state_dict names)
    detector.safetensors    the 3D nodule detector's weights (only when the checkpoint has one)
    config.json             the RunConfig stored in the checkpoint
    preprocessing.json      {"stats": {"mean", "std"}, "prep": {...}}: the model input's normalisation
    card.json               the model card (``inference.card``): training data, preset, validation metrics
    README.md               what the package is and how to use it, for a person

Reading checks the format and its version (a newer version is refused with a hint to upgrade), that the zip
holds exactly the listed members, and every member's sha256, before anything is parsed; weights are read
with safetensors (no pickle). Writing is deterministic (fixed member order and time stamps): the same
checkpoint gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

try:  # an optional extra (lungtumor[deploy]): the demo's install stays as small as it was
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors
except ImportError:  # pragma: no cover - exercised by the one-line error below
    SafetensorError = ValueError  # type: ignore[assignment,misc]
    load_safetensors = save_safetensors = None  # type: ignore[assignment]

from lungtumor import __version__
from lungtumor.core.errors import InputError, atomic_write_bytes
from lungtumor.inference.card import PHANTOM_WARNING, card_line, trained_on_phantoms_only
from lungtumor.inference.detector import CKPT_KEY

#: The package manifest's member name and ``format`` value.
MANIFEST = "lungtumor_package.json"
FORMAT = "lungtumor-model-package"
#: The format version this code writes, and the newest it reads.
PACKAGE_VERSION = 1

MODEL, DETECTOR = "model.safetensors", "detector.safetensors"
CONFIG, PREPROCESSING, CARD, README = "config.json", "preprocessing.json", "card.json", "README.md"
REQUIRED = (MODEL, CONFIG, PREPROCESSING, CARD)

#: A fixed member time stamp (the zip format's earliest), so an export is byte-for-byte reproducible.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def is_package(path: str | os.PathLike) -> bool:
    """True for a path named ``*.zip``: model packages are recognised by their suffix."""
    return Path(path).suffix.lower() == ".zip"


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _need_safetensors(what: str | os.PathLike) -> None:
    """A one-line error when the ``deploy`` extra (safetensors) is not installed."""
    if save_safetensors is None:
        raise InputError(what, "model packages need safetensors: pip install 'lungtumor[deploy]'")


def _weights(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state dict (contiguous CPU copies: safetensors refuses shared storage)."""
    _need_safetensors("lungtumor export")
    return save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


def _readme(info: dict[str, Any], has_detector: bool, source: dict[str, str]) -> str:
    """The package's README.md: what the model is, where it came from, how to use it."""
    card = dict(info.get("card") or {"version": 0})
    arch = str(info.get("config", {}).get("model", {}).get("arch", "?"))
    lines = [
        "# lungtumor model package",
        "",
        card_line(source["file"], card) + ".",
        "",
        f"- network: {arch}" + (", with its 3D nodule detector" if has_detector else ""),
        f"- exported from `{source['file']}` (sha256 {source['sha256']}) by lungtumor {__version__}",
        f"- package format version {PACKAGE_VERSION}; `{MANIFEST}` lists the sha256 of every file",
    ]
    if trained_on_phantoms_only(card):
        lines += ["", f"**Warning: {PHANTOM_WARNING}.**"]
    lines += [
        "",
        "## Use",
        "",
        "    lungtumor predict CT... --model THIS.zip --out OUT",
        "    lungtumor models install THIS.zip --name NAME   # then: lungtumor predict CT... --model NAME",
        "",
        "## Files",
        "",
        f"- `{MODEL}`: the network's weights (safetensors)",
        *([f"- `{DETECTOR}`: the nodule detector's weights (safetensors)"] if has_detector else []),
        f"- `{CONFIG}`: the run's configuration (preprocessing, model, training, inference settings)",
        f"- `{PREPROCESSING}`: the intensity statistics and preprocessing the model expects",
        f"- `{CARD}`: the model card: training data, preset, validation metrics",
        "",
    ]
    return "\n".join(lines)


def package_members(ck: dict[str, Any], source: dict[str, str]) -> dict[str, bytes]:
    """The package's members (name -> bytes, manifest excluded) of a checkpoint dict
    (``inference.checkpoint.read_checkpoint``); ``source``: ``{"file", "sha256"}`` of the checkpoint."""
    info = ck["hyper_parameters"]["lungtumor"]
    net = {k[4:]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
    detector = ck.get(CKPT_KEY)
    members = {MODEL: _weights(net)}
    if isinstance(detector, dict):
        members[DETECTOR] = _weights(detector)
    members[CONFIG] = _json_bytes(info["config"])
    members[PREPROCESSING] = _json_bytes({"stats": info.get("stats", {}), "prep": info.get("prep", {})})
    members[CARD] = _json_bytes(dict(info.get("card") or {"version": 0}))
    members[README] = _readme(info, DETECTOR in members, source).encode("utf-8")
    return members


def write_package(ck: dict[str, Any], out: str | os.PathLike, source: dict[str, str]) -> Path:
    """Write the model package of checkpoint dict ``ck`` to ``out`` (a .zip, atomically); return its path."""
    members = package_members(ck, source)
    info = ck["hyper_parameters"]["lungtumor"]
    manifest = {
        "format": FORMAT,
        "format_version": PACKAGE_VERSION,
        "lungtumor_version": __version__,
        "arch": str(info["config"].get("model", {}).get("arch", "")),
        "nodule_detector": DETECTOR in members,
        "source": dict(source),
        "members": {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in members.items()
        },
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [(MANIFEST, _json_bytes(manifest)), *members.items()]:
            zi = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            zi.compress_type, zi.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(zi, data)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    """The package manifest, its format and version checked."""
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        raise InputError(path, f"not a lungtumor model package (no {MANIFEST})") from None
    except ValueError:
        raise InputError(path, f"{MANIFEST} is not valid JSON (a damaged package?)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(path, f"not a lungtumor model package ({MANIFEST} does not say format {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(path, f"{MANIFEST}: format_version {version!r} is not a version number")
    if version > PACKAGE_VERSION:
        raise InputError(
            path,
            f"model package format version {version} is newer than this lungtumor {__version__} reads "
            f"(up to {PACKAGE_VERSION}); upgrade lungtumor (pip install -U lungtumor)",
        )
    if not isinstance(manifest.get("members"), dict):
        raise InputError(path, f"{MANIFEST} lists no members")
    return manifest


def read_members(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the verified members (name -> bytes) of a model package.

    Raises:
        InputError: not a zip or not a package, a newer format version, a member missing, unlisted, or not
            matching its sha256 (the message names the member).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "model package not found")
    try:
        with zipfile.ZipFile(p) as zf:
            manifest = _read_manifest(zf, p)
            listed = manifest["members"]
            present = [n for n in zf.namelist() if n != MANIFEST]
            extra = sorted(set(present) - set(listed))
            if extra:
                raise InputError(p, f"{extra[0]} is not listed in {MANIFEST} (a changed package?)")
            for name in (*REQUIRED, *listed):
                if name not in present:
                    raise InputError(p, f"{name} is missing from the package")
            members = {}
            for name, want in listed.items():
                data = zf.read(name)
                if not isinstance(want, dict) or hashlib.sha256(data).hexdigest() != want.get("sha256"):
                    raise InputError(
                        p,
                        f"{name} does not match its sha256 in {MANIFEST} (the file was changed or is corrupt)",
                    )
                members[name] = data
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        detail = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise InputError(
            p, f"not a readable model package: not a zip file, or truncated ({detail})"
        ) from None
    return manifest, members


def _load_weights(data: bytes, name: str, path: Path) -> dict[str, torch.Tensor]:
    _need_safetensors(path)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise InputError(path, f"{name}: not readable safetensors ({str(e)[:100]})") from None


def _load_json(data: bytes, name: str, path: Path) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise InputError(path, f"{name} is not valid JSON") from None


def read_package(path: str | os.PathLike) -> dict[str, Any]:
    """A model package as a checkpoint dict, the shape ``inference.checkpoint.read_checkpoint`` returns:
    ``{"hyper_parameters": {"lungtumor": {"config", "stats", "prep", "card"}}, "state_dict": {"net.<name>":
    tensor}}`` and, with a detector, its weights under ``detector.CKPT_KEY``.

    Raises:
        InputError: as :func:`read_members`, or a member that does not parse.
    """
    p = Path(path)
    _, members = read_members(p)
    pre = _load_json(members[PREPROCESSING], PREPROCESSING, p)
    if not isinstance(pre, dict):
        raise InputError(p, f"{PREPROCESSING} is not a JSON object")
    info = {
        "config": _load_json(members[CONFIG], CONFIG, p),
        "stats": pre.get("stats", {}),
        "prep": pre.get("prep", {}),
        "card": _load_json(members[CARD], CARD, p),
    }
    net = _load_weights(members[MODEL], MODEL, p)
    ck: dict[str, Any] = {
        "hyper_parameters": {"lungtumor": info},
        "state_dict": {f"net.{k}": v for k, v in net.items()},
    }
    if DETECTOR in members:
        ck[CKPT_KEY] = _load_weights(members[DETECTOR], DETECTOR, p)
    return ck


def package_summary(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a verified package, with its card: what ``lungtumor models list`` shows."""
    manifest, members = read_members(path)
    return {**manifest, "card": _load_json(members[CARD], CARD, Path(path))}
