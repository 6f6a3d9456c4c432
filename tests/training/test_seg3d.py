"""The 3D recipe: model shapes, sliding windows, augmentation, planning, a tiny training run and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungtumor.core.config import ModelConfig
from lungtumor.core.config_io import load_config
from lungtumor.core.errors import InputError
from lungtumor.core.presets import preset
from lungtumor.imaging.volume import Volume
from lungtumor.inference.sliding_window import gaussian_importance, sliding_window_probs
from lungtumor.models import build_model, create_model
from lungtumor.models.unet3d import UNet3D, divisor, make_pools
from lungtumor.preprocessing.prepare3d import ct_stats, resampled_shape
from lungtumor.training.losses import deep_supervision_loss, ds_weights
from lungtumor.training.patches import augment_batch_3d, plan_patch, plan_pools


def test_unet3d_shapes_and_deep_supervision():
    m = UNet3D(1, 1, 4, make_pools(3, 1), residual=True, deep_supervision=True, n_ds=3)
    x = torch.randn(2, 1, 8, 16, 16)
    outs = m.train()(x)
    assert isinstance(outs, list) and [tuple(o.shape) for o in outs] == [
        (2, 1, 8, 16, 16),
        (2, 1, 8, 8, 8),
        (2, 1, 4, 4, 4),
    ]
    assert tuple(m.eval()(x).shape) == (2, 1, 8, 16, 16)
    assert divisor(make_pools(3, 1)) == (4, 8, 8)
    cfg = preset("3d")
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.vol3d.anisotropic_levels = 1
    net = build_model(cfg)
    assert net.pools == make_pools(2, 1)  # the run's vol3d settings, as train and predict build it
    assert tuple(net.eval()(torch.randn(1, 1, 8, 8, 8)).shape) == (1, 1, 8, 8, 8)
    with pytest.raises(InputError, match="build_model"):  # a ModelConfig alone cannot say the 3D pools
        create_model(ModelConfig(arch="unet3d", base_channels=4, depth=2, norm="instance", in_channels=1))


def test_ds_loss_weights():
    assert ds_weights(1) == [1.0]
    w = ds_weights(4)
    assert w[3] == 0 and abs(sum(w) - 1) < 1e-9 and w[0] == 2 * w[1] == 4 * w[2]
    t = (torch.rand(2, 1, 8, 8, 8) > 0.5).float()
    loss = deep_supervision_loss([torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 1, 4, 4, 4)], t)
    assert torch.isfinite(loss)


def test_3d_training_uses_the_configured_loss():
    """train.loss reaches the 3D trainer (it was always Dice + BCE); every loss takes 5D tensors."""
    from lungtumor.core.config import LOSS_NAMES, RunConfig
    from lungtumor.core.config_io import to_dict
    from lungtumor.training.losses import LOSSES
    from lungtumor.training.module import SegModule

    t = torch.zeros(2, 1, 4, 16, 16)
    t[0, 0, 1:3, 4:7, 4:7] = 1
    logits = [torch.randn(2, 1, 4, 16, 16), torch.randn(2, 1, 2, 8, 8)]
    values = {name: float(deep_supervision_loss(logits, t, LOSSES[name])) for name in LOSS_NAMES}
    assert all(np.isfinite(v) for v in values.values()) and len(set(values.values())) == len(values)
    cfg = RunConfig()
    cfg.model.arch, cfg.model.base_channels, cfg.model.depth, cfg.model.in_channels = "unet3d", 4, 2, 1
    cfg.train.loss = "dice_bce_small"
    module = SegModule({"config": to_dict(cfg)})
    assert module.loss_fn is LOSSES["dice_bce_small"]


def test_gaussian_importance_peak_symmetric_positive():
    w = gaussian_importance((9, 12, 12)).numpy()
    assert w.shape == (9, 12, 12) and (w > 0).all()
    assert (
        np.allclose(w, w[::-1], atol=1e-6)
        and np.allclose(w, w[:, ::-1], atol=1e-6)
        and np.allclose(w, w[:, :, ::-1], atol=1e-6)
    )
    assert w[4, 5:7, 5:7].min() == pytest.approx(w.max())
    assert w[4, 6, 6] > w[4, 6, 0] and w[4, 6, 6] > w[0, 6, 6]


class _Const(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 0.7)


def test_sliding_window_constant_model_gives_constant_output():
    img = np.random.default_rng(0).normal(size=(11, 23, 17)).astype(np.float32)
    for tta in (False, True):
        p = sliding_window_probs(
            _Const(), img, (8, 8, 8), device=torch.device("cpu"), overlap=0.5, sw_batch_size=3, tta=tta
        )
        assert tuple(p.shape) == img.shape
        assert torch.allclose(p, torch.sigmoid(torch.tensor(0.7)), atol=1e-5)


def test_augment_identity_and_shapes():
    cfg = preset("3d").vol3d
    img = torch.randn(3, 1, 8, 16, 12)
    seg = (torch.rand(3, 1, 8, 16, 12) > 0.7).float()
    a, s = augment_batch_3d(
        img, seg, cfg, (1.0, 1.0, 3.0), jitter=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert a.shape == img.shape and s.shape == seg.shape and set(s.unique().tolist()) <= {0.0, 1.0}
    cfg.rotation_deg, cfg.scale = 0.0, (1.0, 1.0)
    a, s = augment_batch_3d(
        img, seg, cfg, (1.0, 1.0, 3.0), jitter=0.0, generator=torch.Generator().manual_seed(0)
    )
    for b in range(3):  # only flips remain: some flip of the input
        ok = any(
            torch.allclose(a[b], img[b].flip(f), atol=1e-4)
            for f in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]
        )
        assert ok


def test_planning_and_helpers():
    pools = plan_pools((0.8, 0.8, 5.0), 5, -1)
    assert pools[0] == (1, 2, 2) and pools[-1] == (2, 2, 2)
    assert plan_pools((1.0, 1.0, 1.0), 4, -1) == make_pools(4, 0)
    patch, batch = plan_patch((0.8, 0.8, 2.5), (120, 400, 400), pools, 2 << 30, 32)
    d = divisor(pools)
    assert all(p % q == 0 for p, q in zip(patch, d, strict=True)) and 2 <= batch <= 16
    assert patch[1] > patch[0]  # fewer voxels along the coarse z axis
    assert resampled_shape((10, 20, 30), (1.0, 2.0, 3.0), (2.0, 2.0, 1.5)) == (20, 20, 15)
    s = ct_stats(np.arange(1000, dtype=np.float32), (0.5, 99.5))
    assert s["clip_lo"] == pytest.approx(4.995) and s["mean"] == pytest.approx(499.5, rel=1e-3)


def test_preprocess_3d_leaves_a_flipped_float_ct_alone():
    """At the target spacing already, a flipped float32 view (a RAS-stored CT in canonical order) gives a
    contiguous model input, and the CT's HU are not normalised in place."""
    from lungtumor.imaging.orientation import to_canonical
    from lungtumor.preprocessing.prepare3d import preprocess_3d

    hu = np.random.default_rng(0).uniform(-1000, 400, (6, 5, 4)).astype(np.float32)
    stored = Volume(hu.copy(), spacing=(1.0, 1.0, 2.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    vol, _ = to_canonical(stored)
    stats = {"clip_lo": -900.0, "clip_hi": 300.0, "mean": -500.0, "std": 400.0}
    x = preprocess_3d(vol, (1.0, 1.0, 2.0), stats)
    assert x.flags.c_contiguous and torch.as_tensor(x).shape == (6, 5, 4)
    np.testing.assert_array_equal(stored.array, hu)
    np.testing.assert_allclose(x, (np.clip(hu[:, ::-1, ::-1], -900, 300) + 500) / 400, rtol=1e-6)


def _phantom(path, name: str, seed: int, shape=(20, 40, 40)) -> None:
    from lungtumor.imaging.io import write_volume

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = (rng.integers(6, 14), rng.integers(12, 28), rng.integers(12, 28))
    ball = ((z - c[0]) * 2.5) ** 2 + ((y - c[1]) * 1.5) ** 2 + ((x - c[2]) * 1.5) ** 2 < 8**2
    ct = np.where(ball, 40, -800) + rng.normal(0, 20, shape)
    sp = (1.5, 1.5, 2.5)
    write_volume(Volume(ct.astype(np.int16), sp), path / "imagesTr" / f"{name}.nii.gz")
    write_volume(Volume(ball.astype(np.uint8), sp), path / "labelsTr" / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds3d")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for i in range(5):
        _phantom(root, f"case_{i:02d}", i)
    return root


def test_tiny_3d_training_lowers_loss_and_predicts_on_original_grid(tiny_dataset, tmp_path):
    import csv

    from lungtumor.imaging.io import read_volume
    from lungtumor.inference.checkpoint import load_any, read_checkpoint
    from lungtumor.inference.sliding_window import predict_volume_3d
    from lungtumor.preprocessing.prepare3d import prepare_dataset_3d
    from lungtumor.training.run import train

    cfg = load_config(None, "3d")
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.epochs, cfg.train.lr = 3, 3e-3
    cfg.vol3d.steps_per_epoch, cfg.vol3d.patch_size, cfg.vol3d.batch_size = 6, (8, 16, 16), 2
    cfg.vol3d.target_spacing = (2.0, 2.0, 2.5)
    cfg.vol3d.overlap, cfg.vol3d.sw_batch_size = 0.25, 8  # few windows: CPU time (TTA: test above)
    summary = prepare_dataset_3d(tiny_dataset, tmp_path / "cache", cfg.vol3d, val_cases=1, folds=0)
    assert "spacing (2, 2, 2.5)" in summary
    res = train(tmp_path / "cache", tmp_path / "run", cfg, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert res.best_checkpoint.is_file() and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    info = read_checkpoint(res.best_checkpoint)["hyper_parameters"]["lungtumor"]
    assert info["config"]["vol3d"]["patch_size"] == [8, 16, 16] and set(info["stats"]) >= {
        "clip_lo",
        "mean",
        "std",
    }
    loaded = load_any(tmp_path / "run")
    vol = read_volume(tiny_dataset / "imagesTr" / "case_00.nii.gz")
    prob, mask = predict_volume_3d(loaded, vol, device=torch.device("cpu"), threshold=0.5)
    assert prob.shape == mask.shape == vol.shape and prob.dtype == np.float32 and mask.dtype == np.uint8
    assert 0 <= prob.min() and prob.max() <= 1
