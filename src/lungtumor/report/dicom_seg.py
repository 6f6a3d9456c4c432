"""The tumour mask as a DICOM Segmentation (highdicom): ``<case>_tumour_seg.dcm``.

A BINARY Segmentation of the source series, in its frame of reference, with one frame per source slice that
holds tumour (empty frames are left out, as highdicom does by default) and one segment per lesion: lesion n
is the n-th 26-connected component by decreasing volume, as ``lungtumor measure`` numbers them. Every
segment is coded as (category SCT 49755003 "Morphologically Abnormal Structure", type SCT 372087000
"Neoplasm, Primary", anatomic region SCT 39607008 "Lung"), AUTOMATIC, with the algorithm's name and version.
A mask without a lesion gives one empty segment labelled "no tumour found" (a SEG needs one segment).
Codes and choices: docs/decisions/0028-dicom-outputs.md.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lungtumor.report.dicom_source import (
    MANUFACTURER,
    SERIES_NUMBER,
    Algorithm,
    SourceSeries,
    carry_deidentification,
)

#: Segmented property category, type and anatomic region of every segment (DICOM CID 7150, 7151, 4).
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
PROPERTY_TYPE = codes.SCT.NeoplasmPrimary  # SCT 372087000 "Neoplasm, Primary"
REGION = codes.SCT.Lung  # SCT 39607008


def algorithm_identification(algo: Algorithm) -> hd.AlgorithmIdentificationSequence:
    """The Algorithm Identification Sequence of ``algo`` (family: Artificial Intelligence, DCM 123110)."""
    return hd.AlgorithmIdentificationSequence(
        name=algo.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algo.version,
        parameters=dict(algo.parameters) or None,
    )


def segment_descriptions(n_lesions: int, algo: Algorithm) -> list[hd.seg.SegmentDescription]:
    """One description per lesion (segment n = lesion n), or one for an empty mask."""
    ident = algorithm_identification(algo)
    labels = [f"lesion {i}" for i in range(1, n_lesions + 1)] or ["no tumour found"]
    return [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=label,
            segmented_property_category=CATEGORY,
            segmented_property_type=PROPERTY_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
            tracking_uid=generate_uid(),
            tracking_id=label,
            anatomic_regions=[REGION],
        )
        for i, label in enumerate(labels, start=1)
    ]


def build_seg(
    source: SourceSeries, labels: np.ndarray, n_lesions: int, algo: Algorithm
) -> hd.seg.Segmentation:
    """The Segmentation dataset of a lesion label map.

    Args:
        source: the source series (headers in the label map's slice order).
        labels: (z, y, x) integer label map in the source's slice order: 0 background, n = lesion n.
        n_lesions: the number of lesions (labels 1..n_lesions).
        algo: the algorithm identification.
    """
    if labels.shape[0] != len(source.datasets):
        raise ValueError(f"label map has {labels.shape[0]} slices, the source series {len(source.datasets)}")
    pixels = np.ascontiguousarray(labels, dtype=np.uint16 if n_lesions > 255 else np.uint8)
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(n_lesions, algo),
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["dicom-seg"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algo.name,
        software_versions=algo.version,
        device_serial_number="none",
        content_label="TUMOUR",
        content_description="lungtumor lung tumour segmentation",
        series_description=algo.description[:64],
        omit_empty_frames=n_lesions > 0,  # an empty mask keeps its (empty) frames: a SEG needs one
    )
    carry_deidentification(seg, source.first)  # highdicom copies PatientIdentityRemoved only
    return seg


def read_seg_labels(path: str | Path, source: SourceSeries) -> np.ndarray:
    """Read a SEG written by ``write_dicom`` back onto the source's slices: (z, y, x) uint16 label map
    (segment numbers; 0 where no segment), in the source's slice order."""
    seg = hd.seg.segread(str(path))
    uids = [str(ds.SOPInstanceUID) for ds in source.datasets]
    numbers = [int(n) for n in seg.get_segment_numbers()]
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=numbers,
        assert_missing_frames_are_empty=True,
    )  # (z, y, x, segments) binary
    out = np.zeros(px.shape[:3], np.uint16)
    for j, n in enumerate(numbers):
        out[px[..., j] > 0] = n
    return out
