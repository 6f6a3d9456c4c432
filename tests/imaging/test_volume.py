"""Reading and writing volumes: round trips with full geometry, DICOM series, real-data facts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lungtumor.core.errors import InputError
from lungtumor.imaging.io import read_mask, read_volume, write_volume
from lungtumor.imaging.volume import Volume


def _rotation(deg_z: float, deg_x: float) -> tuple[float, ...]:
    cz, sz = math.cos(math.radians(deg_z)), math.sin(math.radians(deg_z))
    cx, sx = math.cos(math.radians(deg_x)), math.sin(math.radians(deg_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple((rz @ rx).ravel())


def _ct(shape=(7, 9, 11), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 2000, size=shape).astype(np.int16)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_roundtrip_keeps_voxels_and_geometry(tmp_path: Path, suffix: str) -> None:
    vol = Volume(
        _ct(), spacing=(0.71, 0.83, 2.5), origin=(-151.5, 22.25, -310.0), direction=_rotation(30, 10)
    )
    p = write_volume(vol, tmp_path / f"ct{suffix}")
    back = read_volume(p)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    assert back.same_grid(vol)
    # and again: a second round trip changes nothing
    back2 = read_volume(write_volume(back, tmp_path / f"ct2{suffix}"))
    np.testing.assert_array_equal(back2.array, vol.array)
    assert back2.same_grid(back, tol=1e-6)


def test_mask_roundtrip_and_values(tmp_path: Path) -> None:
    ref = Volume(_ct(), spacing=(0.7, 0.7, 3.0), origin=(1.0, 2.0, 3.0))
    m = np.zeros(ref.shape, np.uint8)
    m[2:4, 3:6, 4:8] = 1
    p = write_volume(ref.with_array(m), tmp_path / "m.nii.gz")
    back = read_mask(p, reference=ref)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, m)
    m[0, 0, 0] = 2
    p2 = write_volume(ref.with_array(m), tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match=r"bad\.nii\.gz: label has values \{0, 1, 2\}"):
        read_mask(p2)
    mf = m.astype(np.float32)
    mf[0, 0, 0] = 0.5
    p3 = write_volume(ref.with_array(mf), tmp_path / "badf.nii.gz")
    with pytest.raises(InputError, match="non-binary"):
        read_mask(p3)


def _write_dicom_series(
    folder: Path, hu: np.ndarray, spacing, origin, orientation, intercept=-1024.0
) -> None:
    """One file per slice with the tags a CT scanner writes; ITK stores (HU - intercept) / slope."""
    folder.mkdir(parents=True)
    row = np.array(orientation[:3])
    col = np.array(orientation[3:])
    normal = np.cross(row, col)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        sl = sitk.GetImageFromArray(hu[k])
        sl.SetSpacing((spacing[0], spacing[1]))  # the writer takes PixelSpacing from the image
        pos = np.asarray(origin) + k * spacing[2] * normal
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in orientation),
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}",
            "0018|0050": f"{spacing[2]:.4f}",
            "0028|1052": f"{intercept:g}",
            "0028|1053": "1",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_geometry(tmp_path: Path) -> None:
    hu = _ct((6, 8, 10), seed=3)
    spacing = (0.75, 0.75, 2.5)
    origin = (-120.0, -80.5, -300.25)
    _write_dicom_series(tmp_path / "series", hu, spacing, origin, (1, 0, 0, 0, 1, 0))
    vol = read_volume(tmp_path / "series")
    assert vol.shape == (6, 8, 10)
    np.testing.assert_allclose(vol.spacing, spacing, atol=1e-3)
    np.testing.assert_allclose(vol.origin, origin, atol=1e-3)
    np.testing.assert_allclose(vol.direction, np.eye(3).ravel(), atol=1e-6)
    np.testing.assert_array_equal(vol.array.astype(np.int32), hu.astype(np.int32))
    assert vol.meta.get("Modality") == "CT"


def test_dicom_series_oblique(tmp_path: Path) -> None:
    hu = _ct((5, 6, 7), seed=4)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    orient = (c, s, 0.0, -s, c, 0.0)
    _write_dicom_series(tmp_path / "obl", hu, (0.9, 0.9, 3.0), (10.0, 20.0, 30.0), orient)
    vol = read_volume(tmp_path / "obl")
    d = np.asarray(vol.direction).reshape(3, 3)
    np.testing.assert_allclose(d[:, 0], orient[:3], atol=1e-4)
    np.testing.assert_allclose(d[:, 1], orient[3:], atol=1e-4)
    np.testing.assert_allclose(vol.spacing, (0.9, 0.9, 3.0), atol=1e-3)
    np.testing.assert_array_equal(vol.array.astype(np.int32), hu.astype(np.int32))


# ----------------------------------------------------------------------------- real data


def _ml(mask: Volume) -> float:
    return float(np.count_nonzero(mask.array)) * mask.voxel_volume_mm3 / 1000.0


@pytest.mark.realdata
def test_pyradiomics_lung2(realdata: Path) -> None:
    img = read_volume(realdata / "pyradiomics" / "lung2_image.nrrd")
    assert img.shape == (61, 512, 512)
    np.testing.assert_allclose(img.spacing, (0.627, 0.627, 5.0), atol=1e-3)
    lab = read_mask(realdata / "pyradiomics" / "lung2_label.nrrd", reference=img)
    assert int(np.count_nonzero(lab.array)) == 24644
    assert _ml(lab) == pytest.approx(48.43, abs=0.01)


@pytest.mark.realdata
def test_nsclc_lung1_001(realdata: Path) -> None:
    d = realdata / "nsclc_radiomics_lung1_001"
    img = read_volume(d / "LUNG1-001_ct_crop.nii.gz")
    assert img.shape == (41, 235, 322)
    gtv = read_mask(d / "LUNG1-001_gtv1_crop.nii.gz", reference=img)
    assert int(np.count_nonzero(gtv.array)) == 54639
    assert _ml(gtv) == pytest.approx(156.3, abs=0.05)


@pytest.mark.realdata
def test_ibsi_phantom(realdata: Path) -> None:
    d = realdata / "ibsi_ct_phantom"
    img = read_volume(d / "phantom.nii.gz")
    assert img.shape == (60, 201, 204)
    mask = read_mask(d / "mask.nii.gz", reference=img)
    assert int(np.count_nonzero(mask.array)) == 125256


# ----------------------------------------------------------------------------- damage ITK would hide


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(tmp_path: Path, suffix: str) -> None:
    p = write_volume(Volume(_ct((8, 32, 32))), tmp_path / f"ct{suffix}")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"ct\.nii(\.gz)?: file is truncated"):
        read_volume(p)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_nan_in_float_image_is_refused(tmp_path: Path, suffix: str) -> None:
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    a[2, 2, 2] = np.inf
    p = write_volume(Volume(a), tmp_path / f"f{suffix}")
    with pytest.raises(InputError, match="holds 2 NaN or infinite voxels"):
        read_volume(p)


def test_label_stored_in_another_array_order_is_reordered_to_the_image(tmp_path: Path) -> None:
    """A label on the image's grid but stored flipped/permuted (another tool's writer) is read in the image's
    array order; a label on another grid is still refused."""
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(-1000, 500, (6, 8, 10)).astype(np.int16))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-50.0, 20.0, 100.0))
    lab = sitk.GetImageFromArray((rng.random((6, 8, 10)) > 0.7).astype(np.uint8))
    lab.CopyInformation(img)
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(
        sitk.Flip(sitk.PermuteAxes(lab, (1, 0, 2)), (True, False, True)), str(tmp_path / "lab.nrrd")
    )
    ct = read_volume(tmp_path / "ct.nii.gz")
    got = read_mask(tmp_path / "lab.nrrd", reference=ct)
    np.testing.assert_array_equal(got.array, sitk.GetArrayFromImage(lab))
    assert got.grid_mismatch(ct) is None and got.array.flags.c_contiguous
    shifted = sitk.Flip(lab, (True, False, False))
    shifted.SetOrigin((-40.0, 20.0, 100.0))  # flipped and moved: not the same grid
    sitk.WriteImage(shifted, str(tmp_path / "other.nrrd"))
    with pytest.raises(InputError, match="not on the image grid"):
        read_mask(tmp_path / "other.nrrd", reference=ct)
