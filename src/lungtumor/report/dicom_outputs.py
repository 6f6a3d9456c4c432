"""DICOM outputs of a prediction on a DICOM series: SEG, RT Structure Set and measurement SR.

This module imports highdicom and pydicom (the optional extra ``lungtumor[dicom]``); ``workflows.predict``
loads it only when a DICOM output is asked for, so ``import lungtumor`` and ``lungtumor demo`` never do.
Formats and codes: docs/outputs.md and docs/decisions/0028-dicom-outputs.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lungtumor.evaluation.measure import lesion_labels
from lungtumor.imaging.volume import Volume
from lungtumor.report.dicom_rtstruct import build_rtstruct
from lungtumor.report.dicom_seg import build_seg
from lungtumor.report.dicom_source import Algorithm, read_source_series, write_dicom
from lungtumor.report.dicom_sr import build_sr

#: The DICOM output types and their file-name endings (``<case><ending>``).
DICOM_OUTPUTS = {
    "dicom-seg": "_tumour_seg.dcm",
    "rtstruct": "_tumour_rtstruct.dcm",
    "sr": "_measurements_sr.dcm",
}


def write_dicom_outputs(
    source_dir: str | os.PathLike,
    mask: Volume,
    lesions: Sequence[object],
    out_dir: str | os.PathLike,
    stem: str,
    types: Sequence[str],
    parameters: dict[str, str] | None = None,
    description: str = "",
) -> list[Path]:
    """Write the DICOM outputs ``types`` of one case into ``out_dir``; return their paths.

    Args:
        source_dir: the DICOM series folder the CT was read from (nothing in it is changed).
        mask: the tumour mask on the CT's grid as read (array (z, y, x) in the series' slice order, {0, 1}).
        lesions: ``measure_lesions`` of the mask (lesion n = SEG segment n = RTSTRUCT ROI n = SR group n).
        out_dir: output folder.
        stem: file-name stem of the case.
        types: any of :data:`DICOM_OUTPUTS`; ``sr`` references the SEG, so it writes the SEG too.
        parameters: the settings that shaped the mask (model, threshold, ...), recorded as the algorithm's
            parameters.
        description: one line naming the model and its training data (series descriptions, cut to 64).

    Raises:
        InputError: the series' headers do not match the mask's grid.
    """
    algorithm = Algorithm(parameters={str(k): str(v) for k, v in (parameters or {}).items()})
    if description:
        algorithm.description = description
    source = read_source_series(Path(source_dir), mask)
    labels, n = lesion_labels(mask)
    if n != len(lesions):
        raise ValueError(f"{len(lesions)} lesions measured, {n} in the mask")
    out, written = Path(out_dir), []
    try:  # all or nothing: a failure removes what this call wrote
        seg = build_seg(source, labels, n, algorithm) if {"dicom-seg", "sr"} & set(types) else None
        if seg is not None:
            written.append(write_dicom(seg, out / f"{stem}{DICOM_OUTPUTS['dicom-seg']}"))
        if "rtstruct" in types:
            rt = build_rtstruct(source, labels, n, algorithm)
            written.append(write_dicom(rt, out / f"{stem}{DICOM_OUTPUTS['rtstruct']}"))
        if seg is not None and "sr" in types:
            sr = build_sr(source, seg, lesions, algorithm)
            written.append(write_dicom(sr, out / f"{stem}{DICOM_OUTPUTS['sr']}"))
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    return written
