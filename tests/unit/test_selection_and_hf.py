"""Source ordering (pure), tensor-parallel sharding and int8 post-processing."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from peerload.adapters import hf
from peerload.adapters.quantize import Int8Linear, quantize_int8
from peerload.errors import ConfigError
from peerload.identity import worker_rank
from peerload.loader.selection import order_sources


@dataclass
class Ref:
    worker_id: str
    source_load: float | None


def test_least_load_first_random_among_equals():
    refs = [Ref("busy", 5.0), Ref("a", None), Ref("b", 0.0), Ref("mid", 1.0)]
    seen = set()
    for seed in range(20):
        order = [r.worker_id for r in order_sources(refs, rng=random.Random(seed))]
        assert order[2:] == ["mid", "busy"]
        seen.add(tuple(order[:2]))
    assert seen == {("a", "b"), ("b", "a")}
    assert [r.worker_id for r in order_sources(refs, exclude={"a", "b"})] == ["mid", "busy"]


def test_worker_rank():
    assert worker_rank(tp_rank=1, pp_rank=2, tp_size=4, pp_size=3) == 9
    with pytest.raises(ConfigError, match="tp_rank 4"):
        worker_rank(tp_rank=4, tp_size=4)


def test_shard_unshard_round_trip():
    tensors = {"model.layers.0.self_attn.q_proj.weight": torch.randn(8, 4),
               "model.layers.0.self_attn.o_proj.weight": torch.randn(4, 8),
               "model.norm.weight": torch.randn(4)}
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


def test_int8_quantization_changes_layout_and_stays_close():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 16)
    ref = model(x)
    assert quantize_int8(model) == 2
    assert isinstance(model[0], Int8Linear) and model[0].weight.dtype == torch.int8
    assert model[0].weight_scale.shape == (32,)
    assert torch.allclose(model(x), ref, atol=0.05)
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(16, 32))
    quantize_int8(meta)
    assert meta[0].weight.is_meta and meta[0].weight.dtype == torch.int8
