"""Tensor-parallel sharding of HF checkpoints."""

from __future__ import annotations

import pytest
import torch

from peerload.adapters import hf
from peerload.errors import ConfigError
from peerload.tensors import module_tensors


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


# -- model class, strict disk loading, checkpoint names ---------------------------------------------


def test_loads_the_class_config_json_names(tiny_model):
    model = hf.load_model(tiny_model("bert"))
    assert type(model).__name__ == "BertModel"
    assert "pooler.dense.weight" in dict(model.named_parameters())  # not dropped, no `bert.` prefix
    assert type(hf.build_empty_model(tiny_model("bert"))).__name__ == "BertModel"


def test_strict_loading_names_missing_and_unused_tensors(tiny_model):
    from peerload.errors import CheckpointMismatch

    with pytest.raises(CheckpointMismatch) as caught:
        hf.load_model(tiny_model("bert"), model_class="BertForMaskedLM")
    error = caught.value
    assert error.model_class == "BertForMaskedLM"
    assert "cls.predictions.transform.dense.weight" in error.missing
    assert error.unused == ["pooler.dense.bias", "pooler.dense.weight"]
    assert "not in it: cls.predictions" in str(error) and "not used by the model: pooler.dense.bias" in str(error)
    with pytest.raises(CheckpointMismatch) as only_missing:
        hf.load_model(tiny_model("bert"), model_class="BertForMaskedLM", allow_unused=True)
    assert only_missing.value.unused == [] and only_missing.value.missing == error.missing
    model = hf.load_model(tiny_model("bert"), model_class="BertForMaskedLM", allow_missing=True, allow_unused=True)
    assert type(model).__name__ == "BertForMaskedLM"


def test_buffers_the_model_makes_itself_are_not_missing(tiny_model):
    model = hf.load_model(tiny_model("llama"))  # rotary inv_freq: a non-persistent buffer, not in the file
    assert any(name.endswith("rotary_emb.inv_freq") for name, _ in model.named_buffers())


def test_model_names_follow_transformers_renames_and_prefixes(tiny_model):
    from safetensors import safe_open

    vit = tiny_model("vit")
    model = hf.load_model(vit)
    with safe_open(str(vit / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    mapping = hf.model_names(model, names)
    assert mapping["vit.encoder.layer.0.attention.attention.query.weight"] == "vit.layers.0.attention.q_proj.weight"
    assert set(mapping) == set(names)
    # A base-model checkpoint read into a head class gains the base-model prefix.
    masked = hf.load_model(tiny_model("bert"), model_class="BertForMaskedLM", allow_missing=True, allow_unused=True)
    assert hf.model_names(masked, ["embeddings.word_embeddings.weight", "pooler.dense.weight"]) == {
        "embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight"
    }


@pytest.mark.parametrize(("kind", "architecture"), [("gpt2", "GPT2LMHeadModel"), ("bert", "BertModel")])
def test_tp_without_sharding_rules_names_the_architecture(tiny_model, kind, architecture):
    with pytest.raises(
        ConfigError, match=f"--tp-size 2: peerload has no tensor-parallel sharding rules for {architecture}"
    ):
        hf.seed_tensors(tiny_model(kind), quantize=None, tp_size=2, tp_rank=0)
    with pytest.raises(ConfigError, match=architecture):
        hf.target_tensors(tiny_model(kind), quantize=None, tp_size=2, tp_rank=1)


def test_tp_of_a_llama_style_model_is_sharded(tiny_model):
    full = dict(hf.build_empty_model(tiny_model("llama")).named_parameters())
    destination, _ = hf.target_tensors(tiny_model("llama"), quantize=None, tp_size=2, tp_rank=1)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert destination[name].shape[0] * 2 == full[name].shape[0]


def test_targets_and_seeds_allocate_on_the_device_asked_for(tiny_model):
    """`device` reaches every tensor (CUDA is not available here: the meta device stands in)."""
    path = tiny_model("llama")
    destination, _ = hf.target_tensors(path, quantize=None, tp_size=1, tp_rank=0, device="meta")
    assert {t.device.type for t in module_tensors(destination).values()} == {"meta"}
    shards, _ = hf.target_tensors(path, quantize=None, tp_size=2, tp_rank=1, device="meta")
    assert {t.device.type for t in shards.values()} == {"meta"}
    model, _ = hf.seed_tensors(path, quantize=None, tp_size=1, tp_rank=0, device="meta")
    assert {t.device.type for t in module_tensors(model).values()} == {"meta"}


def test_layout_published_for_a_gqa_llama_matches_the_shards(tiny_model):
    """kv_heads (1) < tp (2): both ranks hold the one KV head whole (replicated), not half a head each."""
    path = tiny_model("llama")
    for rank in (0, 1):
        destination, _ = hf.target_tensors(path, quantize=None, tp_size=2, tp_rank=rank)
        layout = hf.tensor_layout(path, quantize=None, tp_size=2, tp_rank=rank)
        assert set(layout) == set(destination)
        k = layout["model.layers.0.self_attn.k_proj.weight"]
        assert [(b.start, b.stop) for b in k] == [((0, 0), (16, 32))]
        for name, boxes in layout.items():
            assert sum(b.numel for b in boxes) == destination[name].numel(), name
    model_layout = hf.tensor_layout(path, quantize=None, tp_size=1, tp_rank=0)
    model, _ = hf.target_tensors(path, quantize=None, tp_size=1, tp_rank=0)
    assert set(model_layout) == set(module_tensors(model))
    assert all(boxes[0].is_full() for boxes in model_layout.values())
    assert hf.tensor_layout(path, quantize="int8", tp_size=1, tp_rank=0) is None
