"""Hugging Face glue, as the CLI uses it: what a seed publishes and a target allocates for a checkpoint.

A directory with a config.json becomes the `transformers` model its config names (`hf_models`);
a bare .safetensors file is moved as its tensors. The jobs live beside this module: reading
safetensors (`checkpoint`), config.json read once (`hf_config`), the identity (`checkpoint_identity`),
models (`hf_models`, `hf_classes`) and tensor-parallel shards (`sharding`); their public names
are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from peerload.adapters.checkpoint import checkpoint_files, checkpoint_layout, has_weights, read_checkpoint
from peerload.adapters.checkpoint_identity import CheckpointSource, checkpoint_identity, checkpoint_source
from peerload.adapters.hf_config import (
    Checkpoint,
    as_checkpoint,
    auto_config,
    has_model_config,
    open_checkpoint,
    read_model_config,
)
from peerload.adapters.hf_models import (
    build_empty_model,
    greedy_tokens,
    load_model,
    materialize,
    meta_model,
    model_names,
    post_process,
)
from peerload.adapters.sharding import check_shardable, empty_like_shard, shard, shard_dim, unshard
from peerload.adapters.sharding import layout as sharding_layout
from peerload.boxes import Box, Heads
from peerload.errors import ConfigError
from peerload.tensors import module_tensors

__all__ = [
    "Checkpoint",
    "CheckpointSource",
    "auto_config",
    "build_empty_model",
    "check_shardable",
    "checkpoint_files",
    "checkpoint_identity",
    "checkpoint_layout",
    "checkpoint_source",
    "empty_like_shard",
    "greedy_tokens",
    "has_model_config",
    "has_weights",
    "load_model",
    "materialize",
    "model_names",
    "open_checkpoint",
    "read_checkpoint",
    "read_model_config",
    "seed_tensors",
    "shard",
    "shard_dim",
    "target_tensors",
    "tensor_layout",
    "unshard",
]


def seed_tensors(
    path: str | Path | Checkpoint,
    *,
    quantize: str | None,
    tp_size: int,
    tp_rank: int,
    model_class: str | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor] | torch.nn.Module, torch.nn.Module | None]:
    """What a seed publishes for `path`: (tensors or model, the model if one was built).

    `path` may be the `Checkpoint` already opened (its config is not read again). `model_class`,
    `allow_missing`, `allow_unused` and `device` are as for `load_model`.
    """
    checkpoint = as_checkpoint(path)
    if checkpoint.has_config:
        if tp_size > 1:  # refuse before reading the weights
            check_shardable(meta_model(checkpoint, model_class), tp_size)
        model = load_model(
            checkpoint,
            quantize=quantize,
            model_class=model_class,
            allow_missing=allow_missing,
            allow_unused=allow_unused,
            device=device,
        )
        if tp_size == 1:
            return model, model
        return shard(module_tensors(model, attributes=False), tp_size, tp_rank, _heads(checkpoint)), model
    if quantize:
        raise ConfigError("--quantize needs a model directory with config.json, not a bare safetensors file")
    tensors = read_checkpoint(checkpoint.path)
    check_shardable(tensors, tp_size, what=f"the bare checkpoint {checkpoint.path}")
    return {n: t.to(device) for n, t in shard(tensors, tp_size, tp_rank).items()}, None


def target_tensors(
    path: str | Path | Checkpoint,
    *,
    quantize: str | None,
    tp_size: int,
    tp_rank: int,
    model_class: str | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, torch.Tensor] | torch.nn.Module, Callable[[], Mapping[str, torch.Tensor]] | None]:
    """What a target allocates for `path` (empty, final layout, on `device`) and how storage would fill it.

    The fallback is None for a model directory without weights. `path` may be the `Checkpoint`
    already opened; `model_class`, `allow_missing` and `allow_unused` are as for `load_model` (the
    storage fallback, which reads into host memory; its bytes are then copied into the destination).
    """
    checkpoint = as_checkpoint(path)
    if checkpoint.has_config:
        if tp_size == 1:
            destination: dict[str, torch.Tensor] | torch.nn.Module = build_empty_model(
                checkpoint, quantize=quantize, model_class=model_class, device=device
            )
        else:
            meta = meta_model(checkpoint, model_class)
            check_shardable(meta, tp_size)
            post_process(meta, quantize)
            destination = empty_like_shard(
                module_tensors(meta, attributes=False), tp_size, tp_rank, device, _heads(checkpoint)
            )

        def from_storage() -> Mapping[str, torch.Tensor]:
            model = load_model(
                checkpoint,
                quantize=quantize,
                model_class=model_class,
                allow_missing=allow_missing,
                allow_unused=allow_unused,
            )
            if tp_size > 1:
                return shard(module_tensors(model, attributes=False), tp_size, tp_rank, _heads(checkpoint))
            return module_tensors(model)

        return destination, from_storage if checkpoint.has_weights else None
    if quantize:
        raise ConfigError("--quantize needs a model directory with config.json, not a bare safetensors file")
    metas = {n: torch.empty(shape, dtype=dt, device="meta") for n, (shape, dt) in checkpoint.layout.items()}
    check_shardable(metas, tp_size, what=f"the bare checkpoint {checkpoint.path}")
    return empty_like_shard(metas, tp_size, tp_rank, device), lambda: shard(
        read_checkpoint(checkpoint.path), tp_size, tp_rank, _heads(checkpoint)
    )


def _heads(checkpoint: Checkpoint) -> Heads | None:
    """The attention heads config.json names (q/k/v/o are then cut by whole heads)."""
    return Heads.from_config(checkpoint.config)


def tensor_layout(
    path: str | Path | Checkpoint,
    *,
    quantize: str | None,
    tp_size: int,
    tp_rank: int,
    model_class: str | None = None,
    **_: object,
) -> dict[str, tuple[Box, ...]] | None:
    """Where each tensor `seed_tensors` / `target_tensors` give sits in the full checkpoint tensors.

    Boxes per tensor name (`peerload.boxes`), what a seed publishes so that targets of another
    tensor-parallel size can reshard from it. None with `quantize`: post-processed tensors are not
    slices of the checkpoint's, so a quantized seed serves only its own layout.
    """
    if quantize:
        return None
    checkpoint = as_checkpoint(path)
    heads = _heads(checkpoint)
    if checkpoint.has_config:
        meta = meta_model(checkpoint, model_class)
        return sharding_layout(module_tensors(meta, attributes=tp_size == 1), tp_size, tp_rank, heads)
    metas = {n: torch.empty(shape, dtype=dt, device="meta") for n, (shape, dt) in checkpoint.layout.items()}
    return sharding_layout(metas, tp_size, tp_rank, heads)
