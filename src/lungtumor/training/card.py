"""The model card a training run writes into its checkpoints (format: :mod:`lungtumor.inference.card`).

:func:`build_card` is called once when a run starts: the training data come from the prepared cache's
``source``, read with ``cache.json`` when the cache is opened (written by ``prepare`` from the dataset's
dataset.json, ``data.msd.dataset_source``);
:func:`with_validation` adds, each time a checkpoint is written, the validation result of the weights in it.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from lungtumor import __version__
from lungtumor.core.config import RunConfig
from lungtumor.inference.card import CARD_VERSION


def build_card(source: dict[str, Any] | None, cfg: RunConfig, n_train: int, n_val: int) -> dict[str, Any]:
    """The model card of a run starting now on a prepared cache (primitives only).

    Args:
        source: the cache's ``source`` (``preprocessing.cache.Cache.source``; None: not recorded).
        cfg: the run's resolved config (its ``preset`` and ``model.arch`` are recorded).
        n_train: training cases of the run.
        n_val: validation cases of the run.
    """
    src = source
    if src is None:
        data: dict[str, Any] = {
            "name": "unknown (the cache does not record its dataset)",
            "path": "",
            "description": "",
            "synthetic": None,
        }
    else:
        data = {
            "name": str(src.get("name", "")),
            "path": str(src.get("path", "")),
            "description": str(src.get("description", "")),
            "synthetic": src.get("synthetic") if isinstance(src.get("synthetic"), bool) else None,
        }
        if isinstance(src.get("cases"), int):
            data["cases"] = int(src["cases"])
    data.update(train_cases=int(n_train), val_cases=int(n_val))
    return {
        "version": CARD_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "lungtumor_version": __version__,
        "preset": str(cfg.preset),
        "arch": str(cfg.model.arch),
        "data": data,
    }


def with_validation(card: dict[str, Any], epochs: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """``card`` with the validation result of epoch ``epoch`` (the weights being saved) from the history
    rows ``epochs``; without such a row (an epoch that was not validated) the card has no ``validation``."""
    out = {k: v for k, v in card.items() if k != "validation"}
    row = next((r for r in reversed(epochs) if int(r.get("epoch", -1)) == epoch), None)
    if row is not None and "val_dice" in row:
        out["validation"] = {
            "metric": "per-patient Dice",
            "val_dice": float(row["val_dice"]),
            "val_loss": float(row.get("val_loss", float("nan"))),
            "epoch": int(epoch),
        }
    return out
