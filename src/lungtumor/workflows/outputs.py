"""``predict --output-type``: which files a prediction writes, and the DICOM writer loaded only when asked for.

``nifti`` is ``<case>_tumour.nii.gz``; ``dicom-seg``, ``rtstruct`` and ``sr`` are DICOM files for a DICOM series
input (``lungtumor.report.dicom_outputs``, which needs the optional extra ``lungtumor[dicom]``: highdicom and
pydicom). The writer module is imported here, on demand, so that ``import lungtumor`` and ``lungtumor demo``
never import highdicom.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungtumor.core.errors import InputError
from lungtumor.inference.card import PHANTOM_WARNING, card_rows, trained_on_phantoms_only

#: Every output type, in the order they are written.
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct", "sr")
#: The ones that need a DICOM series as input.
DICOM_TYPES = ("dicom-seg", "rtstruct", "sr")
#: The install line named when highdicom is missing.
DICOM_EXTRA = "pip install 'lungtumor[dicom]'"
#: The files each output type writes, as suffixes of the case's stem (the DICOM ones are
#: ``report.dicom_outputs.DICOM_OUTPUTS``, not imported here: it needs highdicom; a test keeps them equal).
TYPE_SUFFIXES = {
    "nifti": ("_tumour.nii.gz",),
    "dicom-seg": ("_tumour_seg.dcm",),
    "rtstruct": ("_tumour_rtstruct.dcm",),
    "sr": ("_tumour_seg.dcm", "_measurements_sr.dcm"),  # the SR references the SEG: both are written
}


def parse_output_types(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"nifti,dicom-seg"`` (or a list of names) as a checked tuple in :data:`OUTPUT_TYPES` order.

    Raises:
        InputError: an unknown or empty output type.
    """
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [v.strip().lower() for v in items]
    bad = [n for n in names if n not in OUTPUT_TYPES]
    if bad or not names:
        what = f"unknown output type {bad[0]!r}" if bad else "no output type given"
        raise InputError("--output-type", f"{what}; give a comma-separated list of {', '.join(OUTPUT_TYPES)}")
    return tuple(t for t in OUTPUT_TYPES if t in names)


def expected_outputs(
    stem: str, types: Sequence[str], *, save_prob: bool, measure: bool, report: bool
) -> list[str]:
    """The file names ``predict`` writes for a case with output stem ``stem``: the output types' files, the
    probability map (``save_prob``), the lesion tables (``measure``) and the report's three files (``report``)."""
    suffixes = [x for t in types for x in TYPE_SUFFIXES[t]]
    if save_prob:
        suffixes.append("_prob.nii.gz")
    if measure:
        suffixes += ["_lesions.json", "_lesions.csv"]
    if report:
        suffixes += ["_report.html", "_animation.gif", "_montage.png"]
    return list(dict.fromkeys(f"{stem}{x}" for x in suffixes))


def dicom_types(types: Sequence[str]) -> list[str]:
    """The DICOM output types among ``types``."""
    return [t for t in types if t in DICOM_TYPES]


def check_dicom_inputs(sources: Iterable[Path], types: Sequence[str], out_dir: Path | None = None) -> None:
    """Refuse DICOM outputs for an input that is not a DICOM series folder, or into the series' own folder
    (the source is never changed, and a second series there would make it unreadable).

    Raises:
        InputError: naming the first such input.
    """
    wanted = dicom_types(types)
    if not wanted:
        return
    for src in sources:
        if out_dir is not None and Path(src).is_dir() and Path(out_dir).resolve() == Path(src).resolve():
            raise InputError(src, "--out is the DICOM series' own folder; write the outputs elsewhere")
        if not Path(src).is_dir():  # collect_inputs yields folders only for DICOM series
            raise InputError(
                src,
                f"--output-type {','.join(wanted)} needs a DICOM series folder as input, and this is a file; "
                "use --output-type nifti for NIfTI, NRRD or MHA input",
            )


def load_dicom_writer(types: Sequence[str]) -> Callable[..., list[Path]] | None:
    """``report.dicom_outputs.write_dicom_outputs`` when ``types`` holds a DICOM output, else None.

    Raises:
        InputError: highdicom (or pydicom) is not installed; the message names the install line.
    """
    wanted = dicom_types(types)
    if not wanted:
        return None
    try:
        module = importlib.import_module("lungtumor.report.dicom_outputs")
    except ImportError as e:
        missing = e.name or "highdicom"
        raise InputError(
            "--output-type",
            f"{','.join(wanted)} needs highdicom, and {missing} is not installed: {DICOM_EXTRA}",
        ) from None
    return module.write_dicom_outputs


@dataclass
class RunInfo:
    """What every case of a predict run carries about the model and its settings.

    Attributes:
        meta: report metadata rows (model, its card, the settings that shaped the mask).
        warnings: shown at the top of every report (a model trained only on phantoms).
        parameters: the DICOM outputs' algorithm parameters (strings).
        description: the DICOM outputs' series description (at most 64 characters).
        dicom_writer: ``write_dicom_outputs`` when a DICOM output is asked for, else None.
        types: the output types asked for (:data:`OUTPUT_TYPES`).
    """

    meta: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    description: str = "lungtumor tumour segmentation"
    dicom_writer: Callable[..., list[Path]] | None = None
    types: tuple[str, ...] = ("nifti",)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def run_info(models: Sequence[dict[str, Any]], settings: dict[str, Any]) -> RunInfo:
    """The :class:`RunInfo` of a run from its manifest records (``manifest.model_record``, ``settings_record``);
    loads the DICOM writer when ``settings["output_types"]`` holds a DICOM type.

    Raises:
        InputError: a DICOM output is asked for and highdicom is not installed.
    """
    types = parse_output_types(settings["output_types"])
    pp, det = settings["postprocess"], settings["detector"]
    post = (
        f"min lesion {pp['min_lesion_mm3']:g} mm³, min z-extent ratio {pp['min_z_extent_ratio']:g}"
        if pp["enabled"]
        else "off"
    )
    meta = {"Model": ", ".join(m["path"] for m in models)}
    meta["Model sha256"] = ", ".join(m["sha256"][:16] for m in models)
    for m in models[:1]:
        meta.update(card_rows(m["card"]))
    meta.update({
        "Threshold": f"{settings['threshold']:g}",
        "Test-time augmentation": _on(settings["tta"]),
        "Postprocessing": post,
        "Lung gate": _on(settings["lung_gate"]),
        "Nodule detector": f"on (threshold {det['threshold']:g})" if det["enabled"] else "off",
        "Device / precision": f"{settings['device']} / {settings['precision']}",
    })  # fmt: skip
    phantom = [m for m in models if trained_on_phantoms_only(m["card"])]
    warnings = [PHANTOM_WARNING[0].upper() + PHANTOM_WARNING[1:] + "."] if phantom else []
    params = {
        "model": ";".join(Path(m["path"]).name for m in models),
        "model_sha256": ";".join(m["sha256"] for m in models),
        "threshold": f"{settings['threshold']:g}",
        "tta": _on(settings["tta"]),
        "postprocess": _on(pp["enabled"]),
        "lung_gate": _on(settings["lung_gate"]),
        "detector": _on(det["enabled"]),
    }
    desc = "lungtumor tumour segmentation" + (" - PHANTOM-ONLY MODEL, NOT CLINICAL" if phantom else "")
    return RunInfo(meta, warnings, params, desc[:64], load_dicom_writer(types), types)
