"""The device path of predict (infer_device) gives the CPU path's values; run here on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.core.config import ModelConfig, PrepConfig, RunConfig
from lungtumor.imaging.volume import Volume
from lungtumor.inference.checkpoint import LoadedModel
from lungtumor.inference.slices import (
    predict_volume,
    predict_volume_on_device,
    prepare_on_device,
    restore_on_device,
)
from lungtumor.models import create_model
from lungtumor.preprocessing.frame import geometry, preprocess_volume, restore_geometry, restore_mask

STATS = {"mean": -600.0, "std": 420.0}
PREPS = {
    "spacing, padded": PrepConfig(resize="spacing", spacing_mm=1.5, size=(64, 64)),
    "spacing, cropped": PrepConfig(resize="spacing", spacing_mm=0.6, size=(48, 64)),
    "size, divide": PrepConfig(norm="divide", resize="size", size=(40, 56)),
}


def _ct(seed: int = 0) -> Volume:
    """(z, y, x) = (7, 50, 60) int16 HU: air, a body disc and a bright blob; 1.1 x 0.9 mm in-plane."""
    r = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:7, :50, :60]
    a = np.full((7, 50, 60), -1000, np.int16)
    a[(yy - 25) ** 2 + (xx - 30) ** 2 < 20**2] = -800
    a[(yy - 20) ** 2 + (xx - 35) ** 2 + (3 * (zz - 3)) ** 2 < 6**2] = 40
    a += r.integers(-30, 30, a.shape, dtype=np.int16)
    return Volume(a, spacing=(0.9, 1.1, 2.5))


@pytest.mark.parametrize("name", list(PREPS))
def test_prepare_and_restore_match_the_cpu_path(name):
    prep, vol = PREPS[name], _ct()
    ref, geom = preprocess_volume(vol, prep, STATS)
    got = prepare_on_device(torch.from_numpy(vol.array), prep, STATS, geometry(vol, prep))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)
    hu32 = vol.array.astype(np.float32)
    got32 = prepare_on_device(torch.from_numpy(hu32), prep, STATS, geometry(vol, prep))
    np.testing.assert_allclose(got32.numpy(), ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(hu32, vol.array)  # the caller's float32 HU are not changed in place

    prob = torch.rand(ref.shape, generator=torch.Generator().manual_seed(1))
    full, mask = restore_on_device(prob, geom, 0.5, keep_prob=True)
    np.testing.assert_allclose(full, restore_geometry(prob.numpy(), geom), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask, restore_mask(prob.numpy(), geom, 0.5))
    none, mask2 = restore_on_device(prob, geom, 0.5, keep_prob=False)
    assert none is None and mask2.dtype == np.uint8 and mask2.shape == vol.shape
    np.testing.assert_array_equal(mask2, mask)


def test_predict_volume_on_device_matches_predict_volume():
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.prep = PREPS["spacing, padded"]
    cfg.model = ModelConfig(base_channels=4, depth=2, in_channels=3)
    net = create_model(cfg.model).eval()
    loaded = LoadedModel(net, cfg, dict(STATS), {}, Path("x.ckpt"))
    vol = _ct(3)
    cpu = torch.device("cpu")
    kw = dict(device=cpu, batch_size=3, tta=True, precision="32")
    t = float(np.median(predict_volume(loaded, vol, threshold=0.5, keep_prob=True, **kw)[0]))  # untrained net
    ref_p, ref_m = predict_volume(loaded, vol, threshold=t, keep_prob=True, **kw)
    got_p, got_m = predict_volume_on_device(loaded, vol, threshold=t, keep_prob=True, **kw)
    assert got_p.shape == vol.shape and got_m.shape == vol.shape
    np.testing.assert_allclose(got_p, ref_p, rtol=0, atol=1e-5)
    sure = np.abs(ref_p - t) > 1e-4  # away from the threshold the masks are the same voxel for voxel
    np.testing.assert_array_equal(got_m[sure], ref_m[sure])
    assert 0 < int(got_m.sum()) < got_m.size  # the check compares masks that hold both values


def test_device_path_refuses_the_blob_channel():
    cfg = RunConfig()
    cfg.prep = PrepConfig(blob=True)
    loaded = LoadedModel(torch.nn.Identity(), cfg, dict(STATS), {}, Path("x.ckpt"))
    with pytest.raises(ValueError, match="blob"):
        predict_volume_on_device(
            loaded, _ct(), device=torch.device("cpu"), threshold=0.5, batch_size=2, tta=False, precision="32",
            keep_prob=False,
        )  # fmt: skip
