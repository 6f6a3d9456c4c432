"""Small DICOM CT series written with pydicom, for the DICOM output tests (tests/report/, tests/workflows/).

``write_ct_series(folder, hu)`` writes one file per axial slice of ``hu`` (z, y, x) with the identity of a made-up
patient and study; ``crop_real_series`` copies a few slices of a real series (cropped in-plane) into a test folder.
Nothing here writes into the repository.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_ID = "LT-TEST-0001"
PIXEL_MM = 0.8
SLICE_MM = 2.5
ORIGIN = (-25.6, -30.0, -100.0)


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    *,
    pixel_mm: float = PIXEL_MM,
    slice_mm: float = SLICE_MM,
    origin: tuple[float, float, float] = ORIGIN,
    descending: bool = False,
    study_uid: str | None = None,
) -> dict[str, str]:
    """Write ``hu`` (int16 HU, (z, y, x)) as an axial CT series (LPS, one file per slice, shuffled names).

    ``descending``: slice k lies at origin z - k * slice_mm (a head-to-feet series). Returns the identity
    (PatientID, StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ident = {
        "PatientID": PATIENT_ID,
        "StudyInstanceUID": study_uid or generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
    }
    n = hu.shape[0]
    order = np.random.default_rng(0).permutation(n)  # file names do not follow slice order
    for k in range(n):
        z = origin[2] + (-k if descending else k) * slice_mm
        ds = _ct_slice(hu[k], ident, k, (origin[0], origin[1], z), pixel_mm, slice_mm)
        ds.save_as(folder / f"IM{order[k]:04d}.dcm", enforce_file_format=True)
    return ident


def _ct_slice(
    hu: np.ndarray,
    ident: dict[str, str],
    k: int,
    ipp: tuple[float, float, float],
    pixel_mm: float,
    slice_mm: float,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "Test^Phantom",
        ident["PatientID"],
        "",
        "O",
    )
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = ident["StudyInstanceUID"], "20240102", "101500"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", "ACC1"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", ident["SeriesInstanceUID"], 3
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = ident["FrameOfReferenceUID"], ""
    ds.Manufacturer = "lungtumor tests"
    ds.InstanceNumber, ds.ImageType = k + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], slice_mm
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.KVP, ds.AcquisitionNumber = 120, 1
    ds.PixelData = np.ascontiguousarray(hu.astype(np.int16)).tobytes()
    return ds


def phantom_ct(shape: tuple[int, int, int] = (12, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A tiny chest-like CT (int16 HU) and a mask of two lesions (uint8), both (z, y, x)."""
    z, h, w = shape
    zz, yy, xx = np.mgrid[:z, :h, :w]
    hu = np.full(shape, -1000, np.int16)
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.48 * w)) ** 2 <= 1
    hu[body] = 40
    lungs = body & (
        ((yy - h / 2) / (0.3 * h)) ** 2 + ((np.abs(xx - w / 2) - 0.22 * w) / (0.15 * w)) ** 2 <= 1
    )
    hu[lungs] = -850
    mask = np.zeros(shape, np.uint8)
    mask[((zz - 5) / 2.5) ** 2 + ((yy - 30) / 5.0) ** 2 + ((xx - 18) / 5.0) ** 2 <= 1] = (
        1  # a nodule with a hole
    )
    mask[5, 30, 18] = 0
    mask[7:10, 28:33, 44:48] = 1  # a box-shaped second lesion
    hu[mask > 0] = 30
    return hu, mask


def crop_real_series(src: Path, dst: Path, z0: int, nz: int, box_yx: tuple[int, int, int, int]) -> list[Path]:
    """Copy slices z0 .. z0+nz-1 (in position order, feet first) of the real series ``src`` into ``dst``,
    cropped to rows y0:y1 and columns x0:x1 (``box_yx`` = (y0, y1, x0, x1)), with their real headers
    (ImagePositionPatient moved to the crop's corner). Returns the written files."""
    heads = [(pydicom.dcmread(f, stop_before_pixels=True), f) for f in sorted(src.iterdir()) if f.is_file()]
    heads.sort(key=lambda t: float(t[0].ImagePositionPatient[2]))
    y0, y1, x0, x1 = box_yx
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for _, f in heads[z0 : z0 + nz]:
        ds = pydicom.dcmread(f)
        px = ds.pixel_array[y0:y1, x0:x1].copy()
        row, col = (
            np.array(ds.ImageOrientationPatient[:3], float),
            np.array(ds.ImageOrientationPatient[3:], float),
        )
        dy, dx = (float(v) for v in ds.PixelSpacing)
        ds.ImagePositionPatient = [
            round(float(v), 4)
            for v in np.array(ds.ImagePositionPatient, float) + x0 * dx * row + y0 * dy * col
        ]
        ds.Rows, ds.Columns = px.shape
        ds.PixelData = px.tobytes()
        for tag in ("LargestImagePixelValue", "SmallestImagePixelValue"):
            if tag in ds:
                delattr(ds, tag)
        path = dst / f.name
        ds.save_as(path)
        out.append(path)
    return out


def tree_digest(folder: Path) -> str:
    """sha256 over the names and bytes of every file in ``folder`` (to show a source was not changed)."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()
