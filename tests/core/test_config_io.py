"""Config files: YAML numbers as users write them, and one-line errors for what is not a number."""

from __future__ import annotations

import pytest

from lungtumor.core.config_io import config_from_dict, load_config
from lungtumor.core.errors import InputError


@pytest.mark.parametrize("text, want", [("1e-4", 1e-4), ("5E-4", 5e-4), ("+2e-3", 2e-3), ("1.0e-4", 1e-4)])
def test_exponent_without_a_dot_is_a_number(tmp_path, text, want):
    """PyYAML reads ``1e-4`` as a string (YAML 1.1); a config's ``lr: 1e-4`` still means the number."""
    p = tmp_path / "cfg.yaml"
    p.write_text(f"train:\n  lr: {text}\nnodule:\n  lr: {text}\n")
    cfg = load_config(p)
    assert cfg.train.lr == pytest.approx(want) and isinstance(cfg.train.lr, float)
    assert cfg.nodule.lr == pytest.approx(want)


@pytest.mark.parametrize("text", ["fast", "1e-4x", "e-4", "1e"])
def test_a_word_is_still_not_a_number(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(f"train:\n  lr: '{text}'\n")
    with pytest.raises(InputError, match=r"train\.lr: expected a number"):
        load_config(p)


def test_integer_fields_do_not_take_exponent_strings():
    """Only float fields read the exponent form: ``epochs: 1e1`` stays an error (an integer was meant)."""
    with pytest.raises(InputError, match=r"train\.epochs: expected an integer"):
        config_from_dict({"train": {"epochs": "1e1"}}, source="--set")
