"""Model cards: what a checkpoint says about itself (its training data, recipe, validation and age).

Training writes the card into ``hyper_parameters["lungtumor"]["card"]`` (``training.card.build_card``), with
primitives only so that ``torch.load(weights_only=True)`` reads it::

    {"version": 1, "created": "2025-01-31T12:00:00+00:00", "lungtumor_version": "0.1.0",
     "preset": "demo", "arch": "unet2d",
     "data": {"name": str, "path": str, "synthetic": bool | None, "description": str,
              "cases": int, "train_cases": int, "val_cases": int},
     "validation": {"metric": "per-patient Dice", "val_dice": float, "val_loss": float, "epoch": int}}

``data.synthetic`` is True for the phantoms of ``lungtumor synth`` (recognised by their dataset.json), False
for any other dataset (real CT as far as lungtumor can tell) and None when the cache did not record where its
data came from. A checkpoint written before cards existed has none: :func:`card_of` then returns
``{"version": 0}`` and every reader says "unknown". This module is pure (no torch): the checkpoint reader
hands it the stored dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The card format written by this version.
CARD_VERSION = 1

#: The warning every output of a phantom-only model carries (CLI, report, manifest).
PHANTOM_WARNING = (
    "this model was trained only on synthetic phantoms (lungtumor synth): it has never seen a real CT "
    "and is not for clinical use"
)


def card_of(info: dict[str, Any]) -> dict[str, Any]:
    """The model card in a checkpoint's ``hyper_parameters["lungtumor"]``; ``{"version": 0}`` when absent."""
    card = info.get("card") if isinstance(info, dict) else None
    return dict(card) if isinstance(card, dict) else {"version": 0}


def trained_on_phantoms_only(card: dict[str, Any]) -> bool:
    """True when the card says the model saw nothing but synthetic phantoms."""
    data = card.get("data")
    return isinstance(data, dict) and data.get("synthetic") is True


def data_summary(card: dict[str, Any]) -> str:
    """The training data in a few words, e.g. ``lungtumor-phantoms (24 cases, synthetic phantoms)``."""
    data = card.get("data")
    if not isinstance(data, dict) or not data:
        return "training data unknown (no model card: a checkpoint from before lungtumor recorded one)"
    kind = {True: "synthetic phantoms", False: "real CT"}.get(data.get("synthetic"), "kind unknown")
    name = str(data.get("name") or "unnamed dataset")
    cases = data.get("cases")
    count = f"{cases} cases, " if isinstance(cases, int) else ""
    return f"{name} ({count}{kind})"


def validation_summary(card: dict[str, Any]) -> str:
    """The card's validation result in a few words, or ``""``."""
    v = card.get("validation")
    if not isinstance(v, dict) or not isinstance(v.get("val_dice"), (int, float)):
        return ""
    return f"val Dice {float(v['val_dice']):.3f} (epoch {v.get('epoch', '?')})"


def card_line(path: str | Path, card: dict[str, Any]) -> str:
    """One line naming a model and its training data, as ``predict`` prints it."""
    name = str(path)
    if not card.get("version"):
        return f"model {name}: {data_summary(card)}"
    recipe = ", ".join(
        str(x)
        for x in (
            card.get("arch"),
            f"preset {card['preset']}" if card.get("preset") else None,
            f"lungtumor {card['lungtumor_version']}" if card.get("lungtumor_version") else None,
            f"trained {str(card['created'])[:10]}" if card.get("created") else None,
        )
        if x
    )
    val = validation_summary(card)
    return f"model {name} ({recipe}) trained on {data_summary(card)}" + (f"; {val}" if val else "")


def card_rows(card: dict[str, Any]) -> dict[str, str]:
    """The card as (name -> value) rows for a report's metadata table."""
    rows = {"Model trained on": data_summary(card)}
    if not card.get("version"):
        return rows
    for key, label in (("preset", "Model preset"), ("arch", "Model architecture"), ("created", "Model date")):
        if card.get(key):
            rows[label] = str(card[key])
    if card.get("lungtumor_version"):
        rows["Model lungtumor version"] = str(card["lungtumor_version"])
    val = validation_summary(card)
    if val:
        rows["Model validation"] = val
    return rows
