"""The model card: written by training into every checkpoint, read back by the checkpoint reader, and
"unknown" for checkpoints from before cards existed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from lungtumor import __version__
from lungtumor.core.config_io import load_config
from lungtumor.inference.card import (
    card_line,
    card_rows,
    data_summary,
    trained_on_phantoms_only,
)
from lungtumor.inference.checkpoint import load_any, read_card
from lungtumor.preprocessing.cache import Cache
from lungtumor.training.card import build_card, with_validation

from .test_seg2d import tiny_config, write_cache

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_ckpt"
SOURCE = {
    "name": "lungtumor-phantoms",
    "path": "/data/ph",
    "description": "phantoms",
    "synthetic": True,
    "cases": 5,
}


def test_training_writes_the_card_into_its_checkpoints(tmp_path: Path) -> None:
    from lungtumor.training.run import train

    cache = write_cache(tmp_path / "cache")
    meta = json.loads((cache / "cache.json").read_text())
    (cache / "cache.json").write_text(json.dumps({**meta, "source": SOURCE}))
    train(cache, tmp_path / "run", tiny_config(epochs=1), progress=False)
    for name in ("best.ckpt", "last.ckpt"):
        card = load_any(tmp_path / "run" / "checkpoints" / name).card
        assert card["version"] == 1 and card["lungtumor_version"] == __version__
        assert card["preset"] == "demo" and card["arch"] == "unet2d"
        assert dt.datetime.fromisoformat(card["created"]).tzinfo is not None
        assert card["data"] == {**SOURCE, "train_cases": 3, "val_cases": 2}
        v = card["validation"]
        assert v["metric"] == "per-patient Dice" and v["epoch"] == 0 and 0.0 <= v["val_dice"] <= 1.0
        assert read_card(tmp_path / "run" / "checkpoints" / name) == card  # without reading the weights
    assert trained_on_phantoms_only(card)
    assert "lungtumor-phantoms (5 cases, synthetic phantoms)" in card_line(tmp_path / "run", card)


def test_a_cache_without_source_gives_an_unknown_dataset(tmp_path: Path) -> None:
    cache = write_cache(tmp_path / "cache", n_cases=3, n_val=1)
    card = build_card(Cache.open(cache).source, load_config(None, "default"), 2, 1)
    assert card["data"]["synthetic"] is None and card["preset"] == "default"
    assert not trained_on_phantoms_only(card)
    assert "kind unknown" in data_summary(card)


def test_validation_is_that_of_the_saved_epoch() -> None:
    rows = [{"epoch": 0, "val_dice": 0.5, "val_loss": 0.9}, {"epoch": 2, "val_dice": 0.7, "val_loss": 0.4}]
    card = {"version": 1, "validation": {"val_dice": 0.1}}
    assert with_validation(card, rows, 2)["validation"]["val_dice"] == 0.7
    assert "validation" not in with_validation(card, rows, 1)  # an epoch that was not validated


def test_old_checkpoints_load_with_an_unknown_card() -> None:
    for name in ("demo2d.ckpt", "unet3d.ckpt"):
        loaded = load_any(LEGACY / name)
        assert loaded.card == {"version": 0} == read_card(LEGACY / name)
        assert "training data unknown" in card_line(LEGACY / name, loaded.card)
        assert card_rows(loaded.card) == {"Model trained on": data_summary(loaded.card)}
        assert not trained_on_phantoms_only(loaded.card)
