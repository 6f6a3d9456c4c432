"""Component filters and lung gating on a synthetic chest, and the lung mask on a real CT."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungtumor.imaging.components import component_sizes, label_components, label_components_in_box
from lungtumor.imaging.lungs import lung_grid_step, lung_mask_from_hu, lung_z_range
from lungtumor.postprocessing.filters import (
    filter_components,
    remove_flat_components,
    remove_small_components,
)
from lungtumor.postprocessing.lung_gate import gate_to_lungs, gate_to_lungs_hu

SPACING = (0.8, 0.8, 2.5)  # (x, y, z) mm


def synthetic_chest(shape=(24, 128, 128)):
    """Air outside, an elliptic soft-tissue body, two dark lungs, a tumour in the left lung touching the
    chest wall, and a soft-tissue blob outside the lungs.

    Returns:
        (ct_hu, tumour mask, outside-blob mask, true lung region including the tumour's lung-side part).
    """
    z, y, x = np.indices(shape, dtype=float)
    ct = np.full(shape, -1000.0)
    body = ((x - 64) / 58) ** 2 + ((y - 64) / 44) ** 2 <= 1
    ct[body] = 40.0
    lung_l = ((x - 38) / 20) ** 2 + ((y - 62) / 30) ** 2 + ((z - 12) / 14) ** 2 <= 1
    lung_r = ((x - 90) / 20) ** 2 + ((y - 62) / 30) ** 2 + ((z - 12) / 14) ** 2 <= 1
    ct[lung_l | lung_r] = -850.0
    # juxtapleural tumour: centred on the lateral wall of the left lung, half inside the chest wall
    tumour = ((x - 19) / 7) ** 2 + ((y - 62) / 7) ** 2 + ((z - 12) / 3) ** 2 <= 1
    ct[tumour] = 35.0
    outside = ((x - 64) / 4) ** 2 + ((y - 100) / 4) ** 2 + ((z - 12) / 2) ** 2 <= 1  # anterior chest wall
    ct[outside] = 45.0
    return ct, tumour.astype(np.uint8), outside.astype(np.uint8), lung_l | lung_r


def test_lung_mask_and_gate_keep_juxtapleural_drop_outside():
    ct, tumour, outside, true_lung = synthetic_chest()
    lung = lung_mask_from_hu(ct, SPACING)
    assert lung.dtype == bool and lung.any()
    assert not lung[0, 0, 0]  # outside-body air removed
    # the 10 mm closing pulls much of the tumour's lung-side part into the mask (a ball rolling outside the
    # lung still dips into the rim of the dent, so not all of it); the gate only needs it to touch
    lung_side = (tumour > 0) & true_lung
    assert (lung & lung_side).sum() >= 0.5 * lung_side.sum()
    assert (lung & true_lung).sum() >= 0.97 * true_lung.sum()
    assert not (lung & (outside > 0)).any()
    gated = gate_to_lungs(tumour | outside, lung)
    assert gated.dtype == np.uint8
    assert np.array_equal(gated, tumour)


def test_lung_z_range_is_the_lungs_slices_plus_the_margin():
    ct, *_ = synthetic_chest()
    abdomen = np.full((30, *ct.shape[1:]), -1000.0)  # soft tissue below the lungs, air around the body
    abdomen[:, ct[12] > -900] = 40.0
    chest = np.concatenate([abdomen, ct, abdomen[:10]])  # the lungs' air on slices 30 .. 53
    assert lung_z_range(chest, SPACING, margin_mm=10.0) == (30 - 4, 54 + 4)  # 10 mm = 4 slices of 2.5 mm
    assert lung_z_range(chest, SPACING, margin_mm=1000.0) == (0, len(chest))
    assert lung_z_range(np.full((8, 64, 64), 40.0), SPACING) is None  # no lungs: None, not an empty range


def test_ball_test_matches_scipy_distance_transform_with_anisotropic_spacing():
    """The threaded float32 distance transform decides "within r mm" exactly as scipy's float64 one does,
    axes in the array's order, voxels on the ball's surface included."""
    from lungtumor.imaging.lungs import _edt_at_most

    rng = np.random.default_rng(3)
    a = ~ndi.binary_dilation(rng.random((30, 40, 50)) > 0.98, iterations=2)
    for sp in [(2.5, 0.8, 1.3), (1.0, 2.0, 3.0), (2.0, 2.0, 2.0)]:
        ref = ndi.distance_transform_edt(a, sampling=sp)
        for r in (2.0, 4.0, 5.0, 10.0):  # 2, 4 and 10 mm lie exactly on grid distances of (2, 2, 2) mm
            np.testing.assert_array_equal(_edt_at_most(a, sp, r), ref <= r)
    surface = np.ones((21, 21, 21), bool)
    surface[10, 10, 10] = False
    within = _edt_at_most(surface, (1.0, 1.0, 1.0), 5.0)
    assert within[10, 10, 15] and within[10, 13, 14] and not within[10, 10, 16]  # 5 = |(0, 3, 4)|


def test_gate_with_empty_lung_removes_everything():
    m = np.zeros((3, 8, 8), np.uint8)
    m[1, 2:4, 2:4] = 1
    assert gate_to_lungs(m, np.zeros(m.shape, bool)).sum() == 0
    with pytest.raises(ValueError):
        gate_to_lungs(m, np.zeros((3, 8, 7), bool))


def test_lung_mask_of_non_hu_image_is_empty():
    assert not lung_mask_from_hu(np.random.default_rng(0).random((4, 32, 32)), SPACING).any()


def test_remove_small_components_uses_mm3_with_anisotropic_spacing():
    m = np.zeros((10, 30, 30), np.uint8)
    m[1:3, 1:6, 1:6] = 1  # 50 voxels
    m[5:9, 10:20, 10:20] = 1  # 400 voxels
    spacing = (0.5, 0.5, 4.0)  # 1 mm³ per voxel
    assert remove_small_components(m, spacing, 49.0).sum() == 450
    assert remove_small_components(m, spacing, 51.0).sum() == 400
    assert remove_small_components(m, (0.5, 0.5, 2.0), 51.0).sum() == 400  # 0.5 mm³/voxel: 25 and 200 mm³
    assert remove_small_components(m, (0.5, 0.5, 2.0), 201.0).sum() == 0
    assert remove_small_components(m, spacing, 0).dtype == np.uint8


def _random_masks(rng, count=12):
    for t in range(count):
        shape = tuple(int(v) for v in rng.integers(3, 30, 3))
        if t % 3 == 0:
            yield (rng.random(shape) < 0.1).astype(np.uint8)
        else:
            yield (ndi.gaussian_filter(rng.random(shape), 1.0) > 0.56).astype(np.uint8)


def test_box_labelling_matches_full_volume_labelling():
    rng = np.random.default_rng(0)
    for m in _random_masks(rng):
        full, n_full = label_components(m)
        box, labels, n = label_components_in_box(m)
        assert n == n_full and labels.dtype == np.uint16
        if n == 0:
            continue
        assert np.array_equal(labels, full[box]) and full.sum() == full[box].sum()
        assert np.array_equal(component_sizes(labels, n)[1:], np.bincount(full.ravel(), minlength=n + 1)[1:])
        for min_mm3 in (0.0, 2.0, 9.0):  # the former full-volume filter
            keep = np.bincount(full.ravel()) * 0.5 >= min_mm3
            keep[0] = False
            ref = keep[full].astype(np.uint8) if min_mm3 > 0 else (full > 0).astype(np.uint8)
            assert np.array_equal(remove_small_components(m, (0.5, 1.0, 1.0), min_mm3), ref)
        lung = rng.random(m.shape) < 0.02
        near = [ndi.binary_dilation(full == i, np.ones((3, 3, 3), bool)) for i in range(1, n + 1)]
        ref = np.isin(full, [i for i, d in enumerate(near, start=1) if (d & lung).any()])
        assert np.array_equal(gate_to_lungs(m, lung), ref.astype(np.uint8))


def test_more_than_65535_components_use_int32_labels():
    m = np.zeros((1, 520, 520), np.uint8)
    m[0, ::2, ::2] = 1  # 260² isolated voxels
    box, labels, n = label_components_in_box(m)
    assert n == 260 * 260 and labels.dtype == np.int32
    assert remove_small_components(m, (1.0, 1.0, 1.0), 2.0).sum() == 0
    assert remove_small_components(m, (1.0, 1.0, 1.0), 1.0).sum() == n


def test_lung_grid_step_is_rounded():
    assert lung_grid_step((0.796, 0.796, 2.5)) == 2  # 1.5 // 0.796 would be 1: a full-size mask
    assert lung_grid_step((0.7, 0.7, 1.0)) == 2
    assert lung_grid_step((0.5, 0.6, 1.0)) == 3
    assert lung_grid_step((1.2, 1.2, 1.0)) == 1
    assert lung_grid_step((0.4, 0.4, 1.0), coarse_mm=0) == 1


def test_gate_from_hu_matches_gate_with_full_size_lung_mask():
    """The coarse-grid, lazily closed gate decides like ``gate_to_lungs`` with the full-size mask, for
    components that touch the lungs' air, that only touch the closed mask, and that miss it."""
    ct, tumour, outside, true_lung = synthetic_chest()
    z, y, x = np.indices(ct.shape)
    nodule = ((x - 90) ** 2 + (y - 50) ** 2 <= 36) & (abs(z - 12) <= 2)  # solid nodule inside the right lung
    ct[nodule] = 30.0
    core = ((x - 90) ** 2 + (y - 50) ** 2 <= 4) & (abs(z - 12) <= 1)  # its core only touches the closed mask
    blobs = ndi.gaussian_filter(np.random.default_rng(1).random(ct.shape), 1.5) > 0.57
    for m in (tumour | outside | core, (blobs | core).astype(np.uint8)):
        ref = gate_to_lungs(m, lung_mask_from_hu(ct, SPACING))
        assert np.array_equal(gate_to_lungs_hu(m, ct, SPACING), ref)
    assert np.array_equal(gate_to_lungs_hu(tumour | outside | core, ct, SPACING), tumour | core)
    assert gate_to_lungs_hu(tumour, np.random.default_rng(0).random(ct.shape), SPACING) is None  # not HU


def test_coarse_gate_decisions_match_full_resolution_on_phantom():
    """On a 512² phantom (0.81 mm pixels: a 1.6 mm lung grid) the gate keeps the same components as the former
    full-resolution lung mask: every tumour, and the same random blobs except a few that lie within two coarse
    pixels of the lung border."""
    from lungtumor.data.phantom import build_case

    case = build_case(0, matrix=512, slices=24)
    ct, sp = case.image.array, case.image.spacing
    f = lung_grid_step(sp)
    assert f == 2
    blobs = ndi.gaussian_filter(np.random.default_rng(2).random(ct.shape), 2.0) > 0.535
    m = (blobs | (case.label.array > 0)).astype(np.uint8)
    labels, n = label_components(m)
    lung_full = lung_mask_from_hu(ct, sp, coarse_mm=0)  # the former mask for pixels < 1.5 mm
    assert (lung_full & case.lung).sum() >= 0.97 * case.lung.sum()
    kept_full = np.unique(labels[gate_to_lungs(m, lung_full) > 0])
    kept_new = np.unique(labels[gate_to_lungs_hu(m, ct, sp) > 0])
    tumours = np.unique(labels[case.label.array > 0])
    assert np.isin(tumours, kept_full).all() and np.isin(tumours, kept_new).all()
    differ = np.setxor1d(kept_full, kept_new)
    assert n > 1000 and len(differ) <= 0.01 * n
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = True
    band = ndi.binary_dilation(lung_full, plane, 2 * f) & ~ndi.binary_erosion(lung_full, plane, 2 * f)
    assert np.isin(differ, labels[band]).all()


def test_label_components_is_26_connected():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = 1
    assert label_components(m)[1] == 1


@pytest.mark.realdata
def test_real_tumour_inside_or_touching_lung_mask(realdata):
    from lungtumor.imaging.io import read_mask, read_volume

    img = read_volume(realdata / "pyradiomics" / "lung2_image.nrrd")
    lab = read_mask(realdata / "pyradiomics" / "lung2_label.nrrd", reference=img)
    lung = lung_mask_from_hu(img.array, img.spacing)
    kept = gate_to_lungs(lab.array, lung)
    assert kept.sum() >= 0.95 * lab.array.sum()
    litres = lung.sum() * np.prod(img.spacing) / 1e6
    assert 1.5 < litres < 10  # plausible adult lung volume


def _ball(shape, centre_zyx, radii_mm, spacing_xyz):
    z, y, x = np.indices(shape, dtype=float)
    sx, sy, sz = spacing_xyz
    cz, cy, cx = centre_zyx
    rx, ry, rz = radii_mm
    return ((x - cx) * sx / rx) ** 2 + ((y - cy) * sy / ry) ** 2 + ((z - cz) * sz / rz) ** 2 <= 1


def test_flat_components_go_and_round_ones_stay():
    spacing = (0.8, 0.8, 1.0)
    sphere = _ball((40, 64, 64), (15, 20, 20), (6, 6, 6), spacing)  # 12 mm ball: depth / width 1
    disc = np.zeros_like(sphere)
    disc[30] = _ball((1, 64, 64), (0, 44, 44), (6, 6, 6), spacing)[0]  # 12 mm wide, one 1 mm slice
    out = remove_flat_components(sphere | disc, spacing, 0.4)
    assert out.dtype == np.uint8
    assert np.array_equal(out.astype(bool), sphere)
    assert np.array_equal(remove_flat_components(sphere | disc, spacing, 0), (sphere | disc).astype(np.uint8))
    # on 5 mm slices an 8 mm nodule on one slice is as deep as the slice: kept; a 30 mm one-slice plate is not
    thick = (0.8, 0.8, 5.0)
    nodule = np.zeros((10, 64, 64), bool)
    nodule[3] = _ball((1, 64, 64), (0, 16, 16), (4, 4, 4), thick)[0]
    plate = np.zeros_like(nodule)
    plate[7] = _ball((1, 64, 64), (0, 40, 40), (15, 15, 15), thick)[0]
    assert np.array_equal(remove_flat_components(nodule | plate, thick, 0.4).astype(bool), nodule)
    assert not remove_flat_components(np.zeros((4, 8, 8), np.uint8), spacing, 0.4).any()


def test_a_deep_wide_piece_is_never_flat():
    """A 56 mm wide slab 21 mm deep (7 slices of 3 mm: depth / width 0.37) stays at ratio 0.4; the same slab on
    3 slices of 3 mm (9 mm deep) and a 2-slice one of 5 mm slices (10 mm) go."""
    wide = _ball((1, 80, 80), (0, 40, 40), (28, 28, 28), (1.0, 1.0, 1.0))[0]  # 56 mm disc on 1 mm pixels
    for slices, sz, kept in [(7, 3.0, True), (3, 3.0, False), (2, 5.0, False), (4, 3.0, True)]:
        m = np.zeros((12, 80, 80), bool)
        m[2 : 2 + slices] = wide
        assert remove_flat_components(m, (1.0, 1.0, sz), 0.4).any() == kept, (slices, sz)


def test_real_lesions_pass_the_flat_filter_of_the_demo_preset(realdata):
    """Every labelled real lesion (the 4 tumour CTs and the 24 LIDC nodules) is at least as deep as the
    demo preset's ratio asks: the filter removes model artefacts, not tumours."""
    import SimpleITK as sitk

    from lungtumor.core.config_io import load_config

    ratio = load_config(None, "demo").infer.min_z_extent_ratio
    assert ratio > 0
    labels = [
        realdata / "pyradiomics/lung1_label.nrrd",
        realdata / "pyradiomics/lung2_label.nrrd",
        realdata / "nsclc_radiomics_lung1_001/LUNG1-001_gtv1_crop.nii.gz",
        realdata / "ibsi_ct_phantom/mask.nii.gz",
        *sorted((realdata / "lidc_nodule_vois/nodule_mask").glob("*.nii.gz")),
    ]
    assert len(labels) == 28
    for path in labels:
        img = sitk.ReadImage(str(path))
        mask = remove_small_components(sitk.GetArrayFromImage(img) > 0, img.GetSpacing(), 20.0).astype(bool)
        kept = remove_flat_components(mask, img.GetSpacing(), ratio)
        assert np.array_equal(kept.astype(bool), mask), path.name


def test_predict_postprocessing_applies_the_flat_filter():
    from lungtumor.imaging.volume import Volume
    from lungtumor.postprocessing.filters import postprocess_mask

    spacing = (0.8, 0.8, 1.0)
    sphere = _ball((40, 64, 64), (15, 20, 20), (6, 6, 6), spacing)
    disc = np.zeros_like(sphere)
    disc[30] = _ball((1, 64, 64), (0, 44, 44), (6, 6, 6), spacing)[0]
    ct = Volume(np.full(sphere.shape, -800, np.int16), spacing=spacing)
    mask = (sphere | disc).astype(np.uint8)
    out = postprocess_mask(mask, ct, min_lesion_mm3=20.0, lung_gate=False, min_z_extent_ratio=0.4)
    assert np.array_equal(out.astype(bool), sphere)
    kept = postprocess_mask(mask, ct, min_lesion_mm3=20.0, lung_gate=False)
    assert np.array_equal(kept, mask)


def test_both_filters_in_one_pass_equal_one_after_the_other():
    sp = (0.7, 0.7, 2.5)
    m = _ball((30, 64, 64), (10, 16, 16), (6, 6, 6), sp)  # kept by both
    m[25, 50:54, 50:54] = True  # 4x4 one-slice speck: 19.6 mm3, too small
    m[20, 5:25, 40:60] = True  # 14 mm wide on one 2.5 mm slice: too flat
    m[3:6, 40:43, 10:13] = True  # 3 slices of 2.1 mm: deep enough, 33 mm3
    both = filter_components(m, sp, min_mm3=5.0, min_z_ratio=0.4)
    seq = remove_flat_components(remove_small_components(m, sp, 5.0), sp, 0.4)
    assert 0 < both.sum() < m.sum()
    assert np.array_equal(both, seq)
