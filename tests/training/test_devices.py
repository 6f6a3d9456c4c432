"""``train.devices``: a count or a list of GPU indices (``train --device cuda:N`` → ``[N]``), validated in the
config, saved with the run and given to ``pl.Trainer`` as it is. No GPU needed: CUDA is faked where it matters
and the Trainer is stopped at its construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lungtumor.core.config_io import config_from_dict, load_config, to_dict
from lungtumor.core.errors import InputError
from lungtumor.training import trainer as trainer_mod
from lungtumor.training.run import train

from .test_seg2d import tiny_config, write_cache


class _Stop(Exception):
    """Raised by the fake ``pl.Trainer``: the keyword arguments are all the test needs."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("cache"), n_cases=3, n_val=1)


def _fake_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_yaml_takes_a_count_or_gpu_indices(tmp_path: Path) -> None:
    p = tmp_path / "cfg.yaml"
    p.write_text("train: {devices: [1]}\n")
    cfg = load_config(p)
    assert cfg.train.devices == [1]
    assert config_from_dict(to_dict(cfg)).train.devices == [1]  # as a checkpoint stores and reads it
    for bad, words in (
        ("[]", "distinct indices >= 0"),
        ("[-1]", "distinct indices >= 0"),
        ("[1, 1]", "distinct indices >= 0"),
        ("0", "must be at least 1"),
        ("two", "wrong type"),
        ("[1, x]", "wrong type"),
    ):
        p.write_text(f"train: {{devices: {bad}}}\n")
        with pytest.raises(InputError, match=rf"^{p}: train\.devices: .*{words}"):
            load_config(p)


def test_trainer_devices_checks_the_gpus(monkeypatch) -> None:
    cfg = tiny_config()
    cfg.train.devices = [1]
    _fake_gpus(monkeypatch, 2)
    assert trainer_mod.trainer_devices(cfg, "gpu") == [1]
    with pytest.raises(InputError, match=r"^train\.devices: \[1\] are GPU indices but training runs on cpu"):
        trainer_mod.trainer_devices(cfg, "cpu")
    cfg.train.devices = [0, 2]
    with pytest.raises(
        InputError, match=r"^train\.devices: GPU 2 requested but only 2 CUDA device\(s\) exist$"
    ):
        trainer_mod.trainer_devices(cfg, "gpu")
    cfg.train.devices = 3
    assert trainer_mod.trainer_devices(cfg, "cpu") == 3
    assert trainer_mod.device_count([0, 2]) == 2 and trainer_mod.device_count(3) == 3


@pytest.mark.parametrize(
    ("devices", "want", "strategy"), [([1], [1], "auto"), ([0, 1], [0, 1], "ddp"), (1, 1, "auto")]
)
def test_pl_trainer_gets_the_gpu_list(
    monkeypatch, cache: Path, tmp_path: Path, devices, want, strategy
) -> None:
    """What ``pl.Trainer`` is built with for ``--device cuda:1`` (``[1]``), GPU indices and a count."""
    seen: dict[str, Any] = {}

    def fake_trainer(**kw: Any) -> None:
        seen.update(kw)
        raise _Stop

    _fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(pl, "Trainer", fake_trainer)
    cfg = tiny_config(accelerator="gpu", devices=devices)
    with pytest.raises(_Stop):
        train(cache, tmp_path / "run", cfg, progress=False)
    assert (seen["accelerator"], seen["devices"], seen["strategy"]) == ("gpu", want, strategy)


def test_gpu_indices_without_a_gpu_are_refused_before_the_run_folder(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^train\.devices: \[1\] are GPU indices but training runs on cpu"):
        train(cache, tmp_path / "run", tiny_config(devices=[1]), progress=False)
    assert not (tmp_path / "run").exists()
