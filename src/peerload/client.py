"""CoordinatorClient: typed calls to a peerload (or ModelExpress) coordinator.

Callers never touch protobuf: inputs and results are the dataclasses of `peerload.wire`. Every
RPC has a deadline, UNAVAILABLE is retried with jittered exponential backoff, and every failure is
raised as a CoordinatorError naming the RPC, the status code, the details and the address. Given
several replicas' addresses, each call goes on to the next replica when the one in use is unreachable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peerload._failover import Endpoints
from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload._grpc import PLAINTEXT, PRIVATE_CONNECTION, Caller, ChannelClient, ChannelSecurity, open_channel
from peerload.errors import CoordinatorError, CoordinatorUnavailable
from peerload.identity import SourceIdentity
from peerload.limits import COORDINATOR_MAX_MESSAGE_BYTES
from peerload.settings import Settings, coordinator_addresses
from peerload.wire import (
    INSTANCE_HEADER,
    REPLACED_PREFIX,
    SourceRef,
    SourceStatus,
    TensorInfo,
    WorkerInfo,
    WorkerRecord,
    identity_to_proto,
    record_from_proto,
    ref_from_proto,
    status_to_proto,
    worker_to_proto,
)

__all__ = ["CoordinatorClient", "PublishReply", "SourceRef", "SourceStatus", "TensorInfo", "WorkerInfo", "WorkerRecord"]

logger = logging.getLogger(__name__)


class CoordinatorClient(ChannelClient):
    """Typed client of the coordinator's P2pService and health service.

    Args:
        address: HOST:PORT of the coordinator, or a comma-separated list of replicas over one
            store (calls go to the first that answers, and stay there until it fails).
        timeout_s: deadline of each RPC attempt.
        retries: how many times UNAVAILABLE is retried (jittered backoff doubling from 0.1-0.2 s to <= 2 s).
        channel: an already open channel to use instead of one to `address` (tests, one address).
        security: TLS roots and bearer token (default: plaintext, no token).
        private_connection: dial a connection of this client's own, at once, instead of sharing
            one (and its reconnect backoff) with other clients of the same address.
        instance: the publishing process' id, sent with publishes and heartbeats (header
            `peerload-instance`) so the coordinator tells two processes of one worker id apart.

    Raises:
        ConfigError: `address` is not HOST:PORT or a list of them.
    """

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
        private_connection: bool = False,
        instance: str = "",
    ) -> CoordinatorClient:
        """A client of `settings.coordinator` with the configured deadline, retries, TLS and token.

        `timeout_s` and `retries` override the configured ones.

        Raises:
            ConfigError: the CA or token file named in the settings is unusable.
        """
        return cls(
            settings.coordinator,
            timeout_s=settings.rpc_timeout_s if timeout_s is None else timeout_s,
            retries=settings.rpc_retries if retries is None else retries,
            security=ChannelSecurity.from_settings(settings),
            private_connection=private_connection,
            instance=instance,
        )

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        channel: grpc.Channel | None = None,
        security: ChannelSecurity = PLAINTEXT,
        private_connection: bool = False,
        instance: str = "",
    ) -> None:
        addresses = (address,) if channel is not None else coordinator_addresses(address)
        self._writer_headers: tuple[tuple[str, str], ...] = ((INSTANCE_HEADER, instance),) if instance else ()
        self.address = ",".join(addresses)
        self._call = Caller(
            self.address,
            timeout_s=timeout_s,
            retries=retries,
            error=CoordinatorError,
            unreachable=CoordinatorUnavailable,
        )
        extra = PRIVATE_CONNECTION if private_connection else ()

        def dial(to: str) -> grpc.Channel:
            if channel is not None:
                return channel
            return open_channel(to, COORDINATOR_MAX_MESSAGE_BYTES, security, options=extra)

        self._endpoints = Endpoints(addresses, dial, _Stubs)

    @property
    def current_address(self) -> str:
        """The replica calls go to first: the one that answered last."""
        return self._endpoints.current

    def close(self) -> None:
        """Close the channels; the client cannot be used afterwards."""
        self._endpoints.close()

    # -- RPCs ---------------------------------------------------------------------------------
    def health_check(self) -> bool:
        """True if the coordinator reports SERVING, False if NOT_SERVING.

        Raises:
            CoordinatorUnavailable: it cannot be reached.
            CoordinatorError: any other failure of the Check RPC.
        """
        response = self._call(
            "Check", self._endpoints.call(lambda s: s.health.Check), health_pb2.HealthCheckRequest(service="")
        )
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def publish(self, identity: SourceIdentity, worker: WorkerInfo, worker_id: str) -> str:
        """Register a worker (stored INITIALIZING); returns its mx_source_id.

        Raises:
            CoordinatorError: rejected (e.g. INVALID_ARGUMENT) or failed.
            CoordinatorUnavailable: unreachable after retries.
        """
        return self.publish_worker(identity, worker, worker_id).source_id

    def publish_worker(self, identity: SourceIdentity, worker: WorkerInfo, worker_id: str) -> PublishReply:
        """`publish`, also saying whose live record it replaced (another process of this worker id).

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`.
        """
        request = pb.PublishMetadataRequest(
            identity=identity_to_proto(identity), worker=worker_to_proto(worker), worker_id=worker_id
        )
        response = self._call(
            "PublishMetadata", self._endpoints.call(lambda s: s.p2p.PublishMetadata), request, self._writer_headers
        )
        if not response.success:
            raise self._call.rejected("PublishMetadata", response.message)
        message: str = response.message
        replaced = message[len(REPLACED_PREFIX) :] if message.startswith(REPLACED_PREFIX) else ""
        return PublishReply(response.mx_source_id, replaced)

    def list_sources(
        self,
        identity: SourceIdentity | None = None,
        *,
        status: SourceStatus | None = None,
        model_name: str | None = None,
        worker_rank: int | None = None,
        min_updated_at: int | None = None,
        limit: int | None = None,
    ) -> list[SourceRef]:
        """Workers matching every given filter, newest first (`min_updated_at` in unix ms).

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`.
        """
        request = pb.ListSourcesRequest()
        if identity is not None:
            request.identity.CopyFrom(identity_to_proto(identity))
        if status is not None:
            request.status_filter = status_to_proto(status)
        if model_name is not None:
            request.model_name_filter = model_name
        if worker_rank is not None:
            request.worker_rank_filter = worker_rank
        if min_updated_at is not None:
            request.min_updated_at = min_updated_at
        if limit is not None:
            request.limit = limit
        response = self._call("ListSources", self._endpoints.call(lambda s: s.p2p.ListSources), request)
        return [ref_from_proto(ref) for ref in response.instances]

    def get_metadata(self, source_id: str, worker_id: str) -> WorkerRecord | None:
        """The worker's metadata, or None if the coordinator does not know it.

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`.
        """
        request = pb.GetMetadataRequest(mx_source_id=source_id, worker_id=worker_id)
        response = self._call("GetMetadata", self._endpoints.call(lambda s: s.p2p.GetMetadata), request)
        if not response.found:
            return None
        return record_from_proto(response)

    def update_status(
        self, source_id: str, worker_id: str, worker_rank: int, status: SourceStatus, source_load: float | None = None
    ) -> bool:
        """Heartbeat; False if the coordinator no longer knows the worker (publish it again).

        Raises:
            CoordinatorError, CoordinatorUnavailable: as for `publish`; code ALREADY_EXISTS when
                another process has published this worker id since (this client's `instance`).
        """
        request = pb.UpdateStatusRequest(
            mx_source_id=source_id, worker_id=worker_id, worker_rank=worker_rank, status=status_to_proto(status)
        )
        if source_load is not None:
            request.source_load = source_load
        response = self._call(
            "UpdateStatus", self._endpoints.call(lambda s: s.p2p.UpdateStatus), request, self._writer_headers
        )
        if not response.success:
            logger.info("UpdateStatus of %s/%s refused: %s", source_id, worker_id, response.message)
        return response.success


@dataclass(frozen=True)
class PublishReply:
    """A publish's answer: the source id, and the live record of another process it replaced ("" if none)."""

    source_id: str
    replaced: str = ""


class _Stubs:
    """The stubs of one replica's channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.p2p = pb_grpc.P2pServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
