"""Model registry, config validation and the input-shape check."""

from __future__ import annotations

import pytest
import torch

from lungtumor.core.config import ModelConfig
from lungtumor.core.errors import InputError
from lungtumor.models import MODELS, UNet2D, check_input_shape, create_model, padded_size


def test_registry_builds_and_lists_names_on_error():
    m = create_model(ModelConfig(base_channels=4, depth=2, in_channels=3))
    assert isinstance(m, UNet2D)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(InputError, match="model.arch") as e:
        create_model(ModelConfig(arch="vnet"))
    for name in MODELS:
        assert name in str(e.value)


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"depth": 0}, "model.depth"),
        ({"base_channels": 0}, "model.base_channels"),
        ({"norm": "layer"}, "model.norm"),
    ],
)
def test_invalid_config_names_key(kw, key):
    with pytest.raises(InputError, match=key):
        create_model(ModelConfig(**kw))


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_norms_and_gradients(norm):
    m = create_model(ModelConfig(base_channels=4, depth=3, norm=norm, in_channels=1))
    x = torch.randn(2, 1, 16, 24)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_input_shape_message_names_padded_size():
    assert padded_size(100, 130, 4) == (112, 144)
    m = create_model(ModelConfig(base_channels=4, depth=4, in_channels=1))
    with pytest.raises(ValueError, match="pad to 112x144"):
        m(torch.zeros(1, 1, 100, 130))
    with pytest.raises(ValueError, match="3 input channels"):
        check_input_shape((1, 1, 64, 64), 3, 4)
