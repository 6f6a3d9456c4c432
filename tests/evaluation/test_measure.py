"""Lesion measurements against analytic shapes, size categories, file output and the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from lungtumor.cli import main
from lungtumor.evaluation.measure import measure_files, measure_lesions, size_category_ajcc8, write_lesions
from lungtumor.imaging.io import read_mask, write_volume
from lungtumor.imaging.volume import Volume

SPACING = (0.7, 0.7, 2.5)  # (x, y, z) mm


def best_slice_factor(shape, c_mm, offset_z=0.0, sz=SPACING[2]):
    """Scale of the largest analytic cross-section on an actual slice centre (slices need not hit the equator)."""
    cz = (shape[0] - 1) / 2 + offset_z
    dz = np.min(np.abs(np.arange(shape[0]) - cz)) * sz
    return math.sqrt(1 - (dz / c_mm) ** 2)


def ellipsoid(axes_xyz_mm, shape=(32, 110, 110), spacing=SPACING, centre_offset_vox=(0.0, 0.0, 0.0)):
    """Voxelised ellipsoid (voxel in iff its centre is inside); array (z, y, x)."""
    z, y, x = np.indices(shape, dtype=float)
    cz, cy, cx = ((s - 1) / 2 + o for s, o in zip(shape, centre_offset_vox, strict=True))
    a, b, c = axes_xyz_mm
    r = ((x - cx) * spacing[0] / a) ** 2 + ((y - cy) * spacing[1] / b) ** 2 + ((z - cz) * spacing[2] / c) ** 2
    return (r <= 1).astype(np.uint8)


@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (0.0, 0.3, -0.2), (0.0, -0.45, 0.17)])
def test_sphere_matches_analytic_volume_and_diameters(offset):
    r = 14.0
    m = ellipsoid((r, r, r), centre_offset_vox=offset)
    les = measure_lesions(Volume(m, spacing=SPACING))
    assert len(les) == 1
    (s,) = les
    f = best_slice_factor(m.shape, r, offset[0])
    assert s.volume_ml == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.02)
    assert s.long_axis_mm == pytest.approx(2 * r * f, rel=0.02)
    assert s.short_axis_mm == pytest.approx(2 * r * f, rel=0.02)
    assert s.diameter_3d_mm == pytest.approx(2 * r, rel=0.02)
    assert s.slice_first <= s.long_axis_slice <= s.slice_last
    assert s.size_category_ajcc8_T == "T1c"


@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (0.0, 0.25, 0.4)])
def test_ellipsoid_anisotropic_spacing(offset):
    a, b, c = 20.0, 12.0, 14.0  # semi-axes x, y, z in mm
    vol = Volume(ellipsoid((a, b, c), centre_offset_vox=offset), spacing=SPACING, origin=(-10.0, 5.0, 100.0))
    (s,) = measure_lesions(vol)
    f = best_slice_factor(vol.shape, c, offset[0])
    assert s.volume_ml == pytest.approx(4 / 3 * math.pi * a * b * c / 1000, rel=0.02)
    assert s.long_axis_mm == pytest.approx(2 * a * f, rel=0.02)
    assert s.short_axis_mm == pytest.approx(2 * b * f, rel=0.02)
    assert s.diameter_3d_mm == pytest.approx(2 * a, rel=0.02)
    # centroid in world mm: origin + index * spacing (identity direction)
    cz, cy, cx = ((n - 1) / 2 + o for n, o in zip(vol.shape, offset, strict=True))
    expect = np.array([-10.0 + cx * 0.7, 5.0 + cy * 0.7, 100.0 + cz * 2.5])
    assert np.allclose(s.centroid_world_mm, expect, atol=0.5)
    assert s.size_category_ajcc8_T == "T2a"  # 40 mm


def test_ellipsoid_long_in_z_gives_3d_diameter_along_z():
    (s,) = measure_lesions(Volume(ellipsoid((8.0, 8.0, 25.0), shape=(40, 40, 40)), spacing=SPACING))
    assert s.long_axis_mm == pytest.approx(16.0, rel=0.03)
    # z is sampled every 2.5 mm: within half a slice per end
    assert abs(s.diameter_3d_mm - 50.0) <= 2.5
    assert s.slice_last - s.slice_first + 1 == 20


def test_a_mask_stored_sagittally_is_measured_on_its_axial_slices():
    """The same ellipsoid stored with permuted and flipped array axes: the axial long/short axes, the slice
    range and the world centroid are those of the axial storage."""
    import SimpleITK as sitk

    vol = Volume(ellipsoid((20.0, 12.0, 14.0)), spacing=SPACING, origin=(-10.0, 5.0, 100.0))
    (ref,) = measure_lesions(vol)
    img = sitk.Flip(sitk.PermuteAxes(vol.to_sitk(), (2, 0, 1)), (True, False, True))
    (got,) = measure_lesions(Volume.from_sitk(img))
    assert got.long_axis_mm == pytest.approx(ref.long_axis_mm) and got.short_axis_mm == pytest.approx(
        ref.short_axis_mm
    )
    assert (got.slice_first, got.slice_last, got.long_axis_slice) == (
        ref.slice_first, ref.slice_last, ref.long_axis_slice,
    )  # fmt: skip
    assert np.allclose(got.centroid_world_mm, ref.centroid_world_mm, atol=1e-6)


def test_two_blobs_are_two_lesions_sorted_by_volume():
    m = np.zeros((20, 60, 60), np.uint8)
    m[2:6, 5:15, 5:15] = 1
    m[10:18, 30:50, 30:50] = 1
    les = measure_lesions(Volume(m, spacing=(1.0, 1.0, 2.0)))
    assert [x.label for x in les] == [1, 2]
    assert les[0].voxels == 8 * 20 * 20 and les[1].voxels == 4 * 10 * 10
    assert les[0].volume_ml == pytest.approx(8 * 400 * 2 / 1000)
    assert (les[0].slice_first, les[0].slice_last) == (10, 17)


def test_lesions_far_inside_a_large_volume_measure_the_same():
    """Labels are built on the mask's bounding box only: padding the volume shifts indices and nothing else."""
    m = np.zeros((20, 60, 60), np.uint8)
    m[2:6, 5:15, 5:15] = 1
    m[10:18, 30:50, 30:50] = 1
    m[3:15, 52:58, 20:23] = 1  # a third lesion, 216 voxels
    pad = (7, 33, 41)
    big = np.pad(m, [(p, p + 5) for p in pad])
    sp = (0.8, 0.9, 2.5)
    small, large = measure_lesions(Volume(m, spacing=sp)), measure_lesions(Volume(big, spacing=sp))
    assert [x.voxels for x in large] == [3200, 400, 216]
    for a, b in zip(small, large, strict=True):
        for field in ("voxels", "volume_ml", "long_axis_mm", "short_axis_mm", "diameter_3d_mm"):
            assert getattr(b, field) == getattr(a, field)
        assert (b.slice_first, b.slice_last, b.long_axis_slice) == tuple(
            v + pad[0] for v in (a.slice_first, a.slice_last, a.long_axis_slice)
        )
        assert np.allclose(np.subtract(b.centroid_index_zyx, a.centroid_index_zyx), pad)


def test_diagonal_touch_is_one_lesion_26_connectivity():
    m = np.zeros((4, 8, 8), np.uint8)
    m[1, 2, 2] = 1
    m[2, 3, 3] = 1
    assert len(measure_lesions(Volume(m))) == 1


def test_empty_mask_has_no_lesions(tmp_path):
    vol = Volume(np.zeros((3, 5, 5), np.uint8))
    assert measure_lesions(vol) == []
    j, c = write_lesions([], "empty", tmp_path)
    assert json.loads(j.read_text())["totals"]["n_lesions"] == 0
    assert len(c.read_text().splitlines()) == 1  # header only


def test_single_voxel_has_positive_size():
    m = np.zeros((3, 5, 5), np.uint8)
    m[1, 2, 2] = 1
    (s,) = measure_lesions(Volume(m, spacing=(0.8, 0.8, 3.0)))
    assert s.long_axis_mm == pytest.approx(0.8) and s.diameter_3d_mm == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("mm", "cat"),
    [(0.0, "T1a"), (10.0, "T1a"), (10.01, "T1b"), (20.0, "T1b"), (25, "T1c"), (30.0, "T1c"), (30.5, "T2a"),
     (40.0, "T2a"), (45, "T2b"), (50.0, "T2b"), (50.1, "T3"), (70.0, "T3"), (70.01, "T4"), (150, "T4")],
)  # fmt: skip
def test_size_category_thresholds(mm, cat):
    assert size_category_ajcc8(mm) == cat


def test_size_category_rejects_nan():
    with pytest.raises(ValueError):
        size_category_ajcc8(float("nan"))


def test_write_and_cli(tmp_path, capsys):
    m = ellipsoid((6.0, 6.0, 6.0), shape=(12, 30, 30))
    p = write_volume(Volume(m, spacing=SPACING), tmp_path / "case1.nii.gz")
    lines = list(measure_files([p], tmp_path / "out"))
    assert len(lines) == 1 and lines[0].startswith("case1: 1 lesion(s)")
    doc = json.loads((tmp_path / "out" / "case1_lesions.json").read_text())
    assert doc["units"]["volume_ml"] == "mL"
    assert doc["totals"]["n_lesions"] == 1
    assert "not a stage" in doc["definitions"]["size_category_ajcc8_T"]
    assert doc["lesions"][0]["size_category_ajcc8_T"] == "T1b"
    rows = list(csv.DictReader((tmp_path / "out" / "case1_lesions.csv").open()))
    assert rows[0]["case"] == "case1" and float(rows[0]["volume_ml"]) == pytest.approx(
        doc["lesions"][0]["volume_ml"]
    )
    assert main(["measure", str(p), "--out", str(tmp_path / "cli")]) == 0
    assert "case1: 1 lesion(s)" in capsys.readouterr().out


def test_cli_bad_mask_exits_2(tmp_path, capsys):
    p = write_volume(Volume(np.full((3, 4, 4), 3, np.uint8)), tmp_path / "bad.nii.gz")
    assert main(["measure", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.nii.gz" in err and len(err.splitlines()) == 1


@pytest.mark.realdata
def test_real_label_volume(realdata):
    vol = read_mask(realdata / "pyradiomics" / "lung2_label.nrrd")
    les = measure_lesions(vol)
    assert sum(x.volume_ml for x in les) == pytest.approx(48.43, abs=0.01)
    big = les[0]
    assert big.long_axis_mm >= big.short_axis_mm > 0
    assert big.diameter_3d_mm >= big.long_axis_mm


@pytest.mark.parametrize("r_mm", [3.0, 7.7, 14.0, 20.3])
def test_short_axis_never_exceeds_long_axis_on_pixel_centred_discs(r_mm):
    # a disc centred on a pixel centre: its perpendicular run is n pixels, its centre Feret n - 1 (+ half)
    sp = (0.7, 0.7, 1.25)
    n = int(2 * r_mm / sp[0]) + 7
    y, x = np.indices((n, n), dtype=float) - (n - 1) / 2
    disc = ((x * sp[0]) ** 2 + (y * sp[1]) ** 2 <= r_mm**2).astype(np.uint8)
    m = np.stack([np.zeros_like(disc), disc, disc, np.zeros_like(disc)])
    (s,) = measure_lesions(Volume(m, spacing=sp))
    assert s.short_axis_mm <= s.long_axis_mm
    assert s.long_axis_mm == pytest.approx(2 * r_mm, abs=sp[0])
    assert s.short_axis_mm == pytest.approx(2 * r_mm, abs=sp[0])


def test_cli_measures_folders_and_goes_on_past_a_bad_mask(tmp_path, capsys):
    m = ellipsoid((6.0, 6.0, 6.0), shape=(12, 30, 30))
    pred = tmp_path / "pred"  # a predict output folder: its *_tumour masks, not its probability maps
    pred.mkdir()
    write_volume(Volume(m, spacing=SPACING), pred / "a_tumour.nii.gz")
    write_volume(Volume(m.astype(np.float32) * 0.7, spacing=SPACING), pred / "a_prob.nii.gz")
    (pred / "a_lesions.json").write_text("{}")
    labels = tmp_path / "labels"  # a folder of labels: every image in it
    labels.mkdir()
    write_volume(Volume(m, spacing=SPACING), labels / "b.nii.gz")
    bad = write_volume(Volume(np.full((3, 4, 4), 3, np.uint8)), tmp_path / "bad.nii.gz")
    out = tmp_path / "out"
    assert main(["measure", str(pred), str(bad), str(labels), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert "a_tumour: 1 lesion(s)" in cap.out and "b: 1 lesion(s)" in cap.out
    assert (out / "a_tumour_lesions.json").exists() and (out / "b_lesions.json").exists()
    assert not (out / "a_prob_lesions.json").exists()
    errs = cap.err.strip().splitlines()
    assert errs[0].startswith("error:") and "bad.nii.gz" in errs[0]
    assert errs[-1] == "error: 1 of 3 masks failed; the other 2 were measured"


def test_cli_bad_masks_alone_leave_no_output_folder(tmp_path, capsys):
    bad = write_volume(Volume(np.full((3, 4, 4), 3, np.uint8)), tmp_path / "bad.nii.gz")
    assert main(["measure", str(bad), str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and "bad.nii.gz" in errs[0] and "missing.nii.gz" in errs[1]
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["measure", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "folder holds no mask files" in capsys.readouterr().err


def test_cli_label_picks_the_tumour_of_a_multi_label_mask(tmp_path, capsys):
    small = ellipsoid((4.0, 4.0, 4.0), shape=(12, 30, 30))
    ml = small * 2  # label 2: the tumour (e.g. the GTV of an RTSTRUCT label map)
    ml[0, :3, :3] = 1  # label 1: another structure, in a corner
    p = write_volume(Volume(ml, spacing=SPACING), tmp_path / "ml.nii.gz")
    assert main(["measure", str(p), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "values {0, 1, 2}" in err and "with --label N" in err
    assert main(["measure", str(p), "-o", str(tmp_path / "o"), "--label", "2"]) == 0
    assert "ml: 1 lesion(s)" in capsys.readouterr().out
    doc = json.loads((tmp_path / "o" / "ml_lesions.json").read_text())
    ref = measure_lesions(Volume(small, spacing=SPACING))
    assert doc["totals"]["n_lesions"] == 1
    assert doc["lesions"][0]["volume_ml"] == pytest.approx(ref[0].volume_ml)
    assert main(["measure", str(p), "-o", str(tmp_path / "o"), "--label", "0"]) == 2
    assert "--label: must be a label value of 1 or more" in capsys.readouterr().err


def test_cli_two_masks_with_one_name_do_not_overwrite_each_other(tmp_path, capsys):
    one = ellipsoid((4.0, 4.0, 4.0), shape=(12, 30, 30))
    two = ellipsoid((6.0, 6.0, 6.0), shape=(12, 30, 30))
    for folder, m in (("site_a", one), ("site_b", two)):
        (tmp_path / folder).mkdir()
        write_volume(Volume(m, spacing=SPACING), tmp_path / folder / "case.nii.gz")
    out = tmp_path / "o"
    argv = ["measure", str(tmp_path / "site_a" / "case.nii.gz"), str(tmp_path / "site_b"), "-o", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.glob("*.json")) == [
        "case_site_a_lesions.json",
        "case_site_b_lesions.json",
    ]
    vols = [
        json.loads((out / f"case_site_{s}_lesions.json").read_text())["totals"]["total_volume_ml"]
        for s in "ab"
    ]
    assert vols[0] < vols[1]
    assert main(argv) == 0  # deterministic: the same names again
    assert len(list(out.glob("*.json"))) == 2
    capsys.readouterr()
