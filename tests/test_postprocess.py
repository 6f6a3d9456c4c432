"""Component filters and lung gating on a synthetic chest, and the lung mask on a real CT."""

from __future__ import annotations

import numpy as np
import pytest

from lungtumor.postprocess import gate_to_lungs, label_components, lung_mask_from_hu, remove_small_components

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


def test_label_components_is_26_connected():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = 1
    assert label_components(m)[1] == 1


@pytest.mark.realdata
def test_real_tumour_inside_or_touching_lung_mask(realdata):
    from lungtumor.volume import read_mask, read_volume

    img = read_volume(realdata / "pyradiomics" / "lung2_image.nrrd")
    lab = read_mask(realdata / "pyradiomics" / "lung2_label.nrrd", reference=img)
    lung = lung_mask_from_hu(img.array, img.spacing)
    kept = gate_to_lungs(lab.array, lung)
    assert kept.sum() >= 0.95 * lab.array.sum()
    litres = lung.sum() * np.prod(img.spacing) / 1e6
    assert 1.5 < litres < 10  # plausible adult lung volume
