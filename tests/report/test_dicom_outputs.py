"""DICOM outputs (SEG, RT Structure Set, measurement SR) from a synthetic series and a cropped real one.

The writers are called directly on a mask (no model): read back onto the source slices they give the mask
voxel for voxel; patient and study come over from the source, series and instance UIDs are new, the source
files are not changed, and ``dciodvfy`` (dicom3tools) reports no error where it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

hd = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'lungtumor[dicom]')")
pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'lungtumor[dicom]')")

from lt_dicom_data import crop_real_series, phantom_ct, tree_digest, write_ct_series  # noqa: E402

from lungtumor.core.errors import InputError  # noqa: E402
from lungtumor.evaluation.measure import lesion_labels, measure_lesions  # noqa: E402
from lungtumor.imaging.io import read_volume  # noqa: E402
from lungtumor.imaging.volume import Volume  # noqa: E402
from lungtumor.report.dicom_outputs import DICOM_OUTPUTS, write_dicom_outputs  # noqa: E402
from lungtumor.report.dicom_rtstruct import read_rtstruct_labels, slice_contours  # noqa: E402
from lungtumor.report.dicom_seg import read_seg_labels  # noqa: E402
from lungtumor.report.dicom_source import read_source_series  # noqa: E402

TYPES = tuple(DICOM_OUTPUTS)
PARAMS = {"model": "demo2d.ckpt", "threshold": "0.5"}


def _stored_mask(ct: Volume, mask_written: np.ndarray, hu_written: np.ndarray) -> Volume:
    """The mask on the grid the series was read into (SimpleITK may read the slices in reverse order)."""
    if np.array_equal(ct.array, hu_written):
        return ct.with_array(mask_written.copy())
    assert np.array_equal(ct.array, hu_written[::-1])
    return ct.with_array(mask_written[::-1].copy())


def _write(tmp: Path, series: Path, mask: Volume, name: str = "case") -> dict[str, Path]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    lesions = measure_lesions(mask)
    files = write_dicom_outputs(series, mask, lesions, out, name, TYPES, PARAMS, "lungtumor test")
    return dict(zip(TYPES, files, strict=True))


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of ``dciodvfy PATH``; skips the test where dicom3tools is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 64x64x12 CT series written head to feet (files in shuffled order), its mask and the outputs."""
    tmp = tmp_path_factory.mktemp("dicom")
    hu, mask = phantom_ct()
    ident = write_ct_series(tmp / "ct", hu, descending=True)
    before = tree_digest(tmp / "ct")
    ct = read_volume(tmp / "ct")
    stored = _stored_mask(ct, mask, hu)
    files = _write(tmp, tmp / "ct", stored)
    return {"tmp": tmp, "ident": ident, "before": before, "mask": stored, "files": files}


def test_seg_reads_back_onto_the_source_slices_voxel_for_voxel(synthetic):
    source = read_source_series(synthetic["tmp"] / "ct", synthetic["mask"])
    labels = read_seg_labels(synthetic["files"]["dicom-seg"], source)
    expected, n = lesion_labels(synthetic["mask"])
    assert n == 2
    assert np.array_equal(labels > 0, synthetic["mask"].array > 0)
    assert np.array_equal(labels, expected)  # segment n = lesion n of `lungtumor measure`


def test_seg_references_every_source_instance_and_codes_its_segments(synthetic):
    seg = hd.seg.segread(str(synthetic["files"]["dicom-seg"]))
    source = read_source_series(synthetic["tmp"] / "ct", synthetic["mask"])
    uids = {str(ds.SOPInstanceUID) for ds in source.datasets}
    refs = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert refs == uids
    assert seg.FrameOfReferenceUID == synthetic["ident"]["FrameOfReferenceUID"]
    assert seg.SegmentationType == "BINARY"
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "372087000"  # Neoplasm, Primary
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.AnatomicRegionSequence[0].CodeValue == "39607008"  # Lung
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "lungtumor" and algo.AlgorithmVersion
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion 1", "lesion 2"]


def test_rtstruct_has_one_roi_per_lesion_and_rasterises_to_the_mask(synthetic):
    source = read_source_series(synthetic["tmp"] / "ct", synthetic["mask"])
    rt = pydicom.dcmread(synthetic["files"]["rtstruct"])
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["lesion 1", "lesion 2"]
    uids = {str(ds.SOPInstanceUID) for ds in source.datasets}
    for item in rt.ROIContourSequence:
        for c in item.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            assert str(c.ContourImageSequence[0].ReferencedSOPInstanceUID) in uids
    expected, _ = lesion_labels(synthetic["mask"])
    assert np.array_equal(read_rtstruct_labels(synthetic["files"]["rtstruct"], source), expected)


def test_sr_holds_each_lesions_measurements_and_references_its_segment(synthetic):
    sr = pydicom.dcmread(synthetic["files"]["sr"])
    seg = pydicom.dcmread(synthetic["files"]["dicom-seg"])
    lesions = measure_lesions(synthetic["mask"])
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesions) == 2
    for n, (group, les) in enumerate(zip(groups, lesions, strict=True), start=1):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(ref.referenced_segment_numbers) == [n]
        assert group.tracking_identifier == f"lesion {n}"
        assert group.finding_type.value == "372087000"
        got = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert got["118565006"] == (pytest.approx(les.volume_ml, rel=1e-6), "ml")
        assert got["103339001"] == (pytest.approx(les.long_axis_mm, rel=1e-6), "mm")
        assert got["103340004"] == (pytest.approx(les.short_axis_mm, rel=1e-6), "mm")
        assert got["81827009"] == (pytest.approx(les.diameter_3d_mm, rel=1e-6), "mm")


def test_identity_carried_over_uids_new_source_untouched(synthetic):
    ident = synthetic["ident"]
    source = read_source_series(synthetic["tmp"] / "ct", synthetic["mask"])
    src_uids = {str(ds.SOPInstanceUID) for ds in source.datasets}
    series_uids = set()
    for f in synthetic["files"].values():
        ds = pydicom.dcmread(f)
        assert ds.PatientID == ident["PatientID"]
        assert ds.StudyInstanceUID == ident["StudyInstanceUID"]
        assert ds.SeriesInstanceUID != ident["SeriesInstanceUID"]
        assert str(ds.SOPInstanceUID) not in src_uids
        series_uids.add(str(ds.SeriesInstanceUID))
    assert len(series_uids) == 3
    assert tree_digest(synthetic["tmp"] / "ct") == synthetic["before"]


@pytest.mark.parametrize("kind", TYPES)
def test_dciodvfy_reports_no_error(synthetic, kind):
    assert dciodvfy_errors(synthetic["files"][kind]) == []


def test_empty_mask_gives_valid_files_saying_no_tumour(tmp_path, synthetic):
    series = synthetic["tmp"] / "ct"
    mask = synthetic["mask"].with_array(np.zeros_like(synthetic["mask"].array))
    files = _write(tmp_path, series, mask, "empty")
    source = read_source_series(series, mask)
    assert not read_seg_labels(files["dicom-seg"], source).any()
    assert not read_rtstruct_labels(files["rtstruct"], source).any()
    assert pydicom.dcmread(files["rtstruct"]).StructureSetROISequence[0].ROIName == "no tumour found"
    if shutil.which("dciodvfy"):
        for f in files.values():
            assert dciodvfy_errors(f) == [], f


def test_series_that_does_not_match_the_volume_is_refused(tmp_path, synthetic):
    vol = synthetic["mask"]
    shifted = Volume(vol.array, vol.spacing, (vol.origin[0] + 5.0, *vol.origin[1:]), vol.direction)
    with pytest.raises(InputError, match="ImagePositionPatient"):
        read_source_series(synthetic["tmp"] / "ct", shifted)
    fewer = Volume(vol.array[:-1], vol.spacing, vol.origin, vol.direction)
    with pytest.raises(InputError, match="DICOM images"):
        read_source_series(synthetic["tmp"] / "ct", fewer)


def test_slice_contours_pass_between_inside_and_outside_pixels():
    sl = np.zeros((6, 7), np.uint8)
    sl[1:5, 1:6] = 1
    sl[2, 3] = 0  # a hole: its own contour
    contours = slice_contours(sl)
    assert len(contours) == 2
    outer = max(contours, key=len)
    assert outer[:, 0].min() == pytest.approx(0.5) and outer[:, 0].max() == pytest.approx(5.5)
    assert outer[:, 1].min() == pytest.approx(0.5) and outer[:, 1].max() == pytest.approx(4.5)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent")  # the source's one-part name
def test_real_ct_series_round_trips(realdata, tmp_path):
    """10 real scanner slices of LUNG1-001 through its GTV, cropped to 120x120 with their real headers."""
    base = realdata / "nsclc_radiomics_lung1_001"
    if not (base / "dicom" / "image").is_dir():
        pytest.skip("the LUNG1-001 DICOM series is not in ../shared/realdata")
    z0, box = 70, (210, 330, 280, 400)
    crop_real_series(base / "dicom" / "image", tmp_path / "ct", z0, 10, box)
    before = tree_digest(tmp_path / "ct")
    ct = read_volume(tmp_path / "ct")
    gtv = read_volume(base / "LUNG1-001_gtv1_full.nii.gz").array  # (z, y, x) on the full grid, feet first
    y0, y1, x0, x1 = box
    mask = (gtv[z0 : z0 + 10, y0:y1, x0:x1] > 0).astype(np.uint8)
    assert mask.sum() > 10000 and ct.shape == mask.shape
    stored = ct.with_array(mask)  # the crop is read feet first, as the full grid
    files = _write(tmp_path, tmp_path / "ct", stored, "lung1")
    source = read_source_series(tmp_path / "ct", stored)
    assert np.array_equal(read_seg_labels(files["dicom-seg"], source) > 0, mask > 0)
    expected, _ = lesion_labels(stored)
    back = read_rtstruct_labels(files["rtstruct"], source)
    assert (back != expected).sum() == 0, (back != expected).sum()
    real = pydicom.dcmread(next((tmp_path / "ct").iterdir()), stop_before_pixels=True)
    for f in files.values():
        ds = pydicom.dcmread(f)
        assert ds.PatientID == real.PatientID and ds.StudyInstanceUID == real.StudyInstanceUID
        assert ds.SeriesInstanceUID != real.SeriesInstanceUID
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(f) == [], f
    assert tree_digest(tmp_path / "ct") == before
