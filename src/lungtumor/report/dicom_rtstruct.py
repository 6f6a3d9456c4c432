"""The lesions as a DICOM RT Structure Set (pydicom): ``<case>_tumour_rtstruct.dcm``.

One ROI per lesion (lesion n = the n-th 26-connected component by decreasing volume, as ``lungtumor measure``
numbers them), in the source series' frame of reference, with CLOSED_PLANAR contours on the source slices:
each slice's outlines are the 0.5 iso-lines of the lesion's binary slice (marching squares, ``contourpy``,
which matplotlib already brings), so they pass half-way between the pixel centres inside and outside. A
hole or a separate piece is a contour of its own; a reader fills nested contours by the even-odd rule (as
:func:`read_rtstruct_labels` does). Each contour references the source image of its slice; the structure set
references every source instance; a mask without a lesion gives one ROI without contours, "no tumour
found". Approval status is UNAPPROVED: a person must review it.
Written with pydicom directly (highdicom has no RT Structure Set class; rt-utils would be one more
dependency for what is ~150 lines here): docs/decisions/0028-dicom-outputs.md.
"""

from __future__ import annotations

from pathlib import Path

import contourpy
import numpy as np
import pydicom
from matplotlib.path import Path as PolyPath
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from lungtumor.report.dicom_source import (
    MANUFACTURER,
    SERIES_NUMBER,
    Algorithm,
    SourceSeries,
    copy_identity,
    now_da_tm,
)

#: The retired Detached Study Management SOP Class: what RTReferencedStudySequence items conventionally name.
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_COLOURS = ((255, 59, 48), (255, 149, 0), (255, 204, 0), (52, 199, 89), (0, 122, 255), (175, 82, 222))


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a binary slice (y, x): each (N, 2) in pixel index (x, y) = (column, row), the last
    point not repeating the first; outer boundaries and holes alike (fill them by the even-odd rule)."""
    padded = np.pad(np.asarray(mask2d > 0, dtype=np.float64), 1)
    gen = contourpy.contour_generator(
        z=padded, name="serial", line_type=contourpy.LineType.Separate, corner_mask=False
    )
    out = []
    for line in gen.lines(0.5):
        pts = np.asarray(line, float) - 1.0  # undo the padding
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) >= 3:
            out.append(pts)
    return out


def _plane(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IPP, column step, row step) of a slice in mm, LPS: world = IPP + x * column step + y * row step."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    return np.asarray(ds.ImagePositionPatient, float), iop[:3] * dx, iop[3:] * dy


def _image_ref(ds: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ref


def _roi_contours(source: SourceSeries, lesion: np.ndarray) -> Sequence:
    """The ContourSequence of one lesion's binary (z, y, x) mask (source slice order)."""
    items = []
    for k in np.flatnonzero(lesion.reshape(len(lesion), -1).any(axis=1)):
        ds = source.datasets[int(k)]
        ipp, step_x, step_y = _plane(ds)
        for pts in slice_contours(lesion[k]):
            world = ipp + pts[:, :1] * step_x + pts[:, 1:2] * step_y
            c = Dataset()
            c.ContourImageSequence = Sequence([_image_ref(ds)])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(world)
            c.ContourNumber = len(items) + 1
            c.ContourData = [round(float(v), 4) for v in world.ravel()]
            items.append(c)
    return Sequence(items)


def _referenced_frame(source: SourceSeries) -> Dataset:
    """The ReferencedFrameOfReferenceSequence item: study, series and every source image."""
    first = source.first
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = Sequence([_image_ref(ds) for ds in source.datasets])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = _STUDY_SOP_CLASS, first.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    return frame


def _roi_items(n: int, name: str, frame_uid: str, algo: Algorithm) -> tuple[Dataset, Dataset]:
    """(StructureSetROISequence item, RTROIObservationsSequence item) of ROI ``n``."""
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = n, frame_uid, name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{algo.name} {algo.version}"[:64]
    obs = Dataset()
    obs.ObservationNumber, obs.ReferencedROINumber = n, n
    obs.ROIObservationLabel = name
    obs.RTROIInterpretedType, obs.ROIInterpreter = "GTV", ""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = codes.SCT.NeoplasmPrimary.value, "SCT"
    code.CodeMeaning = codes.SCT.NeoplasmPrimary.meaning
    obs.RTROIIdentificationCodeSequence = Sequence([code])
    return roi, obs


def build_rtstruct(source: SourceSeries, labels: np.ndarray, n_lesions: int, algo: Algorithm) -> FileDataset:
    """The RT Structure Set of a lesion label map.

    Args:
        source: the source series (headers in the label map's slice order).
        labels: (z, y, x) integer label map in the source's slice order: 0 background, n = lesion n.
        n_lesions: the number of lesions (labels 1..n_lesions); 0 gives one ROI without contours,
            "no tumour found".
        algo: the algorithm identification.
    """
    first = source.first
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    date, time = now_da_tm()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    copy_identity(ds, first)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), SERIES_NUMBER["rtstruct"]
    ds.SeriesDescription, ds.OperatorsName = algo.description[:64], ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = MANUFACTURER, algo.name, algo.version
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID  # the source's frame of reference
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.InstanceNumber = 1
    ds.StructureSetLabel, ds.StructureSetName = "LUNGTUMOR", "lungtumor lesions"
    ds.StructureSetDescription = "automatic lung tumour segmentation; one ROI per lesion"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(source)])
    rois, observations, contours = [], [], []
    names = [f"lesion {n}" for n in range(1, n_lesions + 1)] or ["no tumour found"]  # >= 1 ROI (Type 1)
    for n, name in enumerate(names, start=1):
        roi, obs = _roi_items(n, name, first.FrameOfReferenceUID, algo)
        item = Dataset()
        item.ReferencedROINumber = n
        item.ROIDisplayColor = list(_COLOURS[(n - 1) % len(_COLOURS)])
        if n_lesions:
            item.ContourSequence = _roi_contours(source, labels == n)
        rois.append(roi)
        observations.append(obs)
        contours.append(item)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def read_rtstruct_labels(path: str | Path, source: SourceSeries) -> np.ndarray:
    """Rasterise an RT Structure Set onto the source's slices: (z, y, x) uint16, ROI number where a pixel
    centre lies inside its contours (even-odd rule per slice), 0 elsewhere; slices in the source's order."""
    rt = pydicom.dcmread(str(path))
    slot = {str(ds.SOPInstanceUID): k for k, ds in enumerate(source.datasets)}
    rows, cols = int(source.first.Rows), int(source.first.Columns)
    out = np.zeros((len(source.datasets), rows, cols), np.uint16)
    yy, xx = np.mgrid[:rows, :cols]
    centres = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    for item in rt.get("ROIContourSequence", []):
        inside = np.zeros(out.shape, bool)
        for c in item.get("ContourSequence", []):
            k = slot[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            ipp, step_x, step_y = _plane(source.datasets[k])
            world = np.asarray(c.ContourData, float).reshape(-1, 3) - ipp
            basis = np.column_stack([step_x, step_y])  # world offset = basis @ (x, y)
            xy = np.linalg.lstsq(basis, world.T, rcond=None)[0].T
            ring = PolyPath(np.vstack([xy, xy[:1]]), closed=True)  # closed: the last vertex is the close
            inside[k] ^= ring.contains_points(centres).reshape(rows, cols)
        out[inside] = int(item.ReferencedROINumber)
    return out
