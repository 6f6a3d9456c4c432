"""The blobness channel: blobs respond, tubes do not, spacing is in mm, and prepare/train/predict agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lungtumor.core.config import PrepConfig
from lungtumor.preprocessing.blobness import blobness


def _lung_with_sphere_and_tube(spacing_zyx=(2.0, 1.0, 1.0), shape_mm=(60, 80, 80), r_sphere=4.0, r_tube=2.5):
    """(z, y, x) HU: lung (-850) holding a 40 HU sphere (left) and a 40 HU tube along z (right)."""
    n = [int(round(m / s)) for m, s in zip(shape_mm, spacing_zyx, strict=True)]
    z, y, x = (np.arange(k) * s for k, s in zip(n, spacing_zyx, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    cz, cy = shape_mm[0] / 2, shape_mm[1] / 2
    sphere = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - 25) ** 2 <= r_sphere**2
    tube = (yy - cy) ** 2 + (xx - 55) ** 2 <= r_tube**2
    hu = np.full(n, -850.0, np.float32)
    hu[sphere | tube] = 40.0
    centre = (int(round(cz / spacing_zyx[0])), int(round(cy / spacing_zyx[1])))
    return hu, centre, int(round(25 / spacing_zyx[2])), int(round(55 / spacing_zyx[2]))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8), (5.0, 1.5, 1.5)])
def test_a_sphere_is_a_blob_and_a_tube_is_not(spacing):
    hu, (kz, ky), x_sphere, x_tube = _lung_with_sphere_and_tube(spacing)
    b = blobness(hu, spacing).astype(np.float32)
    assert b.dtype == np.float32 and b.shape == hu.shape and b.min() >= 0
    at_sphere = b[kz, ky, x_sphere - 2 : x_sphere + 3].max()
    along_tube = b[kz, ky, x_tube - 2 : x_tube + 3].max()
    assert at_sphere > 0.3, at_sphere
    assert along_tube < 0.2 * at_sphere, (at_sphere, along_tube)
    assert b[kz, ky, : x_sphere - 12].max() < 0.05  # plain lung


def test_spacing_is_in_mm():
    """The same 8 mm nodule on 1 mm and 2.5 mm slices gives about the same response."""
    thin = _lung_with_sphere_and_tube((1.0, 1.0, 1.0))
    thick = _lung_with_sphere_and_tube((2.5, 1.0, 1.0))
    peak = [blobness(h, s).astype(np.float32)[k[0], k[1], xs - 2 : xs + 3].max()
            for (h, k, xs, _), s in ((thin, (1.0, 1.0, 1.0)), (thick, (2.5, 1.0, 1.0)))]  # fmt: skip
    assert peak[1] == pytest.approx(peak[0], rel=0.4)


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 2, 40), (2, 2, 2)])
def test_tiny_volumes_keep_their_shape(shape):
    b = blobness(np.full(shape, -800.0, np.float32), (2.0, 1.0, 1.0))
    assert b.shape == shape and np.isfinite(b.astype(np.float32)).all()


def test_prepare_train_predict_with_the_blob_channel(tmp_path: Path):
    from training.test_seg2d import tiny_config

    from lungtumor.imaging.io import read_volume
    from lungtumor.inference.checkpoint import load_checkpoint
    from lungtumor.inference.slices import predict_volume
    from lungtumor.preprocessing.cache import Cache, SliceTable
    from lungtumor.preprocessing.frame import preprocess_inputs
    from lungtumor.preprocessing.prepare import prepare_dataset
    from lungtumor.training.run import train
    from lungtumor.training.sampling import ResidentSlices, SliceDataset
    from preprocessing.test_prepare import _dataset

    ds = _dataset(tmp_path / "data", n=3)
    prep = PrepConfig(size=(64, 64), spacing_mm=1.5, blob=True)
    prepare_dataset(ds, tmp_path / "c", prep, folds=0, seed=0)
    cache = Cache.open(tmp_path / "c")
    assert cache.has_blob
    # the cached channel is what predict computes
    vol = read_volume(ds / "imagesTr" / "case_0.nii.gz")
    x, blob, _ = preprocess_inputs(vol, prep, cache.stats)
    np.testing.assert_array_equal(np.asarray(cache.blob("case_0")), blob)
    assert blob.astype(np.float32).max() > 0.3  # the case's sphere
    # both data paths append it after the CT slices
    table = SliceTable(cache, cache.train + cache.val)
    res = ResidentSlices(cache, table, torch.device("cpu"), context_mm=3.0)
    host = SliceDataset(cache, table, 1, context_mm=3.0)
    img, _ = res.gather(torch.tensor([0, 5, 13]), 1)
    assert img.shape == (3, 4, 64, 64)
    for j, i in enumerate([0, 5, 13]):
        assert torch.equal(host[i][0], img[j])
    # a run learns from 4 channels and predicts with them
    cfg = tiny_config(epochs=1)
    train(tmp_path / "c", tmp_path / "run", cfg, progress=False)
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.config.prep.blob and loaded.config.model.in_channels == 4
    _, mask = predict_volume(loaded, vol, device=torch.device("cpu"), threshold=0.5, batch_size=4)
    assert mask.shape == vol.shape


def test_a_cache_without_its_blob_files_is_refused(tmp_path: Path):
    from lungtumor.core.errors import InputError
    from lungtumor.preprocessing.cache import Cache
    from lungtumor.preprocessing.prepare import prepare_dataset
    from preprocessing.test_prepare import _dataset

    ds = _dataset(tmp_path / "data", n=2)
    prepare_dataset(ds, tmp_path / "c", PrepConfig(size=(64, 64), blob=True), folds=0, seed=0)
    (tmp_path / "c" / "cases" / "case_1_blob.npy").unlink()
    with pytest.raises(InputError, match="case_1_blob.npy"):
        Cache.open(tmp_path / "c")


def test_slabs_match_the_whole_volume():
    """The measure runs in slabs of slices with margins; a long volume gives what one slab would."""
    import lungtumor.preprocessing.blobness as bm

    hu, _, _, _ = _lung_with_sphere_and_tube((2.0, 1.0, 1.0), shape_mm=(200, 60, 80))
    whole = bm._measure(np.clip(hu, *bm.BLOB_HU), (1.0, 1.0, 2.0))
    slabs = bm.blobness(hu, (2.0, 1.0, 1.0)).astype(np.float32)
    np.testing.assert_allclose(slabs, np.clip(whole, 0, 3), atol=2e-3)
