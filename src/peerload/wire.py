"""The one place protobuf messages become peerload dataclasses and back.

The coordinator client, the coordinator, the seed's services and their clients all convert
through here, so no module above this one touches generated message fields directly.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.peerload.v1 import seed_pb2
from peerload.errors import ConfigError
from peerload.identity import OPTIONAL_HASHED_FIELDS, SourceIdentity
from peerload.manifest import Manifest, RegionEntry, TensorEntry

# A worker's lifecycle status, named after the wire enum `SourceStatus` (SOURCE_STATUS_READY ->
# READY): the .proto is the one list of statuses.
SourceStatus = enum.IntEnum(  # type: ignore[misc]
    "SourceStatus", {name.removeprefix("SOURCE_STATUS_"): value for name, value in pb.SourceStatus.items()}
)


def status_name(status: int) -> str:
    """READY, STALE, ... for a wire status value ("UNKNOWN" for values this version lacks)."""
    try:
        return SourceStatus(status).name
    except ValueError:
        return "UNKNOWN"


class TensorInfo(NamedTuple):
    """One registered tensor: where it lives in the seed's memory."""

    name: str
    addr: int
    size: int  # bytes
    device_id: int = 0
    dtype: str = ""  # e.g. "torch.bfloat16"


@dataclass(frozen=True)
class WorkerInfo:
    """What a seed worker publishes (input of `CoordinatorClient.publish`)."""

    rank: int
    agent_name: str = ""
    nixl_metadata: bytes | None = None
    transfer_engine_session_id: str | None = None
    tensors: Sequence[TensorInfo | tuple[str, int, int, int, str]] = ()
    worker_grpc_endpoint: str = ""
    metadata_endpoint: str = ""
    accelerator: str = ""
    topology: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nixl_metadata is not None and self.transfer_engine_session_id is not None:
            raise ConfigError("WorkerInfo takes nixl_metadata or transfer_engine_session_id, not both")
        if self.rank < 0:
            raise ConfigError(f"WorkerInfo.rank must be >= 0, got {self.rank}")


@dataclass(frozen=True)
class SourceRef:
    """One listed worker (wire `SourceInstanceRef`)."""

    mx_source_id: str
    worker_id: str
    model_name: str
    worker_rank: int
    accelerator: str
    updated_at_ms: int
    topology: dict[str, str]
    source_load: float | None = None
    training_step: int | None = None
    layout_signature: str | None = None

    @property
    def age_s(self) -> float:
        """Seconds since the last publish or heartbeat."""
        return max(0.0, time.time() - self.updated_at_ms / 1000)


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's full metadata (wire `GetMetadataResponse`)."""

    mx_source_id: str
    worker_id: str
    rank: int
    status: SourceStatus
    updated_at_ms: int
    agent_name: str
    worker_grpc_endpoint: str
    metadata_endpoint: str
    accelerator: str
    nixl_metadata: bytes | None
    transfer_engine_session_id: str | None
    tensors: list[TensorInfo]
    topology: dict[str, str]
    # None when the published identity is not one peerload accepts (e.g. a size of 0).
    identity: SourceIdentity | None

    @property
    def transport(self) -> str:
        """ "nixl", "transfer_engine" or "" from the backend metadata the worker published."""
        if self.nixl_metadata is not None:
            return "nixl"
        if self.transfer_engine_session_id is not None:
            return "transfer_engine"
        return ""

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.updated_at_ms / 1000)


# -- SourceIdentity ----------------------------------------------------------------------------

_STRING_FIELDS = ("mx_version", "model_name", "dtype", "quantization", "revision", *OPTIONAL_HASHED_FIELDS)
_INT_FIELDS = (
    "mx_source_type",
    "backend_framework",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "expert_parallel_size",
)


def identity_to_proto(identity: SourceIdentity) -> pb.SourceIdentity:
    """Build the wire message for an identity."""
    message = pb.SourceIdentity(extra_parameters=dict(identity.extra_parameters))
    for name in _STRING_FIELDS:
        setattr(message, name, getattr(identity, name))
    for name in _INT_FIELDS:
        setattr(message, name, int(getattr(identity, name)))
    return message


def identity_from_proto(message: pb.SourceIdentity) -> SourceIdentity:
    """Build an identity from the wire; raises ConfigError if it is not a valid identity."""
    values: dict[str, object] = {name: getattr(message, name) for name in (*_STRING_FIELDS, *_INT_FIELDS)}
    values["extra_parameters"] = dict(message.extra_parameters)
    return SourceIdentity(**values)  # type: ignore[arg-type]


# -- coordinator records ------------------------------------------------------------------------


def worker_to_proto(worker: WorkerInfo) -> pb.WorkerMetadata:
    tensors = [
        pb.TensorDescriptor(name=t[0], addr=t[1], size=t[2], device_id=t[3], dtype=t[4])
        for t in (TensorInfo(*t) for t in worker.tensors)
    ]
    message = pb.WorkerMetadata(
        worker_rank=worker.rank,
        agent_name=worker.agent_name,
        worker_grpc_endpoint=worker.worker_grpc_endpoint,
        metadata_endpoint=worker.metadata_endpoint,
        accelerator=worker.accelerator,
        topology=dict(worker.topology),
        tensor_source=pb.TensorSourceMetadata(tensors=tensors),
    )
    if worker.nixl_metadata is not None:
        message.nixl_metadata = worker.nixl_metadata
    elif worker.transfer_engine_session_id is not None:
        message.transfer_engine_session_id = worker.transfer_engine_session_id
    return message


def ref_from_proto(ref: pb.SourceInstanceRef) -> SourceRef:
    return SourceRef(
        mx_source_id=ref.mx_source_id,
        worker_id=ref.worker_id,
        model_name=ref.model_name,
        worker_rank=ref.worker_rank,
        accelerator=ref.accelerator,
        updated_at_ms=ref.updated_at,
        topology=dict(ref.topology),
        source_load=ref.source_load if ref.HasField("source_load") else None,
        training_step=ref.training_step if ref.HasField("training_step") else None,
        layout_signature=ref.layout_signature if ref.HasField("layout_signature") else None,
    )


def record_from_proto(response: pb.GetMetadataResponse) -> WorkerRecord:
    worker = response.worker
    backend = worker.WhichOneof("backend_metadata")
    # Current publishers fill tensor_source; older ones the deprecated top-level list.
    descriptors = worker.tensor_source.tensors if worker.HasField("tensor_source") else worker.tensors
    try:
        identity = identity_from_proto(response.identity) if response.HasField("identity") else None
    except ConfigError:
        identity = None
    try:
        status = SourceStatus(worker.status)
    except ValueError:
        status = SourceStatus.UNKNOWN
    return WorkerRecord(
        mx_source_id=response.mx_source_id,
        worker_id=response.worker_id,
        rank=worker.worker_rank,
        status=status,
        updated_at_ms=worker.updated_at,
        agent_name=worker.agent_name,
        worker_grpc_endpoint=worker.worker_grpc_endpoint,
        metadata_endpoint=worker.metadata_endpoint,
        accelerator=worker.accelerator,
        nixl_metadata=worker.nixl_metadata if backend == "nixl_metadata" else None,
        transfer_engine_session_id=(
            worker.transfer_engine_session_id if backend == "transfer_engine_session_id" else None
        ),
        tensors=[TensorInfo(t.name, t.addr, t.size, t.device_id, t.dtype) for t in descriptors],
        topology=dict(worker.topology),
        identity=identity,
    )


# -- seed manifest ------------------------------------------------------------------------------


def manifest_to_proto(m: Manifest) -> seed_pb2.Manifest:
    """The `peerload.v1.Manifest` message of a manifest."""
    return seed_pb2.Manifest(
        worker_id=m.worker_id,
        mx_source_id=m.source_id,
        worker_rank=m.worker_rank,
        checksum_algorithm=m.checksum_algorithm,
        tensors=[
            seed_pb2.TensorEntry(
                name=t.name,
                shape=t.shape,
                stride=t.stride,
                dtype=t.dtype,
                nbytes=t.nbytes,
                storage_offset=t.storage_offset,
                region=t.region,
            )
            for t in m.tensors
        ],
        regions=[
            seed_pb2.RegionEntry(name=r.name, size=r.size, addr=r.addr, device_id=r.device_id, checksum=r.checksum)
            for r in m.regions
        ],
    )


def manifest_from_proto(p: seed_pb2.Manifest) -> Manifest:
    """A manifest from its `peerload.v1.Manifest` message."""
    return Manifest(
        worker_id=p.worker_id,
        source_id=p.mx_source_id,
        worker_rank=p.worker_rank,
        checksum_algorithm=p.checksum_algorithm,
        tensors=[
            TensorEntry(
                name=t.name,
                shape=tuple(t.shape),
                stride=tuple(t.stride),
                dtype=t.dtype,
                nbytes=t.nbytes,
                storage_offset=t.storage_offset,
                region=t.region,
            )
            for t in p.tensors
        ],
        regions=[
            RegionEntry(name=r.name, size=r.size, addr=r.addr, device_id=r.device_id, checksum=r.checksum)
            for r in p.regions
        ],
    )
