"""Reading and writing Volumes: NIfTI, NRRD, MHA and DICOM series with their geometry; masks; size and header checks. Bad files raise InputError naming the file and the problem."""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungtumor.core.errors import InputError, atomic_path
from lungtumor.imaging.orientation import to_canonical
from lungtumor.imaging.volume import Volume, fmt

#: File endings we read as single-file images.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


#: The largest voxel array :func:`read_volume` loads, in bytes (a 512x512x1000 int16 CT is 0.5 GB). The
#: budget is also capped at half of the memory available now (reading holds the voxels twice).
MAX_VOLUME_BYTES = 16 << 30


def case_name(path: str | os.PathLike) -> str:
    """The case name of an image path: the file name without its image suffix, or the folder name."""
    p = Path(path)
    name = p.name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def is_image_path(path: str | os.PathLike) -> bool:
    """True for a file whose name ends in one of :data:`IMAGE_SUFFIXES`."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _check_geometry(path: Path, vol: Volume) -> None:
    """Validate what every reader returns; raise InputError naming ``path``."""
    if any(not np.isfinite(s) or s <= 0 for s in vol.spacing):
        raise InputError(path, f"invalid voxel spacing {fmt(vol.spacing)} mm (must be > 0)")
    if any(s > 50 for s in vol.spacing):
        raise InputError(path, f"implausible voxel spacing {fmt(vol.spacing)} mm (over 50 mm)")
    d = np.asarray(vol.direction).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise InputError(
            path, "direction matrix is not orthonormal (sheared or scaled axes are not supported)"
        )
    if not np.all(np.isfinite(vol.origin)):
        raise InputError(path, "origin is not finite")


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``, else free pages), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> int:
    """The most bytes of voxels :func:`read_volume` will load: :data:`MAX_VOLUME_BYTES`, or less when the
    machine has less than twice that available."""
    avail = _available_memory()
    return MAX_VOLUME_BYTES if avail is None else max(1 << 20, min(MAX_VOLUME_BYTES, avail // 2))


def _pixel_bytes(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type (8 when unknown: the safe over-estimate)."""

    sizes = {}
    for names, n in (
        (("UInt8", "Int8", "VectorUInt8", "VectorInt8", "LabelUInt8"), 1),
        (("UInt16", "Int16", "VectorUInt16", "VectorInt16", "LabelUInt16"), 2),
        (("UInt32", "Int32", "Float32", "VectorUInt32", "VectorInt32", "VectorFloat32", "LabelUInt32"), 4),
        (("ComplexFloat32",), 8),
    ):
        for name in names:
            v = getattr(sitk, "sitk" + name, None)
            if isinstance(v, int) and v >= 0:
                sizes[v] = n
    return sizes.get(pixel_id, 8)


def _check_size(path: Path, size: tuple[int, ...], nbytes: int, budget: int | None) -> None:
    """Refuse, before any voxel is read, an image whose header promises more voxels than fit the budget."""
    budget = memory_budget() if budget is None else budget
    if nbytes > budget:
        dims = "x".join(str(int(s)) for s in size)
        raise InputError(
            path,
            f"image header claims {dims} voxels ({nbytes / 2**30:.3g} GiB), more than the memory budget of "
            f"{budget / 2**30:.3g} GiB; refusing to read it (corrupt header, or crop/downsample the image)",
        )


def _check_header_geometry(path: Path, spacing, origin, direction, dim: int) -> None:
    """The geometry checks of :func:`_check_geometry`, on header values (before voxels are read)."""
    n = min(dim, 3)
    sp = tuple(float(v) for v in spacing[:n])
    org = tuple(float(v) for v in origin[:n])
    d = np.asarray(direction, dtype=float).reshape(dim, dim)[:n, :n]
    if n == 3:
        _check_geometry(path, Volume(np.zeros((1, 1, 1), np.uint8), sp, org, tuple(d.ravel())))


def _read_dicom_series(path: Path, budget: int | None = None) -> Volume:
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(path))
    except RuntimeError:
        series = ()
    if not series:
        if not any(path.iterdir()):
            raise InputError(path, "folder is empty (expected one DICOM series)")
        raise InputError(path, "folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(path, f"folder holds {len(series)} DICOM series; put each series in its own folder")
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    if len(files) < 2:
        raise InputError(path, "DICOM series has a single slice; a 3D CT needs at least 2")
    try:
        first = sitk.ImageFileReader()
        first.SetFileName(files[0])
        first.ReadImageInformation()
        sx, sy = first.GetSize()[:2]
        nbytes = sx * sy * len(files) * first.GetNumberOfComponents() * _pixel_bytes(first.GetPixelID())
    except RuntimeError as e:
        raise InputError(files[0], f"cannot read DICOM header ({_first_line(e)})") from None
    _check_size(path, (sx, sy, len(files)), nbytes, budget)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise InputError(path, f"cannot read DICOM series ({_first_line(e)})") from None
    # Missing slices: slice positions must be evenly spaced.
    try:
        pos = [float(reader.GetMetaData(i, "0020|0032").split("\\")[2]) for i in range(len(files))]
        gaps = np.diff(sorted(pos))
        if len(gaps) and (gaps.max() > 1.5 * np.median(gaps) + 1e-3):
            raise InputError(
                path, f"DICOM series has a gap of {gaps.max():.2f} mm between slices (missing slice?)"
            )
    except (RuntimeError, IndexError, ValueError):
        pass
    meta = {}
    for tag, name in (
        ("0008|0060", "Modality"),
        ("0008|0070", "Manufacturer"),
        ("0018|0050", "SliceThickness"),
        ("0018|0060", "KVP"),
        ("0008|103e", "SeriesDescription"),
        ("0020|000e", "SeriesInstanceUID"),
        ("0008|0020", "StudyDate"),
    ):
        if reader.HasMetaDataKey(0, tag):
            meta[name] = reader.GetMetaData(0, tag).strip()
    return Volume.from_sitk(img, meta)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # SimpleITK errors are multi-line ("Exception thrown in ...: file.cxx:99:", then "sitk::ERROR: why" or
    # "ITK ERROR: Image(0x...): why"); the last meaningful line is the most specific.
    for ln in reversed(lines):
        ln = re.sub(r"^(sitk::ERROR:|ITK ERROR:)\s*([A-Za-z]+\(0x[0-9a-fA-F]+\):\s*)?", "", ln).strip()
        if ln and not ln.startswith(("Exception thrown in", "sitk::", "itk::")) and not ln.endswith(".cxx:"):
            return ln[:200]
    return lines[-1][:200] if lines else type(e).__name__


def _diagnose_unreadable(path: Path) -> str:
    """Why ITK found no reader for ``path``: not gzip, truncated or corrupt compression, no NIfTI header."""

    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with open(path, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    return "not gzip-compressed although the name ends in .gz (not a NIfTI image?)"
            head = b""
            with gzip.open(path, "rb") as f:
                head = f.read(352)
                while f.read(1 << 24):
                    pass
        else:
            with open(path, "rb") as f:
                head = f.read(352)
    except EOFError:
        return "file is truncated (the compressed data ends early)"
    except (gzip.BadGzipFile, zlib.error) as e:
        return f"compressed data is corrupt ({e})"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if name.endswith((".nii", ".nii.gz")):
        if len(head) < 348 or 348 not in (
            int.from_bytes(head[:4], "little"),
            int.from_bytes(head[:4], "big"),
        ):
            if 540 not in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")):
                return "not a NIfTI image (no NIfTI header)"
        return "NIfTI header is corrupt or unsupported"
    return "not a readable image: unrecognised or corrupt header"


def read_volume(
    path: str | os.PathLike, *, allow_2d: bool = False, memory_budget: int | None = None
) -> Volume:
    """Read a CT or mask: NIfTI, NRRD, MHA/MHD, or a folder holding one DICOM series.

    The header is checked first (dimensions, pixel type, geometry, and size against ``memory_budget``
    bytes, default :func:`memory_budget`), so a corrupt or huge file is refused before voxels are read.

    Returns:
        Volume with array (z, y, x) and geometry in (x, y, z) mm.

    Raises:
        InputError: missing, unreadable, corrupt, not 3D, too large, non-finite voxels, or bad geometry.
    """

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings are multi-line prints on stderr
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as e:
        raise InputError(p, f"cannot access ({getattr(e, 'strerror', None) or e})") from None
    if not exists:
        raise InputError(p, "no such file or folder")
    if is_dir:
        vol = _read_dicom_series(p, memory_budget)
    else:
        if p.stat().st_size == 0:
            raise InputError(p, "file is empty (0 bytes)")
        if not is_image_path(p) and not p.name.lower().endswith(".dcm"):
            raise InputError(
                p, f"unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder"
            )
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            dim = reader.GetDimension()
            ncomp = reader.GetNumberOfComponents()
            size = reader.GetSize()
            pixel_id = reader.GetPixelID()
            header_geometry = (reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
        except RuntimeError as e:
            why = _first_line(e)
            if "Unable to determine ImageIO reader" in why:
                raise InputError(p, _diagnose_unreadable(p)) from None
            raise InputError(p, f"cannot read image header ({why})") from None
        if dim == 4 and size[3] == 1:
            pass  # a trailing singleton 4th axis is common in NIfTI; squeeze it below
        elif dim != 3:
            raise InputError(p, f"image is {dim}D with size {size}; a 3D volume is required")
        if ncomp != 1:
            raise InputError(p, f"image has {ncomp} components per voxel; a scalar image is required")
        nvox = int(np.prod([int(s) for s in size], dtype=object))
        _check_size(p, size, nvox * ncomp * _pixel_bytes(pixel_id), memory_budget)
        _check_header_geometry(p, *header_geometry, dim)
        if p.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_length(p)  # ITK pads a truncated NIfTI with zeros without an error
        try:
            img = reader.Execute()
        except RuntimeError as e:
            raise InputError(
                p, f"cannot read voxel data, file is corrupt or truncated ({_first_line(e)})"
            ) from None
        if dim == 4:
            img = img[:, :, :, 0]
        vol = Volume.from_sitk(img)
    if min(vol.shape) < 1 or (not allow_2d and vol.shape[0] < 2):
        raise InputError(p, f"volume has shape {vol.shape} (z,y,x); at least 2 slices are required")
    _check_geometry(p, vol)
    if vol.array.dtype.kind == "f":
        n = int(np.count_nonzero(~np.isfinite(vol.array)))
        if n == 0 and p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")):
            n = _nifti_nonfinite(p)  # ITK's NIfTI reader silently turns NaN and inf into 0
        if n:
            raise InputError(p, f"image holds {n} NaN or infinite voxels")
    return vol


def _nifti_header(f) -> tuple[str, int, int, int, tuple[float, ...]] | None:
    """(endian, datatype, vox_offset, data bytes, pixdim[1:4]) of a NIfTI-1 header read from ``f``; None if
    not NIfTI-1."""
    hdr = f.read(352)
    if len(hdr) < 348:
        return None
    if int.from_bytes(hdr[:4], "little") == 348:
        endian = "<"
    elif int.from_bytes(hdr[:4], "big") == 348:
        endian = ">"
    else:
        return None
    dim = np.frombuffer(hdr[40:56], endian + "i2")
    datatype = int(np.frombuffer(hdr[70:72], endian + "i2")[0])
    bitpix = int(np.frombuffer(hdr[72:74], endian + "i2")[0])
    offset = float(np.frombuffer(hdr[108:112], endian + "f4")[0])
    vox_offset = max(348, int(offset)) if np.isfinite(offset) and offset < 2**62 else 348
    pixdim = tuple(float(v) for v in np.frombuffer(hdr[80:92], endian + "f4"))
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        return None
    nvox = 1
    for d in dim[1 : ndim + 1]:
        nvox *= max(1, int(d))
    return endian, datatype, vox_offset, nvox * max(0, bitpix) // 8, pixdim


def _check_nifti_length(path: Path) -> None:
    """Raise InputError when a NIfTI-1 file holds fewer bytes than its header promises.

    For .nii.gz the gzip trailer (uncompressed size mod 2**32) is compared first, which costs nothing;
    only when it disagrees (truncated, multi-member or trailing data) is the stream decompressed to count.
    """

    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            info = _nifti_header(f)
        if info is None:
            return
        if any(v == 0 or not np.isfinite(v) for v in info[4]):
            sp = ", ".join(f"{v:g}" for v in info[4])
            raise InputError(
                path, f"invalid voxel spacing ({sp}) mm in the NIfTI header (pixdim must be > 0)"
            )
        need = info[2] + info[3]
        if not gz:
            have = path.stat().st_size
        else:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                if int.from_bytes(f.read(4), "little") == need % (1 << 32):
                    return
            have = 0
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    have += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error):
        raise InputError(path, "file is truncated or corrupt (the compressed data ends early)") from None
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from None
    if have < need:
        raise InputError(path, f"file is truncated: {have} of {need} bytes of image data present")


def _nifti_nonfinite(path: Path) -> int:
    """Count NaN/inf voxels in a float NIfTI-1 file's raw data (0 for other data types or NIfTI-2)."""

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            info = _nifti_header(f)
            if info is None:
                return 0
            endian, datatype, vox_offset, _, _ = info
            dtype = {16: np.dtype(endian + "f4"), 64: np.dtype(endian + "f8")}.get(datatype)
            if dtype is None:
                return 0
            f.read(max(0, vox_offset - 352))
            n = 0
            while chunk := f.read(1 << 24):
                a = np.frombuffer(chunk[: len(chunk) // dtype.itemsize * dtype.itemsize], dtype)
                n += int(a.size - np.count_nonzero(np.isfinite(a)))
            return n
    except (OSError, EOFError, ValueError):
        return 0


def read_mask(
    path: str | os.PathLike,
    reference: Volume | None = None,
    *,
    label: int | None = None,
    label_option: str | None = None,
) -> Volume:
    """Read a binary label volume and check it is {0, 1} and (optionally) on ``reference``'s grid.

    ``label``: the mask is multi-label (a TotalSegmentator ``--ml`` file, an RTSTRUCT-derived label map) and
    the voxels equal to ``label`` are the tumour; the other values are background. ``label_option``: the error for
    a multi-label mask without ``label`` suggests it (``"--label"``: commands that have such an option).

    Returns:
        Volume with a uint8 array of 0/1.

    Raises:
        InputError: unreadable, not binary (without ``label``), a ``label`` below 1, or off ``reference``'s grid.
    """
    if label is not None and label < 1:
        raise InputError(label_option or "--label", f"must be a label value of 1 or more, got {label}")
    vol = read_volume(path)
    a = vol.array
    if label is not None:
        a = (a == label).view(np.uint8)
        vol = vol.with_array(a)
    # min/max first: a full np.unique (a sort) costs ~20x more and is only needed for the message.
    binary = a.min() >= 0 and a.max() <= 1 and (a.dtype.kind != "f" or bool(np.all((a == 0) | (a == 1))))
    if not binary:
        vals = np.unique(a)
        kind = "non-binary values" if a.dtype.kind == "f" else "values"
        integral = bool(np.all(vals == np.round(vals))) and vals.min() >= 0
        hint = (
            f" (a multi-label mask: choose the tumour's label with {label_option} N)"
            if label_option and integral
            else ""
        )
        raise InputError(path, f"label has {kind} {_list_values(vals)}; expected 0 and 1{hint}")
    if reference is not None:
        why = reference.grid_mismatch(vol)
        if why:
            same = _in_reference_order(vol, reference)
            if same is None:
                raise InputError(path, f"label is not on the image grid: {why}")
            a = same.array  # the same grid stored in another array order: reordered to the reference's
            vol = same
    return vol.with_array(a.astype(np.uint8, copy=False))


def _in_reference_order(vol: Volume, reference: Volume) -> Volume | None:
    """``vol`` reordered (axis flips and permutations) into ``reference``'s array order when both describe the
    same grid, else None."""

    grid = np.broadcast_to(np.zeros((), bool), reference.shape)  # the reference's geometry, no voxels
    ref_c, ref_ro = to_canonical(Volume(grid, reference.spacing, reference.origin, reference.direction))
    vol_c, vol_ro = to_canonical(vol)
    if ref_ro == vol_ro or ref_c.grid_mismatch(vol_c) is not None:
        return None
    a = np.ascontiguousarray(ref_ro.restore(vol_c.array))
    return Volume(a, reference.spacing, reference.origin, reference.direction, meta=dict(vol.meta))


def _list_values(vals: np.ndarray, k: int = 6) -> str:
    s = ", ".join(f"{v:g}" for v in vals[:k])
    return "{" + s + (", ..." if len(vals) > k else "") + "}"


def write_volume(vol: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``vol`` with its geometry (NIfTI, NRRD or MHA by suffix), atomically.

    Raises:
        InputError: the target folder cannot be written.
    """

    p = Path(path)
    if not is_image_path(p):
        raise InputError(p, f"unsupported output type; use one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        with atomic_path(p) as tmp:
            sitk.WriteImage(vol.to_sitk(), str(tmp), useCompression=compress)
    except (OSError, RuntimeError) as e:
        raise InputError(p, f"cannot write image ({_first_line(e)})") from None
    return p
