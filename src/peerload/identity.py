"""SourceIdentity, the source-id hash (must equal ModelExpress' `compute_mx_source_id`), rank mapping."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any

from peerload.errors import ConfigError


class BackendFramework(IntEnum):
    UNKNOWN = 0
    VLLM = 1
    SGLANG = 2
    TRT_LLM = 3


class SourceType(IntEnum):
    WEIGHTS = 0


# Hashed only when non-empty, so adding them later keeps existing ids stable.
OPTIONAL_HASHED_FIELDS = (
    "backend_framework_version",
    "torch_version",
    "cuda_version",
    "triton_version",
    "gpu_arch",
    "compile_config_digest",
)


@dataclass(frozen=True)
class SourceIdentity:
    """What makes two instances' weights interchangeable (the protocol's `SourceIdentity`)."""

    model_name: str
    mx_version: str = "1"
    mx_source_type: int = SourceType.WEIGHTS
    backend_framework: int = BackendFramework.UNKNOWN
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    expert_parallel_size: int = 1
    dtype: str = ""
    quantization: str = ""
    extra_parameters: Mapping[str, str] = field(default_factory=dict)
    revision: str = ""
    backend_framework_version: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    triton_version: str = ""
    gpu_arch: str = ""
    compile_config_digest: str = ""

    def __post_init__(self) -> None:
        if not self.model_name or not self.model_name.strip():
            raise ConfigError("identity.model_name is required (e.g. --model-name meta-llama/Llama-3-8B)")
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "expert_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"identity.{name} must be an integer >= 1, got {value!r}")
        # A plain dict keeps the dataclass hashable-by-id but immutable in spirit.
        object.__setattr__(self, "extra_parameters", dict(self.extra_parameters))

    def source_id(self) -> str:
        """First 16 hex chars of SHA-256 of the canonical JSON (same bytes as ModelExpress)."""
        return compute_source_id(self)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceIdentity:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown identity fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def canonical_fields(identity: SourceIdentity) -> dict[str, Any]:
    """The hashed fields as the hash sees them: lower-cased strings, optional ones only when set."""
    extra: dict[str, str] = {}
    # Sort by the original key first so that, of keys equal up to case, the same one wins
    # everywhere (the Rust server and the official Python client agree on this rule).
    for key, value in sorted(identity.extra_parameters.items()):
        extra.setdefault(key.lower(), value.lower())
    payload: dict[str, Any] = {
        "mx_version": identity.mx_version.lower(),
        "mx_source_type": int(identity.mx_source_type),
        "model_name": identity.model_name.lower(),
        "backend_framework": int(identity.backend_framework),
        "tensor_parallel_size": identity.tensor_parallel_size,
        "pipeline_parallel_size": identity.pipeline_parallel_size,
        "expert_parallel_size": identity.expert_parallel_size,
        "dtype": identity.dtype.lower(),
        "quantization": identity.quantization.lower(),
        "extra_parameters": extra,
        "revision": identity.revision.lower(),
    }
    payload.update(
        {name: getattr(identity, name).lower() for name in OPTIONAL_HASHED_FIELDS if getattr(identity, name)}
    )
    return payload


def canonical_json(identity: SourceIdentity) -> str:
    """The canonical form hashed into the source id: lower-cased strings, sorted keys."""
    return json.dumps(canonical_fields(identity), sort_keys=True, separators=(",", ":"))


def compute_source_id(identity: SourceIdentity) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def worker_rank(tp_rank: int = 0, pp_rank: int = 0, tp_size: int = 1, pp_size: int = 1) -> int:
    """Global worker rank of a (tp_rank, pp_rank) shard: pp_rank * tp_size + tp_rank."""
    if not 0 <= tp_rank < tp_size:
        raise ConfigError(f"tp_rank {tp_rank} is out of range for tp_size {tp_size}")
    if not 0 <= pp_rank < pp_size:
        raise ConfigError(f"pp_rank {pp_rank} is out of range for pp_size {pp_size}")
    return pp_rank * tp_size + tp_rank


def new_worker_id(rank: int) -> str:
    """A readable, unique worker id: host, pid, rank and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-r{rank}-{uuid.uuid4().hex[:8]}"
