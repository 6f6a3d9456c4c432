"""Acquisition augmentation (training.acquisition): noise in HU, kernel, thick slices, window clip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungtumor.core.config import AugmentConfig, PrepConfig, RunConfig
from lungtumor.core.errors import InputError
from lungtumor.preprocessing.frame import hu_scale, normalise
from lungtumor.training.acquisition import blur_px, reacquire, thicken
from lungtumor.training.run import _check_train_config, train

from .test_seg2d import tiny_config, write_cache

NO_CLIP = (1 / 100.0, -math.inf, math.inf)  # 100 HU per model unit, no window


def _cfg(**kw: object) -> AugmentConfig:
    base = {"acq_p": 1.0, "acq_noise_hu": (0.0, 0.0), "acq_kernel": (0.0, 0.0), "acq_thick_p": 0.0}
    base.update(kw)
    return AugmentConfig(**base)  # type: ignore[arg-type]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _structured(b: int = 4, c: int = 3, n: int = 64) -> torch.Tensor:
    g = _gen(5)
    return torch.nn.functional.avg_pool2d(torch.randn(b, c, n + 3, n + 3, generator=g), 4, stride=1)


def test_off_is_identity_and_draws_nothing() -> None:
    img = _structured()
    g = _gen(1)
    state = g.get_state()
    out = reacquire(img, AugmentConfig(), NO_CLIP, generator=g)  # acq_p defaults to 0
    assert out is img
    assert torch.equal(g.get_state(), state)  # existing recipes train bit-identical weights


def test_noise_sd_is_in_hu() -> None:
    img = torch.zeros(8, 1, 96, 96)
    out = reacquire(img, _cfg(acq_noise_hu=(30.0, 30.0)), NO_CLIP, generator=_gen())
    sd_hu = float(out.std()) / NO_CLIP[0]
    assert sd_hu == pytest.approx(30.0, rel=0.03)


def test_noise_sd_range_is_per_sample() -> None:
    out = reacquire(torch.zeros(64, 1, 32, 32), _cfg(acq_noise_hu=(10.0, 60.0)), NO_CLIP, generator=_gen())
    sds = out.flatten(1).std(1) / NO_CLIP[0]
    assert 9.0 < float(sds.min()) < 20.0 and 50.0 < float(sds.max()) < 62.0


def _laplacian_energy(x: torch.Tensor) -> float:
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


def test_kernel_sharpens_and_blurs() -> None:
    img = _structured()
    sharp = reacquire(img, _cfg(acq_kernel=(1.0, 1.0)), NO_CLIP, generator=_gen())
    soft = reacquire(img, _cfg(acq_kernel=(-1.0, -1.0)), NO_CLIP, generator=_gen())
    assert _laplacian_energy(sharp) > 1.5 * _laplacian_energy(img) > 2.25 * _laplacian_energy(soft)
    assert torch.allclose(soft, blur_px(img), atol=1e-6)  # -1 is the 1-px Gaussian blur itself
    assert torch.allclose(sharp.mean(), img.mean(), atol=1e-3)  # neither kernel shifts the mean


def test_thick_slices_average_neighbours_and_keep_a_single_slice() -> None:
    img = torch.stack([torch.full((8, 8), float(v)) for v in (0.0, 4.0, 8.0)])[None]
    out = reacquire(img, _cfg(acq_thick_p=1.0), NO_CLIP, generator=_gen())
    assert out[0, :, 0, 0].tolist() == [1.0, 4.0, 7.0]  # the edge slices repeat themselves
    one = torch.ones(2, 1, 8, 8)
    assert torch.equal(thicken(one), one)


def test_probability_and_other_channels() -> None:
    img = torch.cat([_structured(64, 1, 16), torch.full((64, 1, 16, 16), 7.0)], 1)  # CT + a blob channel
    out = reacquire(img, _cfg(acq_p=0.5, acq_noise_hu=(50.0, 50.0)), NO_CLIP, n_ct=1, generator=_gen())
    changed = (out[:, 0] != img[:, 0]).flatten(1).any(1)
    assert 16 < int(changed.sum()) < 48
    assert torch.equal(out[:, 1], img[:, 1])  # the blob channel is not CT


def test_clip_to_the_prepared_window() -> None:
    prep = PrepConfig()  # window_zscore, window [-1000, 500] HU
    stats = {"mean": -500.0, "std": 400.0}
    scale = hu_scale(prep, stats)
    hu = np.array([-1000.0, 500.0], np.float32)
    assert scale[0] == pytest.approx(1 / 400) and [scale[1], scale[2]] == pytest.approx(
        normalise(hu, prep, stats).tolist()
    )
    img = torch.full((4, 1, 32, 32), scale[1])  # air, at the window's low edge
    out = reacquire(img, _cfg(acq_noise_hu=(60.0, 60.0)), scale, generator=_gen())
    assert float(out.min()) >= scale[1] and float(out.max()) > scale[1]
    assert hu_scale(PrepConfig(norm="divide"), None) == (1 / 3071.0, -math.inf, math.inf)


def test_same_generator_same_result() -> None:
    img, cfg = (
        _structured(),
        _cfg(acq_p=0.7, acq_noise_hu=(10.0, 60.0), acq_kernel=(-1.0, 1.0), acq_thick_p=0.5),
    )
    a = reacquire(img, cfg, NO_CLIP, generator=_gen(3))
    b = reacquire(img, cfg, NO_CLIP, generator=_gen(3))
    assert torch.equal(a, b) and not torch.equal(a, img)


@pytest.mark.parametrize(
    ("key", "value"),
    [("acq_p", 1.5), ("acq_thick_p", -0.1), ("acq_noise_hu", (20.0, 10.0)), ("acq_kernel", (-2.0, 1.0))],
)
def test_bad_settings_are_refused(key: str, value: object) -> None:
    cfg = RunConfig()
    setattr(cfg.train.augment, key, value)
    with pytest.raises(InputError, match=f"train.augment.{key}"):
        _check_train_config(cfg, "cfg.yaml")


def test_3d_recipe_refuses_it() -> None:
    cfg = RunConfig()
    cfg.model.arch = "unet3d"
    cfg.train.augment.acq_p = 0.5
    with pytest.raises(InputError, match="3D recipe"):
        _check_train_config(cfg, "cfg.yaml")


def test_a_run_trains_with_it_and_its_batches_differ(tmp_path) -> None:
    """acq_p on: training runs, stores the setting in the checkpoint, and the weights differ from acq_p 0."""
    cache = write_cache(tmp_path / "cache")
    runs = {}
    for p in (0.0, 1.0):
        cfg = tiny_config(epochs=1)
        cfg.train.augment.acq_p = p
        train(cache, tmp_path / f"run{p}", cfg, progress=False)
        ck = torch.load(tmp_path / f"run{p}/checkpoints/last.ckpt", weights_only=True)
        assert ck["hyper_parameters"]["lungtumor"]["config"]["train"]["augment"]["acq_p"] == p
        runs[p] = ck["state_dict"]
    assert any(not torch.equal(runs[0.0][k], runs[1.0][k]) for k in runs[0.0])


def test_cli_names_the_config_file(tmp_path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  augment: {acq_p: 1.5}\n")
    cache = write_cache(tmp_path / "cache")
    cmd = [
        sys.executable,
        "-m",
        "lungtumor",
        "train",
        str(cache),
        "-o",
        str(tmp_path / "run"),
        "--config",
        str(bad),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and not (tmp_path / "run").exists()
    assert r.stderr.strip().splitlines() == [
        f"error: {bad}: train.augment.acq_p: must be a probability in [0, 1]"
    ]
