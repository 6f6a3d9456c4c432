"""lungtumor: segment lung tumours in chest CT and measure them.

Axis conventions (used everywhere): voxel arrays are indexed (z, y, x); spacing, origin and
direction are given in (x, y, z) order, in millimetres, exactly as SimpleITK reports them (LPS world).

The public API (``docs/api.md``)::

    import lungtumor
    ct = lungtumor.read_volume("ct.nii.gz")                       # Volume: HU, (z, y, x), spacing in mm
    results = lungtumor.predict(["ct.nii.gz"], "run/", "out/")    # masks in the input's geometry
    lesions = lungtumor.measure(lungtumor.read_mask("out/ct_tumour.nii.gz"))  # volume in mL, diameters in mm

Names load on first use, so ``import lungtumor`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    "Volume": ("lungtumor.imaging.volume", "Volume"),
    "read_volume": ("lungtumor.imaging.io", "read_volume"),
    "read_mask": ("lungtumor.imaging.io", "read_mask"),
    "write_volume": ("lungtumor.imaging.io", "write_volume"),
    "InputError": ("lungtumor.core.errors", "InputError"),
    "RunConfig": ("lungtumor.core.config", "RunConfig"),
    "load_config": ("lungtumor.core.config_io", "load_config"),
    "load_model": ("lungtumor.inference.checkpoint", "load_any"),
    "predict": ("lungtumor.workflows.predict", "predict"),
    "PredictOptions": ("lungtumor.workflows.predict", "PredictOptions"),
    "PredictResult": ("lungtumor.workflows.predict", "PredictResult"),
    "measure": ("lungtumor.evaluation.measure", "measure_lesions"),
    "Lesion": ("lungtumor.evaluation.measure", "Lesion"),
    "evaluate": ("lungtumor.evaluation.evaluate", "evaluate_dirs"),
    "synth": ("lungtumor.data.phantom", "synth_dataset"),
    "prepare": ("lungtumor.preprocessing.prepare", "prepare_dataset"),
    "train": ("lungtumor.training.run", "train"),
    "report": ("lungtumor.report.writer", "report_files"),
    "run_demo": ("lungtumor.workflows.demo", "run_demo"),
    "compare": ("lungtumor.workflows.compare", "compare"),
    "Predictor": ("lungtumor.inference.predictor", "Predictor"),
    "export_model": ("lungtumor.workflows.export", "export_model"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Load a public name from its stage's module on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'lungtumor' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
