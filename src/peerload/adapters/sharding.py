"""Megatron-style tensor-parallel shards of Llama/Qwen2-like and Phi-3-like tensors, by name.

Which elements a rank holds is `peerload.boxes.tp_boxes` (the layout a seed publishes and a
resharding target plans from): column-parallel modules split dim 0, row-parallel ones dim 1,
fused `qkv_proj`/`gate_up_proj` hold one box per segment back to back, and with `heads` known
(config.json) q/k/v/o are cut by whole heads, KV heads replicated when there are fewer than ranks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from peerload.boxes import Box, Heads, local_shape, shard_dim, tp_boxes
from peerload.errors import ConfigError
from peerload.tensors import module_tensors

__all__ = ["check_shardable", "empty_like_shard", "layout", "shard", "shard_dim", "take", "unshard"]


def take(t: torch.Tensor, boxes: tuple[Box, ...]) -> torch.Tensor:
    """A contiguous copy of `boxes` of the full tensor `t`, back to back (concatenated along dim 0)."""
    pieces = [t[tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))] for box in boxes]
    whole = torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]
    return whole.detach().contiguous().clone()


def layout(
    tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int, heads: Heads | None = None
) -> dict[str, tuple[Box, ...]]:
    """The boxes rank `tp_rank` of `tp_size` holds of each full tensor (works on meta tensors).

    Raises:
        ConfigError: a tensor cannot be split evenly (naming it).
    """
    return {n: tp_boxes(n, t.shape, tp_size, tp_rank, heads, t.element_size()) for n, t in tensors.items()}


def shard(
    tensors: Mapping[str, torch.Tensor], tp_size: int, tp_rank: int, heads: Heads | None = None
) -> dict[str, torch.Tensor]:
    """Rank `tp_rank`'s contiguous shard of every tensor (a copy; replicated tensors cloned)."""
    boxes = layout(tensors, tp_size, tp_rank, heads)
    return {n: take(t, boxes[n]) for n, t in tensors.items()}


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
            "Llama-style models (q/k/v/o_proj, gate/up/down_proj, embed_tokens, lm_head) and fused Phi-3-style "
            "ones (qkv_proj, gate_up_proj); use --tp-size 1"
        )


def unshard(shards: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Reassemble full tensors from every rank's shard (inverse of `shard` for unfused tensors split evenly)."""
    out = {}
    for name in shards[0]:
        dim = shard_dim(name)
        out[name] = (
            shards[0][name] if dim is None or len(shards) == 1 else torch.cat([s[name] for s in shards], dim=dim)
        )
    return out


def empty_like_shard(
    tensors: Mapping[str, torch.Tensor],
    tp_size: int,
    tp_rank: int,
    device: str = "cpu",
    heads: Heads | None = None,
) -> dict[str, torch.Tensor]:
    """Uninitialised tensors shaped like `shard(tensors, ...)` (works on meta tensors)."""
    boxes = layout(tensors, tp_size, tp_rank, heads)
    if any(not b for b in boxes.values()):
        raise ConfigError("a tensor holds no box")
    return {n: torch.empty(local_shape(boxes[n]), dtype=t.dtype, device=device) for n, t in tensors.items()}
