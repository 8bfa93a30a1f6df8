"""The source identity of a checkpoint: the fields a seed of it publishes and a target of it looks for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerload.adapters.hf_config import Checkpoint, check_exists, open_checkpoint
from peerload.identity import SourceIdentity, worker_rank


@dataclass(frozen=True)
class CheckpointSource:
    """A checkpoint opened for a seed or a load: what was read, the identity and the worker rank."""

    checkpoint: Checkpoint
    identity: SourceIdentity
    rank: int


def checkpoint_source(
    path: str | Path,
    model_name: str,
    *,
    revision: str = "",
    tp_size: int = 1,
    tp_rank: int = 0,
    pp_size: int = 1,
    pp_rank: int = 0,
    ep_size: int = 1,
    backend_framework: int = 0,
    dtype: str | None = None,
) -> CheckpointSource:
    """Open `path` (every header and config.json read and checked now, once), its identity and rank.

    Raises:
        ConfigError: `path` does not exist, or a rank is out of range of its size.
        CheckpointError, MissingExtraError: as for `open_checkpoint`.
    """
    check_exists(Path(path))
    rank = worker_rank(tp_rank, pp_rank, tp_size, pp_size)
    checkpoint = open_checkpoint(path, dtype)
    identity = checkpoint_identity(
        checkpoint,
        model_name,
        revision=revision,
        tp_size=tp_size,
        pp_size=pp_size,
        ep_size=ep_size,
        backend_framework=backend_framework,
    )
    return CheckpointSource(checkpoint, identity, rank)


def checkpoint_identity(
    checkpoint: Checkpoint,
    model_name: str,
    *,
    revision: str = "",
    tp_size: int = 1,
    pp_size: int = 1,
    ep_size: int = 1,
    backend_framework: int = 0,
) -> SourceIdentity:
    """The identity of a seed or load of `checkpoint` with these parallel sizes."""
    return SourceIdentity(
        model_name=model_name,
        revision=revision,
        backend_framework=backend_framework,
        tensor_parallel_size=tp_size,
        pipeline_parallel_size=pp_size,
        expert_parallel_size=ep_size,
        # Runtime post-processing (--quantize) is not part of the identity: a target that forgot
        # it finds the source and is told exactly which tensors differ.
        dtype=checkpoint.dtype or checkpoint_dtype(checkpoint.layout),
        quantization=checkpoint_quantization(checkpoint.config),
    )


def checkpoint_dtype(layout: Mapping[str, tuple[Any, Any]]) -> str:
    """A bare safetensors file's dtype: the commonest one among its tensors (moved as stored)."""
    counts = Counter(str(dt).replace("torch.", "") for _, dt in layout.values())
    return counts.most_common(1)[0][0] if counts else ""


def checkpoint_quantization(config: Mapping[str, Any]) -> str:
    """The checkpoint's own quantization method (config.json quantization_config), or ""."""
    quantization = config.get("quantization_config")
    return str(quantization.get("quant_method", "")) if isinstance(quantization, dict) else ""
