"""The nodule detector's plan: canonical HU sampled once onto an isotropic grid spanning the prepared frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungtumor.core.config import PrepConfig
from lungtumor.imaging.resample import iso_shape
from lungtumor.imaging.volume import Volume
from lungtumor.preprocessing.detector_grid import AIR_HU, grid_maps, hu_on_detector_grid
from lungtumor.preprocessing.frame import frame_spacing, geometry, preprocess_inputs


def _ct(shape, spacing, seed=0) -> Volume:
    """Random HU in [-1000, 1500] (bone above the usual windows), smoothed so that interpolation matters."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1500, size=shape).astype(np.float32)
    a = (a + np.roll(a, 1, 1) + np.roll(a, 1, 2)) / 3
    return Volume(a.astype(np.int16), spacing=spacing)


@pytest.mark.parametrize(
    "shape, spacing, prep",
    [
        ((7, 50, 60), (1.44, 1.44, 2.0), PrepConfig(resize="spacing", spacing_mm=2.0, size=(48, 48))),  # pads
        ((7, 80, 70), (1.6, 1.6, 2.0), PrepConfig(resize="spacing", spacing_mm=2.0, size=(48, 48))),  # crops
        ((7, 40, 40), (2.0, 2.0, 2.0), PrepConfig(resize="size", size=(40, 40))),  # identity
    ],
)
def test_grid_equals_the_unclipped_prepared_frame_when_both_are_2mm(shape, spacing, prep):
    """With a 2 mm frame and 2 mm slices the grid is the frame: it holds the frame's HU without the window clip
    (so bone keeps its HU) and air where the frame pads; the undone normalisation would clip at the window."""
    vol = _ct(shape, spacing)
    x, _, geom = preprocess_inputs(vol, dataclasses.replace(prep, norm="divide"), None)
    fs = frame_spacing(geom, vol.spacing)
    assert iso_shape(x.shape, fs, 2.0) == x.shape
    grid = hu_on_detector_grid(vol.array, geom, fs, 2.0)
    assert grid.shape == x.shape and grid.dtype == np.float32
    assert np.abs(grid - x * np.float32(prep.hu_divisor)).max() < 0.05
    assert grid.max() > 500  # not clipped at the window's 500 HU


def test_separable_sampling_equals_scipy_trilinear_and_resamples_z_linearly():
    vol = _ct((9, 50, 60), (1.3, 1.3, 5.0), seed=1)
    prep = PrepConfig(resize="spacing", spacing_mm=2.0, size=(48, 48))
    geom = geometry(vol, prep)
    fs = frame_spacing(geom, vol.spacing)
    shape, maps = grid_maps(geom, fs, 2.0)
    g = hu_on_detector_grid(vol.array, geom, fs, 2.0)
    assert g.shape == shape and shape[0] == 21  # 8 gaps of 5 mm = 40 mm → 21 planes at 2 mm
    ref = ndi.affine_transform(
        vol.array.astype(np.float64), [a for a, _ in maps], offset=[b for _, b in maps], output_shape=shape,
        order=1, mode="nearest", prefilter=False,
    )  # fmt: skip
    inside = g != AIR_HU
    assert inside.mean() > 0.4 and np.abs(g - ref)[inside].max() < 0.05
    t = hu_on_detector_grid(vol.array, geom, fs, 2.0, threads=2)  # predict's torch path
    assert np.array_equal(t == AIR_HU, ~inside) and np.abs(t - ref)[inside].max() < 0.1
    ramp = np.broadcast_to(np.arange(9, dtype=np.int16)[:, None, None] * 100, (9, 50, 60)).copy()
    assert np.allclose(
        hu_on_detector_grid(ramp, geom, fs, 2.0)[:, 24, 24], np.arange(21) * 100 * 8 / 20, atol=0.01
    )


def test_outside_the_field_of_view_is_air_and_shapes_are_checked():
    vol = Volume(np.full((3, 20, 20), 40, np.int16), spacing=(1.0, 1.0, 2.0))  # a 20 mm field of soft tissue
    geom = geometry(vol, PrepConfig(resize="spacing", spacing_mm=2.0, size=(20, 20)))
    fs = frame_spacing(geom, vol.spacing)
    g = hu_on_detector_grid(vol.array, geom, fs, 2.0)
    assert set(np.unique(g)) == {AIR_HU, 40.0}
    assert (g[:, 10, 10] == 40).all() and (g[:, 0, 0] == AIR_HU).all()
    assert (g == 40).sum(axis=(1, 2))[0] == 10 * 10  # the 20 mm field at 2 mm, centred
    with pytest.raises(ValueError, match="not the geometry"):
        hu_on_detector_grid(vol.array[:2], geom, fs, 2.0)
