"""The source DICOM series of a prediction, read with pydicom, and what the DICOM writers share.

``lungtumor.imaging.io`` reads a DICOM series with SimpleITK (GDCM sorts the files); the DICOM outputs must
reference every source instance, so :func:`read_source_series` reads the headers again with pydicom
(``stop_before_pixels``), puts them in the order of the stored Volume's array slices (by
ImagePositionPatient along the slice normal) and checks that they agree with the Volume's geometry.

Conventions: ``Volume.array`` and label maps are (z, y, x) in the order the series was read (not the canonical
order); spacing, origin and direction are (x, y, z) mm, LPS. DICOM row direction = the Volume's x axis,
column direction = its y axis, PixelSpacing = (y, x) mm.
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lungtumor import __version__
from lungtumor.core.errors import InputError, atomic_path
from lungtumor.imaging.volume import Volume

#: Manufacturer / model name written into every DICOM output (General Equipment module).
MANUFACTURER = "lungtumor"

#: Series numbers of the outputs (the source keeps its own; these sort after a scanner's usual ones).
SERIES_NUMBER = {"dicom-seg": 9101, "rtstruct": 9102, "sr": 9103}


@dataclass
class Algorithm:
    """Who made the mask: the algorithm identification written into the outputs.

    Attributes:
        name: algorithm name (``lungtumor``).
        version: lungtumor version.
        parameters: the settings that shaped the mask and the model's identity (checkpoint sha256, threshold,
            ...), as strings.
        description: one line naming the model and its training data (series descriptions are cut to 64).
    """

    name: str = "lungtumor"
    version: str = __version__
    parameters: dict[str, str] = field(default_factory=dict)
    description: str = "lungtumor automatic lung tumour segmentation"


@dataclass
class SourceSeries:
    """A DICOM series' headers in the stored Volume's slice order.

    Attributes:
        folder: the series folder.
        datasets: headers without pixel data; ``datasets[k]`` is array slice k (z index) of the Volume.
        files: the file of each dataset.
    """

    folder: Path
    datasets: list[Dataset]
    files: list[Path]

    @property
    def first(self) -> Dataset:
        """The first slice's header (patient, study, frame of reference)."""
        return self.datasets[0]


def _headers(folder: Path) -> list[tuple[Dataset, Path]]:
    """Every DICOM image header in ``folder`` (hidden files and non-DICOM files are passed over)."""
    out = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "ImagePositionPatient" in ds and "SOPInstanceUID" in ds:
            out.append((ds, f))
    return out


def read_source_series(folder: str | Path, stored: Volume, tol_mm: float = 0.05) -> SourceSeries:
    """The headers of the DICOM series in ``folder`` in the order of ``stored``'s array slices.

    Args:
        folder: a folder holding one DICOM series (as ``read_volume`` accepts it).
        stored: the Volume read from it (array (z, y, x) as read, geometry in (x, y, z) mm).
        tol_mm: how far a slice's ImagePositionPatient may lie from where the Volume puts it (mm).

    Raises:
        InputError: the headers cannot be matched one to one to the Volume's slices (another series, a
            missing or extra file, other orientation, rows, columns or spacing).
    """
    folder = Path(folder)
    heads = _headers(folder)
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds, _ in heads}
    nz, ny, nx = stored.shape
    if len(heads) != nz or len(uids) != 1:
        raise InputError(
            folder,
            f"holds {len(heads)} DICOM images of {len(uids)} series; the CT read from it has {nz} slices",
        )
    d = np.asarray(stored.direction, float).reshape(3, 3)  # columns: world directions of x, y, z
    sx, sy, sz = stored.spacing
    origin = np.asarray(stored.origin, float)
    slots: list[tuple[Dataset, Path] | None] = [None] * nz
    for ds, f in heads:
        iop = np.asarray(ds.ImageOrientationPatient, float)
        ps = [float(v) for v in ds.get("PixelSpacing", [0, 0])]
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx) or not np.allclose(
            iop, [*d[:, 0], *d[:, 1]], atol=1e-3
        ):
            raise InputError(f, "orientation or size differs from the CT read from its folder")
        if not np.allclose(ps, [sy, sx], rtol=1e-3, atol=1e-4):
            raise InputError(f, f"PixelSpacing {ps} differs from the CT's ({sy:g}, {sx:g}) mm")
        off = np.asarray(ds.ImagePositionPatient, float) - origin
        k = float(off @ d[:, 2]) / sz
        kk = int(round(k))
        if not 0 <= kk < nz or np.linalg.norm(off - kk * sz * d[:, 2]) > tol_mm or slots[kk] is not None:
            raise InputError(f, "ImagePositionPatient matches no slice of the CT read from its folder")
        slots[kk] = (ds, f)
    return SourceSeries(folder, [s[0] for s in slots], [s[1] for s in slots])  # type: ignore[index]


def copy_identity(dst: Dataset, src: Dataset) -> None:
    """Patient and study identity (Patient, General Study and Patient Study modules) from ``src`` to ``dst``;
    Type 2 attributes the source lacks are written empty."""
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(dst, kw, src.get(kw, ""))
    for kw in ("IssuerOfPatientID", "OtherPatientIDs", "PatientAge", "PatientWeight", "PatientSize"):
        if kw in src:
            setattr(dst, kw, src[kw].value)
    dst.StudyInstanceUID = src.StudyInstanceUID
    for kw in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(dst, kw, src.get(kw, ""))
    if "StudyDescription" in src:
        dst.StudyDescription = src.StudyDescription
    carry_deidentification(dst, src)


#: What a de-identified source says about it (Patient module), carried over as it is.
_DEIDENTIFICATION = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


def carry_deidentification(dst: Dataset, src: Dataset) -> None:
    """The source's de-identification attributes on ``dst``. A source that says PatientIdentityRemoved YES
    without naming the method (Type 1C) gets a method text saying so, so that the output stays valid."""
    for kw in _DEIDENTIFICATION:
        if kw in src:
            dst[kw] = copy.deepcopy(src[kw])
    removed = str(dst.get("PatientIdentityRemoved", "")).upper() == "YES"
    if removed and "DeidentificationMethod" not in dst and "DeidentificationMethodCodeSequence" not in dst:
        dst.DeidentificationMethod = "de-identified upstream; method not recorded in the source"


def now_da_tm() -> tuple[str, str]:
    """The current local date and time as DICOM DA and TM strings."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def write_dicom(ds: Dataset, path: str | Path) -> Path:
    """Write a DICOM object (SEG, RTSTRUCT, SR) to ``path`` atomically, as a DICOM file; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
