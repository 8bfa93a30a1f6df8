"""Megatron-style tensor-parallel shards of Llama/Qwen2-like tensors, by name: split, check, reassemble."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from peerload.errors import ConfigError
from peerload.tensors import module_tensors

# Which dim each rank splits: column-parallel modules on dim 0, row-parallel ones on dim 1.
_COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "embed_tokens", "lm_head")
_ROW_PARALLEL = ("o_proj", "down_proj")


def shard_dim(name: str) -> int | None:
    """The dimension a tensor is split on across tp ranks, or None if every rank holds it whole."""
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 else ""
    leaf = parts[-1]
    if module in _COLUMN_PARALLEL and leaf in ("weight", "bias", "weight_scale"):
        return 0
    if module in _ROW_PARALLEL and leaf == "weight":
        return 1
    return None


def shard(tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int) -> dict[str, torch.Tensor]:
    """Rank `tp_rank`'s contiguous shard of every tensor (a copy; replicated tensors cloned)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        dim = shard_dim(name)
        if tp_size == 1 or dim is None:
            out[name] = t.detach().clone()
            continue
        if t.shape[dim] % tp_size:
            raise ConfigError(f"{name}: dimension {dim} ({t.shape[dim]}) is not divisible by tp_size {tp_size}")
        out[name] = t.detach().chunk(tp_size, dim=dim)[tp_rank].contiguous().clone()
    return out


def check_shardable(model: torch.nn.Module | Mapping[str, torch.Tensor], tp_size: int, what: str = "") -> None:
    """Refuse `tp_size` > 1 when a matrix matches no sharding rule (rather than a half-sharded model).

    Raises:
        ConfigError: naming the architecture (or `what`) and some of the uncovered tensors.
    """
    if tp_size == 1:
        return
    is_model = isinstance(model, torch.nn.Module)
    tensors = module_tensors(model, attributes=False) if isinstance(model, torch.nn.Module) else model
    uncovered = sorted(n for n, t in tensors.items() if t.dim() >= 2 and shard_dim(n) is None)
    if uncovered:
        what = what or (type(model).__name__ if is_model else "these tensors")
        raise ConfigError(
            f"--tp-size {tp_size}: peerload has no tensor-parallel sharding rules for {what}: "
            f"{len(uncovered)} matrix tensor(s) match none, such as {', '.join(uncovered[:3])}. peerload shards "
            "Llama-style models (q/k/v/o_proj, gate/up/down_proj, embed_tokens, lm_head); use --tp-size 1"
        )


def unshard(shards: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reassemble full tensors from every rank's shard (inverse of `shard`)."""
    out = {}
    for name in shards[0]:
        dim = shard_dim(name)
        out[name] = (
            shards[0][name] if dim is None or len(shards) == 1 else torch.cat([s[name] for s in shards], dim=dim)
        )
    return out


def empty_like_shard(
    tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Uninitialised tensors shaped like `shard(tensors, ...)` (works on meta tensors)."""
    out = {}
    for name, t in tensors.items():
        shape = list(t.shape)
        dim = shard_dim(name)
        if tp_size > 1 and dim is not None:
            if shape[dim] % tp_size:
                raise ConfigError(f"{name}: dimension {dim} ({shape[dim]}) is not divisible by tp_size {tp_size}")
            shape[dim] //= tp_size
        out[name] = torch.empty(shape, dtype=t.dtype, device=device)
    return out
