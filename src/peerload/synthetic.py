"""The one writer of synthetic checkpoints (bf16, deterministic bytes, distinct per tensor):
Llama-like ones of a requested size and tensor count for `peerload bench`, uniform ones for
`peerload chaos`. Contents are cheap to regenerate in any process, so a seed and a target can
each make the same model without sharing a file."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

# Per layer: 2 norms, q/k/v/o, gate/up/down (the Llama inventory); plus embed, final norm, lm_head.
_PER_LAYER = 9
_GLOBAL = 3
_ELEM = 2  # bf16
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: spreads a counter over all bits


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ELEM


def inventory(total_bytes: int, n_tensors: int) -> list[TensorSpec]:
    """Llama-shaped tensors (GQA 4:1, MLP 8/3 h) totalling about `total_bytes`, about `n_tensors` of them."""
    layers = max(1, (n_tensors - _GLOBAL) // _PER_LAYER)
    # Per layer 2h^2 (q,o) + 2*(h/4)*h (k,v) + 3*(8h/3)*h (mlp) = 10.5 h^2 elements; embed and
    # head take ~8 h^2 each, as in Llama-7B (vocab ~ 8 h). Solve for h, round to 64.
    h = max(64, int(math.sqrt(total_bytes / _ELEM / (10.5 * layers + 16))) // 64 * 64)
    kv, inter = h // 4, max(64, round(8 * h / 3 / 64) * 64)
    specs: list[TensorSpec] = []
    for i in range(layers):
        p = f"model.layers.{i}"
        specs += [
            TensorSpec(f"{p}.input_layernorm.weight", (h,)),
            TensorSpec(f"{p}.self_attn.q_proj.weight", (h, h)),
            TensorSpec(f"{p}.self_attn.k_proj.weight", (kv, h)),
            TensorSpec(f"{p}.self_attn.v_proj.weight", (kv, h)),
            TensorSpec(f"{p}.self_attn.o_proj.weight", (h, h)),
            TensorSpec(f"{p}.post_attention_layernorm.weight", (h,)),
            TensorSpec(f"{p}.mlp.gate_proj.weight", (inter, h)),
            TensorSpec(f"{p}.mlp.up_proj.weight", (inter, h)),
            TensorSpec(f"{p}.mlp.down_proj.weight", (h, inter)),
        ]
    # The vocabulary absorbs the rounding so the total lands close to the request.
    rest = total_bytes - sum(s.nbytes for s in specs) - h * _ELEM
    vocab = max(64, rest // (2 * h * _ELEM) // 64 * 64)
    specs += [
        TensorSpec("model.embed_tokens.weight", (vocab, h)),
        TensorSpec("model.norm.weight", (h,)),
        TensorSpec("lm_head.weight", (vocab, h)),
    ]
    return specs


def uniform(count: int, tensor_bytes: int) -> list[TensorSpec]:
    """`count` flat tensors of `tensor_bytes` bytes each (rounded down to whole bf16 elements)."""
    return [TensorSpec(f"layer{i}.weight", (max(1, tensor_bytes // _ELEM),)) for i in range(count)]


def tensor_content(index: int, spec: TensorSpec) -> torch.Tensor:
    """Deterministic, distinct bytes for tensor `index` (cheap to regenerate in any process)."""
    n = spec.nbytes // 8
    words = torch.arange(index * 1_000_003, index * 1_000_003 + n, dtype=torch.int64).mul_(_GOLDEN)
    return words.view(torch.bfloat16).reshape(spec.shape)


def make_tensors(specs: list[TensorSpec]) -> dict[str, torch.Tensor]:
    return {s.name: tensor_content(i, s) for i, s in enumerate(specs)}


def empty_like_specs(specs: list[TensorSpec]) -> dict[str, torch.Tensor]:
    """The destination a fresh replica allocates: untouched memory in the final layout."""
    return {s.name: torch.empty(s.shape, dtype=torch.bfloat16) for s in specs}


def write_checkpoint(path: Path, specs: list[TensorSpec]) -> Path:
    """Write (or reuse) a safetensors file of `specs`, fsynced so its pages can be evicted."""
    from safetensors.torch import save_file

    if _has_layout(path, specs):
        return path
    tmp = path.with_suffix(".tmp")
    save_file(make_tensors(specs), str(tmp), metadata={"generator": "peerload synthetic"})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())  # dirty pages cannot be dropped by posix_fadvise(DONTNEED)
    tmp.replace(path)
    return path


def _has_layout(path: Path, specs: list[TensorSpec]) -> bool:
    """Whether `path` is a safetensors file holding exactly `specs` (a cached checkpoint to reuse)."""
    from safetensors import SafetensorError

    from peerload.adapters.checkpoint import checkpoint_layout

    if not path.is_file():
        return False
    try:
        layout = checkpoint_layout(path)
    except (OSError, ValueError, SafetensorError):  # unreadable or not safetensors: write it anew
        return False
    return layout == {s.name: (s.shape, torch.bfloat16) for s in specs}
