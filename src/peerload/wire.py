"""The one place protobuf messages become peerload dataclasses and back.

The coordinator client, the coordinator, the seed's services and their clients all convert
through here, so no module above this one touches generated message fields directly.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.peerload.v1 import seed_pb2
from peerload.boxes import Box
from peerload.components import transport_of
from peerload.errors import ConfigError
from peerload.identity import OPTIONAL_HASHED_FIELDS, SourceIdentity
from peerload.manifest import Manifest, RegionEntry, TensorEntry


# A worker's lifecycle status, named after the wire enum `SourceStatus` (SOURCE_STATUS_READY ->
# READY). Spelled out so type checkers see the members; a unit test keeps it equal to the .proto.
class SourceStatus(enum.IntEnum):
    UNKNOWN = pb.SOURCE_STATUS_UNKNOWN
    INITIALIZING = pb.SOURCE_STATUS_INITIALIZING
    READY = pb.SOURCE_STATUS_READY
    STALE = pb.SOURCE_STATUS_STALE


# A peerload seed marks its record with this topology key, valued with the HOST:PORT of its
# `peerload.v1.SeedService` (manifest with checksums). Topology is an open map that ListSources
# returns too, so targets tell the kinds of seed apart without a call per seed.
PEERLOAD_MANIFEST_KEY = "peerload.manifest"
# gRPC request header: which process a peerload publisher is (random per Publisher). The coordinator
# keeps it with the record, so a second live process publishing the same worker id replaces the
# first (newest wins) and the first's next heartbeat is refused with ALREADY_EXISTS, not merged.
INSTANCE_HEADER = "peerload-instance"
# PublishMetadataResponse.message when the publish replaced another live process' record.
REPLACED_PREFIX = "replaced: "
PEERLOAD, MODELEXPRESS = "peerload", "modelexpress"
# A worker that a peerload target loaded carries how that load went under this key (JSON: origin,
# bytes, seconds, gbps, sources, finished_at), so the coordinator's status page can show recent loads.
LOAD_SUMMARY_KEY = "peerload.load"


def seed_kind(topology: Mapping[str, str]) -> str:
    """PEERLOAD for a peerload seed, MODELEXPRESS for any other (the official client's)."""
    return PEERLOAD if topology.get(PEERLOAD_MANIFEST_KEY) else MODELEXPRESS


def status_to_proto(status: int) -> pb.SourceStatus:
    """A status (SourceStatus or a wire value) as the type of the messages' status fields."""
    return cast("pb.SourceStatus", int(status))


def status_name(status: int) -> str:
    """READY, STALE, ... for a wire status value ("UNKNOWN" for values this version lacks)."""
    try:
        return SourceStatus(status).name
    except ValueError:
        return "UNKNOWN"


class ArtifactInfo(NamedTuple):
    """What an artifact source's record says about its artifact (wire `ArtifactSourceMetadata`)."""

    artifact_id: str
    total_size: int
    file_count: int
    chunk_count: int
    node_rank: int = 0


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
    artifact: ArtifactInfo | None = None  # an artifact source (a cache directory), not tensors

    def __post_init__(self) -> None:
        if self.nixl_metadata is not None and self.transfer_engine_session_id is not None:
            raise ConfigError("WorkerInfo takes nixl_metadata or transfer_engine_session_id, not both")
        if self.rank < 0:
            raise ConfigError(f"WorkerInfo.rank must be >= 0, got {self.rank}")


class _Listed:
    """What a listed worker and its full record both tell: age and kind."""

    updated_at_ms: int
    topology: Mapping[str, str]

    @property
    def age_s(self) -> float:
        """Seconds since the last publish or heartbeat."""
        return max(0.0, time.time() - self.updated_at_ms / 1000)

    @property
    def kind(self) -> str:
        """PEERLOAD or MODELEXPRESS (see `seed_kind`)."""
        return seed_kind(self.topology)


@dataclass(frozen=True)
class SourceRef(_Listed):
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


@dataclass(frozen=True)
class WorkerRecord(_Listed):
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
    artifact: ArtifactInfo | None = None  # set for an artifact source

    @property
    def transport(self) -> str:
        """ "nixl", "transfer_engine" or "" from the backend metadata the worker published."""
        return transport_of(self.nixl_metadata, self.transfer_engine_session_id, self.metadata_endpoint)

    @property
    def mode(self) -> str:
        """How ModelExpress readers reach it: "p2p" (its WorkerService) or "centralized" (this record)."""
        return "p2p" if self.worker_grpc_endpoint else "centralized"

    @property
    def manifest_endpoint(self) -> str:
        """HOST:PORT of a peerload seed's SeedService ("" for other seeds)."""
        return self.topology.get(PEERLOAD_MANIFEST_KEY, "")


@dataclass(frozen=True)
class TensorManifest:
    """A seed's per-name descriptors and how to reach its agent (wire `GetTensorManifestResponse`)."""

    tensors: list[TensorInfo]
    mx_source_id: str
    worker_id: str
    worker_rank: int = 0
    metadata_endpoint: str = ""  # HOST:PORT of the NIXL agent's listen thread
    agent_name: str = ""
    accelerator: str = ""


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


def _descriptors_to_proto(tensors: Sequence[TensorInfo | tuple[str, int, int, int, str]]) -> list[pb.TensorDescriptor]:
    return [
        pb.TensorDescriptor(name=t.name, addr=t.addr, size=t.size, device_id=t.device_id, dtype=t.dtype)
        for t in (TensorInfo(*t) for t in tensors)
    ]


def _descriptors_from_proto(tensors: Sequence[pb.TensorDescriptor]) -> list[TensorInfo]:
    return [TensorInfo(t.name, t.addr, t.size, t.device_id, t.dtype) for t in tensors]


def worker_to_proto(worker: WorkerInfo) -> pb.WorkerMetadata:
    """The wire record of a worker; descriptors go in `tensor_source` and, for readers that
    predate it, in the deprecated top-level `tensors` too (as the official client writes them)."""
    tensors = _descriptors_to_proto(worker.tensors)
    message = pb.WorkerMetadata(
        worker_rank=worker.rank,
        agent_name=worker.agent_name,
        worker_grpc_endpoint=worker.worker_grpc_endpoint,
        metadata_endpoint=worker.metadata_endpoint,
        accelerator=worker.accelerator,
        topology=dict(worker.topology),
        tensors=tensors,
    )
    # One of the source_payload oneof, present even when empty (readers test which one is set).
    if worker.artifact is not None:
        message.artifact_source.SetInParent()
        message.artifact_source.MergeFrom(pb.ArtifactSourceMetadata(**worker.artifact._asdict()))
    else:
        message.tensor_source.SetInParent()
        message.tensor_source.tensors.extend(tensors)
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
        tensors=_descriptors_from_proto(descriptors),
        topology=dict(worker.topology),
        identity=identity,
        artifact=_artifact_from_proto(worker),
    )


def _artifact_from_proto(worker: pb.WorkerMetadata) -> ArtifactInfo | None:
    if worker.WhichOneof("source_payload") != "artifact_source":
        return None
    a = worker.artifact_source
    return ArtifactInfo(a.artifact_id, a.total_size, a.file_count, a.chunk_count, a.node_rank)


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
                boxes=[_box_to_proto(b) for b in t.boxes],
                no_layout=t.no_layout,
            )
            for t in m.tensors
        ],
        regions=[
            seed_pb2.RegionEntry(
                name=r.name, size=r.size, addr=r.addr, device_id=r.device_id, checksum=r.checksum, memory=r.memory
            )
            for r in m.regions
        ],
        part_bytes=m.part_bytes,
        part_checksums=m.part_checksums,
    )


def _box_to_proto(b: Box) -> seed_pb2.Box:
    return seed_pb2.Box(tensor=b.tensor, full_shape=b.full_shape, start=b.start, stop=b.stop, offset=b.offset)


def _box_from_proto(b: seed_pb2.Box) -> Box:
    return Box(b.tensor, tuple(b.full_shape), tuple(b.start), tuple(b.stop), b.offset)


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
                boxes=tuple(_box_from_proto(b) for b in t.boxes),
                no_layout=t.no_layout,
            )
            for t in p.tensors
        ],
        regions=[
            RegionEntry(
                name=r.name,
                size=r.size,
                addr=r.addr,
                device_id=r.device_id,
                checksum=r.checksum,
                memory=r.memory or "cpu",
            )
            for r in p.regions
        ],
        part_bytes=p.part_bytes,
        part_checksums=list(p.part_checksums),
    )


# -- a seed's WorkerService (ModelExpress P2P metadata mode) -------------------------------------


def tensor_manifest_to_proto(m: TensorManifest) -> pb.GetTensorManifestResponse:
    """The `GetTensorManifestResponse` of a tensor manifest."""
    reply = pb.GetTensorManifestResponse(
        tensors=_descriptors_to_proto(m.tensors),
        mx_source_id=m.mx_source_id,
        metadata_endpoint=m.metadata_endpoint,
        agent_name=m.agent_name,
        worker_rank=m.worker_rank,
        accelerator=m.accelerator,
    )
    if m.worker_id:
        reply.worker_id = m.worker_id
    return reply


def tensor_manifest_from_proto(p: pb.GetTensorManifestResponse) -> TensorManifest:
    """A tensor manifest from its `GetTensorManifestResponse`."""
    return TensorManifest(
        tensors=_descriptors_from_proto(p.tensors),
        mx_source_id=p.mx_source_id,
        worker_id=p.worker_id if p.HasField("worker_id") else "",
        worker_rank=p.worker_rank,
        metadata_endpoint=p.metadata_endpoint,
        agent_name=p.agent_name,
        accelerator=p.accelerator,
    )
