"""Where each tensor of a vLLM model sits in the checkpoint's full tensors (imports vLLM).

vLLM's runtime parameters are shards of checkpoint tensors, cut by its parallel layers: fused
(`qkv_proj` holds the rank's q, k and v heads, `gate_up_proj` its gate and up rows), padded
(vocabulary rows past the checkpoint's, which vLLM zeroes), and replicated KV heads when there are
fewer KV heads than ranks. The boxes (`peerload.boxes`) are read off the layers themselves: their
tp rank, partition sizes and head counts, and the model's `packed_modules_mapping` for the names
of the fused parts. What no rule describes (a layer type without one, a tensor vLLM's
post-processing repacked, replaced or made, a quantized model) gets a reason instead of boxes, and
a plan that needs it fails closed naming the tensor and that reason.

Checkpoint names are vLLM's module names with the fused modules unfused (`q_proj`, ...): the
checkpoint's own for models without a `hf_to_vllm_mapper`; vLLM-to-vLLM resharding only needs both
sides to name them alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

from peerload.boxes import Box, full_box, padding_box

Boxes = tuple[Box, ...] | str  # the boxes a tensor holds, or why it has none


def model_layout(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], processed: Mapping[str, str], quantization: str
) -> dict[str, Boxes]:
    """Boxes (or a reason) per name of `tensors`, the post-processed model's runtime tensors.

    `processed`: names vLLM's post-processing changed, with how (they are not plain shards).
    """
    if quantization:
        why = f"quantized ({quantization}): its shards are not plain slices of the checkpoint"
        return {name: why for name in tensors}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{attr}" if mod_name else attr] = (mod_name, mod, attr)
    packed: Mapping[str, Sequence[str]] = getattr(model, "packed_modules_mapping", None) or {}
    out: dict[str, Boxes] = {}
    for name, t in tensors.items():
        if name in processed:
            out[name] = processed[name]
        elif name in owners:
            mod_name, mod, attr = owners[name]
            out[name] = parameter_boxes(mod_name, mod, attr, t, packed)
        else:
            # A buffer or tensor attribute the model built from its config (rotary caches): the
            # same at every rank and layout, named by itself.
            out[name] = (full_box(name, t.shape),)
    return out


def parameter_boxes(mod_name: str, mod: Any, attr: str, t: torch.Tensor, packed: Mapping[str, Sequence[str]]) -> Boxes:
    """The boxes parameter `attr` of layer `mod` holds (`t`: its runtime tensor), or why there are none."""
    kind = type(mod)
    name = f"{mod_name}.{attr}" if mod_name else attr
    shape = tuple(t.shape)
    item = t.element_size()
    if kind is QKVParallelLinear and attr in ("weight", "bias"):
        parts = _unfused(mod_name, packed, 3)
        if isinstance(parts, str):
            return parts
        kv_rank = mod.tp_rank // mod.num_kv_head_replicas  # a whole KV head, replicated when kv_heads < tp
        return _segments(
            name,
            shape,
            item,
            [
                (f"{parts[0]}.{attr}", mod.total_num_heads * mod.head_size, mod.tp_rank, mod.num_heads * mod.head_size),
                (
                    f"{parts[1]}.{attr}",
                    mod.total_num_kv_heads * mod.head_size,
                    kv_rank,
                    mod.num_kv_heads * mod.head_size,
                ),
                (
                    f"{parts[2]}.{attr}",
                    mod.total_num_kv_heads * mod.v_head_size,
                    kv_rank,
                    mod.num_kv_heads * mod.v_head_size,
                ),
            ],
        )
    if kind is MergedColumnParallelLinear and attr in ("weight", "bias"):
        parts = _unfused(mod_name, packed, len(mod.output_sizes))
        if isinstance(parts, str):
            return parts
        segments = [
            (f"{part}.{attr}", size, mod.tp_rank, size // mod.tp_size)
            for part, size in zip(parts, mod.output_sizes, strict=True)
        ]
        return _segments(name, shape, item, segments)
    if kind is ColumnParallelLinear and attr in ("weight", "bias"):
        return _segments(name, shape, item, [(name, mod.output_size, mod.tp_rank, mod.output_size_per_partition)])
    if kind is RowParallelLinear and attr == "weight" and len(shape) == 2:
        lo = mod.tp_rank * mod.input_size_per_partition
        if shape[1] != mod.input_size_per_partition:
            return f"{shape[1]} columns, but vLLM's RowParallelLinear holds {mod.input_size_per_partition}"
        return (Box(name, (shape[0], mod.input_size), (0, lo), (shape[0], lo + shape[1])),)
    if (kind is RowParallelLinear and attr == "bias") or kind is ReplicatedLinear:
        return (full_box(name, shape),)
    if kind in (VocabParallelEmbedding, ParallelLMHead) and attr == "weight":
        return _vocab_boxes(name, mod, shape, item)
    if isinstance(mod, (LinearBase, VocabParallelEmbedding)) or type(mod).__name__ == "FusedMoE":
        return f"vLLM layer {kind.__name__}.{attr}: peerload has no sharding rule for it"
    loader = getattr(getattr(mod, attr, None), "weight_loader", None)
    if loader is not None and getattr(loader, "__name__", "") != "default_weight_loader":
        # vLLM cuts it with a loader of its own: no rule says which slice this rank holds.
        return f"loaded by vLLM's {getattr(loader, '__qualname__', loader)!s}, which peerload has no sharding rule for"
    return (full_box(name, shape),)  # a plain parameter every rank holds whole (norms)


def _unfused(mod_name: str, packed: Mapping[str, Sequence[str]], count: int) -> list[str] | str:
    """The checkpoint module names of fused module `mod_name` (its packed_modules_mapping entry)."""
    head, _, leaf = mod_name.rpartition(".")
    parts = list(packed.get(leaf, ()))
    if len(parts) != count:
        return (
            f"fused module {leaf}: the model's packed_modules_mapping names {parts or 'nothing'} for its {count} parts"
        )
    return [f"{head}.{p}" if head else p for p in parts]


def _segments(name: str, shape: tuple[int, ...], item: int, segments: list[tuple[str, int, int, int]]) -> Boxes:
    """Boxes of dimension-0 segments (checkpoint tensor, its full rows, shard index, rows per shard), in order."""
    rows = sum(s[3] for s in segments)
    if not shape or rows != shape[0]:
        return f"{name}: {shape[0] if shape else 0} rows, but its layer's partition sizes give {rows}"
    boxes, offset = [], 0
    rest = shape[1:]
    for tensor, full_rows, index, per in segments:
        lo = index * per
        if lo + per > full_rows:
            return f"{name}: shard {index} of {per} rows lies past {tensor}'s {full_rows} rows"
        box = Box(tensor, (full_rows, *rest), (lo, *[0] * len(rest)), (lo + per, *rest), offset)
        boxes.append(box)
        offset += box.numel * item
    return tuple(boxes)


def _vocab_boxes(name: str, mod: Any, shape: tuple[int, ...], item: int) -> Boxes:
    """The checkpoint's vocabulary rows this rank holds, then the padding rows vLLM zeroes."""
    idx = mod.shard_indices
    if idx.num_added_elements:
        return f"{name}: {idx.num_added_elements} added vocabulary rows (LoRA) have no checkpoint rows"
    rows = idx.num_org_elements
    if not shape or shape[0] < rows:
        return f"{name}: {shape[0] if shape else 0} rows, fewer than the {rows} vocabulary rows it holds"
    rest = shape[1:]
    full = (mod.org_vocab_size, *rest)
    boxes = [Box(name, full, (idx.org_vocab_start_index, *[0] * len(rest)), (idx.org_vocab_end_index, *rest))]
    if shape[0] > rows:
        boxes.append(padding_box((shape[0] - rows, *rest), boxes[0].numel * item))
    return tuple(boxes)


def zero_padding(tensors: Mapping[str, torch.Tensor], layout: Mapping[str, Boxes]) -> None:
    """Zero every padding box, as vLLM's weight loader does (a resharding load reads no bytes there)."""
    for name, boxes in layout.items():
        if isinstance(boxes, str):
            continue
        for box in boxes:
            if box.is_padding and box.numel and tensors[name].is_contiguous():
                flat = tensors[name].view(-1)
                first = box.offset // tensors[name].element_size()
                with torch.no_grad():
                    flat[first : first + box.numel].zero_()
