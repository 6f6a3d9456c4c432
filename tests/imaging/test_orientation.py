"""Canonical (LPS, axial) array order: the same grid as SimpleITK's DICOMOrient, every voxel in place."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from lungtumor.imaging.orientation import Reorient, to_canonical
from lungtumor.imaging.volume import Volume


def _stored(perm: tuple[int, int, int], flips: tuple[bool, bool, bool], oblique: float = 0.0) -> Volume:
    """One random image, stored with its voxel axes permuted and flipped (and rotated by ``oblique``
    degrees about world z): a new array order with the direction and origin that describe it."""
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16))
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-100.0, 20.0, 300.0))
    if oblique:
        t = np.deg2rad(oblique)
        img.SetDirection((np.cos(t), -np.sin(t), 0.0, np.sin(t), np.cos(t), 0.0, 0.0, 0.0, 1.0))
    img = sitk.Flip(sitk.PermuteAxes(img, perm), flips)  # the same world image, another voxel order
    return Volume.from_sitk(img)


def _matches_dicomorient(vol: Volume) -> tuple[Volume, Reorient]:
    """to_canonical(vol), checked against SimpleITK's DICOMOrient(img, "LPS") and undone exactly."""
    can, ro = to_canonical(vol)
    ref = sitk.DICOMOrient(vol.to_sitk(), "LPS")
    np.testing.assert_array_equal(can.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(can.spacing, ref.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(can.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(can.direction, ref.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(ro.restore(can.array), vol.array)  # and back, exactly
    return can, ro


CASES = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product((False, True), repeat=3)]


@pytest.mark.parametrize(("perm", "flips"), CASES)
def test_canonical_grid_is_dicomorient_lps(perm, flips):
    can, ro = _matches_dicomorient(_stored(perm, flips))
    np.testing.assert_allclose(can.direction, np.eye(3).ravel(), atol=1e-9)  # axis-aligned input: identity
    assert ro.identity == (perm == (0, 1, 2) and not any(flips))


@pytest.mark.parametrize("oblique", [20.0, -35.0])
def test_oblique_axes_go_to_the_nearest_world_axis_and_voxels_stay_in_place(oblique):
    vol = _stored((1, 0, 2), (True, False, True), oblique)
    can, ro = to_canonical(vol)
    d = np.asarray(can.direction).reshape(3, 3)
    assert np.all(np.diag(d) > 0.8)  # each canonical axis runs near +L, +P, +S
    idx = np.argwhere(np.ones(vol.shape, bool))
    world_in = vol.index_to_world(idx)
    # the same voxel values sit at the same world points: map every input voxel to its canonical index
    cidx = np.argwhere(np.ones(can.shape, bool))
    world_can = can.index_to_world(cidx)
    order_in = np.lexsort(np.round(world_in, 6).T)
    order_can = np.lexsort(np.round(world_can, 6).T)
    np.testing.assert_allclose(world_in[order_in], world_can[order_can], atol=1e-6)
    np.testing.assert_array_equal(vol.array[tuple(idx[order_in].T)], can.array[tuple(cidx[order_can].T)])


def test_any_rotation_gives_dicomorients_grid():
    """Oblique directions, 45-degree ties included: the same array, spacing, origin and direction as
    SimpleITK's DICOMOrient(img, "LPS")."""
    from scipy.spatial.transform import Rotation

    rots = [Rotation.from_euler("z", 135, degrees=True), *Rotation.random(40, random_state=1)]
    for r in rots:
        m = r.as_matrix()
        vol = _stored((0, 1, 2), (False, False, False))
        _matches_dicomorient(Volume(vol.array, vol.spacing, vol.origin, tuple(m.ravel())))


def test_canonical_input_is_returned_as_it_is():
    vol = Volume(np.zeros((3, 4, 5), np.int16), spacing=(1.0, 1.0, 2.0))
    can, ro = to_canonical(vol)
    assert can is vol and ro == Reorient() and ro.identity
