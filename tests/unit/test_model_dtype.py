"""The dtype rule a seed and a target share for a model directory (config.json)."""

from __future__ import annotations

import pytest

from peerload.adapters.hf_config import DEFAULT_MODEL_DTYPE, model_dtype
from peerload.errors import ConfigError


@pytest.mark.parametrize(
    ("config", "override", "expected"),
    [
        ({"torch_dtype": "bfloat16"}, None, "bfloat16"),
        ({"dtype": "torch.float16"}, None, "float16"),
        ({}, None, DEFAULT_MODEL_DTYPE),  # e.g. all-MiniLM-L6-v2: transformers builds float32
        ({"torch_dtype": "bfloat16"}, "float32", "float32"),  # --dtype wins
        ({}, "bfloat16", "bfloat16"),
    ],
)
def test_the_rule(config: dict, override: str | None, expected: str) -> None:
    assert model_dtype(config, override) == expected


@pytest.mark.parametrize(
    ("config", "override", "named"), [({}, "int8", "--dtype"), ({"torch_dtype": "nope"}, None, "config.json")]
)
def test_a_dtype_that_is_not_floating_is_refused_naming_where_it_came_from(config, override, named) -> None:
    with pytest.raises(ConfigError, match=named):
        model_dtype(config, override)
