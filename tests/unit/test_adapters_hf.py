"""Tensor-parallel sharding of HF checkpoints."""

from __future__ import annotations

import pytest
import torch

from peerload.adapters import hf
from peerload.errors import ConfigError


def test_shard_unshard_round_trip():
    tensors = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 4),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(4, 8),
        "model.norm.weight": torch.randn(4),
    }
    shards = [hf.shard(tensors, 2, r) for r in range(2)]
    assert shards[0]["model.layers.0.self_attn.q_proj.weight"].shape == (4, 4)
    assert shards[1]["model.layers.0.self_attn.o_proj.weight"].shape == (4, 4)
    assert torch.equal(shards[1]["model.norm.weight"], tensors["model.norm.weight"])
    back = hf.unshard(shards)
    assert all(torch.equal(back[n], tensors[n]) for n in tensors)
    empty = hf.empty_like_shard({n: t.to("meta") for n, t in tensors.items()}, 2, 1)
    assert {n: tuple(t.shape) for n, t in empty.items()} == {n: tuple(t.shape) for n, t in shards[1].items()}
    with pytest.raises(ConfigError, match="not divisible"):
        hf.shard(tensors, 3, 0)
