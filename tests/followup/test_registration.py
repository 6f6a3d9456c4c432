"""Registration of a follow-up that is the baseline moved by a known offset (synthetic chest, tests/lt_followup_data.py)."""

from __future__ import annotations

import numpy as np
import pytest
from lt_followup_data import RIGHT_LUNG_XYZ, SPACING, chest, mask_volume, spheres

from lungtumor.followup.registration import POOR_RESIDUAL_MM, Registration, identity_registration, register


@pytest.mark.parametrize("shift", [(6.0, 0.0, 0.0), (4.0, -3.0, 5.0)])
@pytest.mark.parametrize("affine", [False, True])
def test_known_translation_is_recovered(shift, affine):
    base = chest(seed=0)
    fu = chest(shift_mm=shift, seed=1)  # other noise: not the same voxels moved
    reg = register(base, fu, affine=affine)
    assert reg.kind == ("rigid+affine" if affine else "rigid")
    assert reg.lungs_found
    # a point in the lungs maps to itself moved by the shift, to within one voxel on each axis
    p = np.array([RIGHT_LUNG_XYZ, (12.0, 5.0, 40.0)])
    moved = reg.to_followup(p) - p
    assert np.all(np.abs(moved - np.asarray(shift)) <= np.asarray(SPACING)), moved
    back = reg.to_baseline(reg.to_followup(p))
    assert back == pytest.approx(p, abs=1e-6)
    assert reg.residual_mm is not None and reg.residual_mm < 1.0
    assert reg.residual_before_mm is not None and reg.residual_before_mm > 2 * reg.residual_mm
    assert not reg.poor
    s = reg.summary()
    assert s["poor"] is False and s["poor_threshold_mm"] == POOR_RESIDUAL_MM


def test_warp_brings_a_moved_lesion_back():
    shift = (6.0, 0.0, 2.5)
    lesion = [(RIGHT_LUNG_XYZ, 6.0)]
    base, fu = chest(spheres(lesion)), chest(spheres(lesion, shift), shift_mm=shift, seed=1)
    reg = register(base, fu)
    warped = reg.warp(mask_volume(spheres(lesion, shift)), base)
    ref = spheres(lesion)
    dice = 2 * np.sum(warped.astype(bool) & ref) / (warped.astype(bool).sum() + ref.sum())
    assert dice > 0.85


def test_poor_residual_flag():
    reg = identity_registration()
    assert reg.kind == "identity" and not reg.poor and reg.residual_mm is None
    bad = Registration(reg.transform, "rigid", residual_mm=POOR_RESIDUAL_MM + 0.5, lungs_found=True)
    assert bad.poor
    assert not Registration(reg.transform, "rigid", residual_mm=POOR_RESIDUAL_MM - 0.5, lungs_found=True).poor
