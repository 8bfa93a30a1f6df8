"""CoordinatorClient: typed calls to a peerload (or ModelExpress) coordinator.

Callers never touch protobuf: inputs and results are the dataclasses below. Every RPC has a
deadline, UNAVAILABLE is retried with exponential backoff, and every failure is raised as a
CoordinatorError naming the RPC, the status code, the details and the address.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.coordinator.convert import from_proto, to_proto
from peerload.errors import ConfigError, CoordinatorError, CoordinatorUnavailable
from peerload.identity import SourceIdentity

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 << 20
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 2.0


class SourceStatus(enum.IntEnum):
    """A worker's lifecycle status (wire enum `SourceStatus`)."""

    UNKNOWN = 0
    INITIALIZING = 1
    READY = 2
    STALE = 3


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
        """"nixl", "transfer_engine" or "" from the backend metadata the worker published."""
        if self.nixl_metadata is not None:
            return "nixl"
        if self.transfer_engine_session_id is not None:
            return "transfer_engine"
        return ""

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.updated_at_ms / 1000)


class CoordinatorClient:
    """Typed client of the coordinator's P2pService and health service.

    Args:
        address: HOST:PORT of the coordinator.
        timeout_s: deadline of each RPC attempt.
        retries: how many times UNAVAILABLE is retried (with backoff 0.2 s, 0.4 s, ... <= 2 s).
    """

    def __init__(self, address: str, *, timeout_s: float = 30.0, retries: int = 3) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.retries = retries
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.P2pServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- RPCs ---------------------------------------------------------------------------------
    def health_check(self) -> bool:
        """True if the coordinator reports SERVING, False if NOT_SERVING.

        Raises:
            CoordinatorUnavailable: it cannot be reached.
            CoordinatorError: any other failure of the Check RPC.
        """
        response = self._call("Check", self._health.Check, health_pb2.HealthCheckRequest(service=""))
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def publish(self, identity: SourceIdentity, worker: WorkerInfo, worker_id: str) -> str:
        """Register a worker (stored INITIALIZING); returns its mx_source_id.

        Raises:
            CoordinatorError: rejected (e.g. INVALID_ARGUMENT) or failed.
            CoordinatorUnavailable: unreachable after retries.
        """
        request = pb.PublishMetadataRequest(identity=to_proto(identity), worker=_worker_to_proto(worker),
                                            worker_id=worker_id)
        response = self._call("PublishMetadata", self._stub.PublishMetadata, request)
        if not response.success:
            raise CoordinatorError("PublishMetadata", "OK", f"rejected: {response.message}", self.address)
        return response.mx_source_id

    def list_sources(self, identity: SourceIdentity | None = None, *, status: SourceStatus | None = None,
                     model_name: str | None = None, worker_rank: int | None = None,
                     min_updated_at: int | None = None, limit: int | None = None) -> list[SourceRef]:
        """Workers matching every given filter, newest first (`min_updated_at` in unix ms).

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`.
        """
        request = pb.ListSourcesRequest()
        if identity is not None:
            request.identity.CopyFrom(to_proto(identity))
        if status is not None:
            request.status_filter = int(status)
        if model_name is not None:
            request.model_name_filter = model_name
        if worker_rank is not None:
            request.worker_rank_filter = worker_rank
        if min_updated_at is not None:
            request.min_updated_at = min_updated_at
        if limit is not None:
            request.limit = limit
        response = self._call("ListSources", self._stub.ListSources, request)
        return [_ref_from_proto(ref) for ref in response.instances]

    def get_metadata(self, source_id: str, worker_id: str) -> WorkerRecord | None:
        """The worker's metadata, or None if the coordinator does not know it.

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`.
        """
        request = pb.GetMetadataRequest(mx_source_id=source_id, worker_id=worker_id)
        response = self._call("GetMetadata", self._stub.GetMetadata, request)
        if not response.found:
            return None
        return _record_from_proto(response)

    def update_status(self, source_id: str, worker_id: str, worker_rank: int, status: SourceStatus,
                      source_load: float | None = None) -> bool:
        """Heartbeat; False if the coordinator no longer knows the worker (publish it again).

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`.
        """
        request = pb.UpdateStatusRequest(mx_source_id=source_id, worker_id=worker_id,
                                         worker_rank=worker_rank, status=int(status))
        if source_load is not None:
            request.source_load = source_load
        response = self._call("UpdateStatus", self._stub.UpdateStatus, request)
        if not response.success:
            logger.info("UpdateStatus of %s/%s refused: %s", source_id, worker_id, response.message)
        return response.success

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, rpc: str, method: Callable[..., T], request: Any) -> T:
        delay = _BACKOFF_FIRST_S
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                details = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    logger.debug("%s to %s unavailable (attempt %d), retrying in %.1fs: %s",
                                 rpc, self.address, attempt + 1, delay, details)
                    time.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise CoordinatorUnavailable(rpc, code.name, f"{details}{tries}", self.address) from None
                raise CoordinatorError(rpc, code.name, details, self.address) from None
            except ValueError as exc:  # e.g. a closed channel
                raise CoordinatorError(rpc, "CANCELLED", str(exc), self.address) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker_to_proto(worker: WorkerInfo) -> pb.WorkerMetadata:
    tensors = [pb.TensorDescriptor(name=t[0], addr=t[1], size=t[2], device_id=t[3], dtype=t[4])
               for t in (TensorInfo(*t) for t in worker.tensors)]
    message = pb.WorkerMetadata(
        worker_rank=worker.rank, agent_name=worker.agent_name,
        worker_grpc_endpoint=worker.worker_grpc_endpoint, metadata_endpoint=worker.metadata_endpoint,
        accelerator=worker.accelerator, topology=dict(worker.topology),
        tensor_source=pb.TensorSourceMetadata(tensors=tensors))
    if worker.nixl_metadata is not None:
        message.nixl_metadata = worker.nixl_metadata
    elif worker.transfer_engine_session_id is not None:
        message.transfer_engine_session_id = worker.transfer_engine_session_id
    return message


def _ref_from_proto(ref: pb.SourceInstanceRef) -> SourceRef:
    return SourceRef(
        mx_source_id=ref.mx_source_id, worker_id=ref.worker_id, model_name=ref.model_name,
        worker_rank=ref.worker_rank, accelerator=ref.accelerator, updated_at_ms=ref.updated_at,
        topology=dict(ref.topology),
        source_load=ref.source_load if ref.HasField("source_load") else None,
        training_step=ref.training_step if ref.HasField("training_step") else None,
        layout_signature=ref.layout_signature if ref.HasField("layout_signature") else None)


def _record_from_proto(response: pb.GetMetadataResponse) -> WorkerRecord:
    worker = response.worker
    backend = worker.WhichOneof("backend_metadata")
    # Current publishers fill tensor_source; older ones the deprecated top-level list.
    descriptors = worker.tensor_source.tensors if worker.HasField("tensor_source") else worker.tensors
    try:
        identity = from_proto(response.identity) if response.HasField("identity") else None
    except ConfigError:
        identity = None
    try:
        status = SourceStatus(worker.status)
    except ValueError:
        status = SourceStatus.UNKNOWN
    return WorkerRecord(
        mx_source_id=response.mx_source_id, worker_id=response.worker_id, rank=worker.worker_rank,
        status=status, updated_at_ms=worker.updated_at, agent_name=worker.agent_name,
        worker_grpc_endpoint=worker.worker_grpc_endpoint, metadata_endpoint=worker.metadata_endpoint,
        accelerator=worker.accelerator,
        nixl_metadata=worker.nixl_metadata if backend == "nixl_metadata" else None,
        transfer_engine_session_id=(worker.transfer_engine_session_id
                                    if backend == "transfer_engine_session_id" else None),
        tensors=[TensorInfo(t.name, t.addr, t.size, t.device_id, t.dtype) for t in descriptors],
        topology=dict(worker.topology), identity=identity)
