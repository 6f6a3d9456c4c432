"""``predict_manifest.json``: the provenance of a predict run, in its output folder.

Written atomically (temporary file + ``os.replace``) when the first case has been written, and again after
every case, so a run killed half-way leaves a manifest listing exactly the cases it finished; a run in which
no case succeeds writes none (its output folder stays empty and is removed). Format (docs/outputs.md)::

    {"manifest_version": 1, "lungtumor_version": str, "started": ISO time, "updated": ISO time,
     "models": [{"path", "sha256", "arch", "preset", "nodule_detector": bool, "card": {...}}],
     "settings": {"threshold", "tta", "precision", "device", "batch_size", "lung_gate",
                  "postprocess": {"enabled", "min_lesion_mm3", "min_z_extent_ratio"},
                  "detector": {"enabled", "threshold", "tta", "confirm_small", "min_diameter_mm"},
                  "output_types": [...]},
     "timings": {"load_models_s": float},
     "cases": [{"case", "stem", "input", "input_sha256": {file name: sha256}, "outputs": [{"path", "sha256"}],
                "n_lesions", "tumour_ml", "seconds", "timings": {step: seconds}}],
     "failed": [{"case", "input", "error"}],
     "warnings": [str],
     "part": {"id": I, "of": K}            (only for one part of several: predict --num-parts K --part-id I)
     "continued": {"from_started": ISO time, "cases_carried": int}   (only with predict --continue)
     "processes": {"world_size", "num_nodes", "devices", "accelerator", "backend", "ranks": [{"rank", "host",
                   "device", "threads", "predicted", "failed", "carried", "seconds", "peak_rss_mib"}]}}
                                           (only with several processes: workflows.distributed)

Paths are as given on the command line (inputs, models) or inside the output folder (outputs). ``stem`` is the
outputs' file-name stem (``core.paths.unique_stems``), by which ``--continue`` finds a case (``workflows.batch``).
Part I of K > 1 writes ``predict_manifest.part-I-of-K.json`` instead (``workflows.batch.manifest_name``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungtumor import __version__
from lungtumor.core.errors import atomic_write_text
from lungtumor.inference.card import PHANTOM_WARNING, trained_on_phantoms_only

MANIFEST_NAME = "predict_manifest.json"
MANIFEST_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_digests(src: str | Path) -> dict[str, str]:
    """sha256 of an input: ``{file name: digest}`` of the file, or of every (non-hidden) file of a DICOM
    folder (names relative to it, sorted)."""
    p = Path(src)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return {f.name: sha256_file(f) for f in files}
    return {p.name: sha256_file(p)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def model_record(loaded: Any) -> dict[str, Any]:
    """A loaded model (``inference.checkpoint.LoadedModel``) as a manifest entry."""
    return {
        "path": str(loaded.path),
        "sha256": sha256_file(loaded.path),
        "arch": str(loaded.config.model.arch),
        "preset": str(loaded.config.preset),
        "nodule_detector": getattr(loaded, "nodule", None) is not None,
        "card": dict(getattr(loaded, "card", None) or {"version": 0}),
        "runtime": str(getattr(loaded, "runtime", "torch")),  # onnxruntime: an ONNX export folder
    }


def settings_record(settings: Any, opts: Any, device: Any, models: Sequence[Any]) -> dict[str, Any]:
    """Every setting that shaped the masks: ``settings`` (predict's resolved threshold, min_mm3, z_ratio,
    lung_gate, tta, precision), ``opts`` (``PredictOptions``), the device and the models (their detector)."""
    nod = models[0].config.nodule
    detector_on = any(getattr(m, "nodule", None) is not None for m in models)
    return {
        "threshold": float(settings.threshold),
        "tta": bool(settings.tta),
        "precision": str(settings.precision),
        "device": str(device),
        "batch_size": opts.batch_size,
        "lung_gate": bool(opts.postprocess and settings.lung_gate),
        "postprocess": {
            "enabled": bool(opts.postprocess),
            "min_lesion_mm3": float(settings.min_mm3),
            "min_z_extent_ratio": float(settings.z_ratio),
        },
        "detector": {
            "enabled": detector_on,
            "threshold": float(nod.threshold),
            "tta": bool(nod.tta),
            "confirm_small": bool(nod.confirm_small),
            "min_diameter_mm": float(nod.min_diameter_mm),
        },
        "output_types": list(getattr(opts, "output_types", ("nifti",))),
    }


class PredictManifest:
    """The manifest of one predict run; every change is written at once (atomically)."""

    def __init__(
        self,
        out_dir: str | Path,
        models: list[dict[str, Any]],
        settings: dict[str, Any],
        name: str = MANIFEST_NAME,
        part: tuple[int, int] | None = None,
    ) -> None:
        """``name``: the file name in ``out_dir``; ``part``: (I, K) when this run is part I of K > 1."""
        self.path = Path(out_dir) / name
        warnings = [f"{m['path']}: {PHANTOM_WARNING}" for m in models if trained_on_phantoms_only(m["card"])]
        self.data: dict[str, Any] = {
            "manifest_version": MANIFEST_VERSION,
            "lungtumor_version": __version__,
            "started": _now(),
            "updated": _now(),
            "models": models,
            "settings": settings,
            "timings": {},
            "cases": [],
            "failed": [],
            "warnings": warnings,
        }
        if part is not None:
            self.data["part"] = {"id": int(part[0]), "of": int(part[1])}

    def carry(self, entries: list[dict[str, Any]], previous: dict[str, Any]) -> None:
        """Keep the entries of cases an earlier run finished (``predict --continue``; ``previous``: its
        manifest) as they are, and write."""
        self.data["cases"].extend(entries)
        if entries:
            self.data["continued"] = {"from_started": previous.get("started"), "cases_carried": len(entries)}
        self.write()

    def set_timing(self, name: str, seconds: float) -> None:
        """Record a run-level timing (seconds) and write."""
        self.data["timings"][name] = round(float(seconds), 3)
        self.write()

    def add_case(self, res: Any, out_dir: str | Path, input_sha256: dict[str, str] | None = None) -> None:
        """Record a finished case (``PredictResult``) and write: failed cases go to ``failed``.
        ``input_sha256``: :func:`input_digests` of its input when already computed."""
        if res.error:
            self.data["failed"].append({"case": res.case, "input": str(res.source), "error": res.error})
        else:
            out = Path(out_dir)
            self.data["cases"].append(
                {
                    "case": res.case,
                    "stem": getattr(res, "stem", None),
                    "input": str(res.source),
                    "input_sha256": input_sha256 if input_sha256 is not None else input_digests(res.source),
                    "outputs": [
                        {
                            "path": str(Path(f).relative_to(out)) if Path(f).is_relative_to(out) else str(f),
                            "sha256": sha256_file(f),
                        }
                        for f in res.outputs
                    ],  # fmt: skip
                    "n_lesions": int(res.n_lesions),
                    "tumour_ml": round(float(res.tumour_ml), 4),
                    "seconds": round(float(res.seconds), 3),
                    "timings": {k: round(float(v), 3) for k, v in getattr(res, "timings", {}).items()},
                }
            )
        self.write()

    def write(self) -> None:
        """Write the manifest atomically (temporary file, then ``os.replace``), once a case has succeeded."""
        if not self.data["cases"]:
            return
        self.data["updated"] = _now()
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")
