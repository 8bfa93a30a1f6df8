"""The seed's `model_express.p2p.WorkerService`, as official ModelExpress readers call it.

In P2P metadata mode a reader asks the seed itself for the per-name descriptors
(`GetTensorManifest`), takes a read lease with them (`PrepareTensorRead`), fetches the NIXL agent's
metadata from its listen thread, reads, and ends the lease (`ReleaseTensorRead`). Leases come
from the Publisher's one `LeaseTable`, shared with peerload readers. Methods raise typed errors;
`peerload._grpc_edge` answers them with status codes.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.errors import InvalidRequest, NotFound, PreconditionFailed, ServerClosing, Unsupported
from peerload.seed.leases import LeaseTable
from peerload.wire import TensorManifest, tensor_manifest_to_proto

log = logging.getLogger(__name__)

_NO_ARTIFACTS = (
    "this worker serves model weights (tensors); {rpc}: artifacts are served by artifact-source workers "
    "(list sources whose identity has the artifact's mx_source_type)"
)


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """Serves one worker's tensor manifest and read leases.

    Args:
        manifest: the per-name descriptors and how to reach the NIXL agent.
        leases: the seed's lease table (count cap, timeout, closing).
        unreadable: why ModelExpress readers cannot read this seed at all (e.g. it serves over
            Mooncake TransferEngine), "" when they can; tensor RPCs then fail with it.
    """

    def __init__(self, manifest: TensorManifest, leases: LeaseTable, unreadable: str = "") -> None:
        self._reply = tensor_manifest_to_proto(manifest)
        self._worker_id = manifest.worker_id
        self._leases = leases
        self._unreadable = unreadable

    def set_unreadable(self, reason: str) -> None:
        """Why tensor reads are refused from now on ("" : they are served)."""
        self._unreadable = reason

    def set_source_id(self, source_id: str) -> None:
        """The mx_source_id the coordinator computed (requests must name it)."""
        self._reply.mx_source_id = source_id

    # -- tensors ------------------------------------------------------------------------------

    def GetTensorManifest(
        self, request: pb.GetTensorManifestRequest, context: grpc.ServicerContext
    ) -> pb.GetTensorManifestResponse:
        self._check(request)
        if self._leases.closing:
            raise ServerClosing("the seed is shutting down; read from another source")
        return self._reply

    def PrepareTensorRead(
        self, request: pb.PrepareTensorReadRequest, context: grpc.ServicerContext
    ) -> pb.PrepareTensorReadResponse:
        self._check(request)
        lease = self._leases.acquire(context.peer())  # LeaseRefused: RESOURCE_EXHAUSTED or UNAVAILABLE
        log.debug("read lease %s granted to %s", lease.lease_id, lease.reader)
        return pb.PrepareTensorReadResponse(lease_id=lease.lease_id, manifest=self._reply)

    def ReleaseTensorRead(
        self, request: pb.ReleaseTensorReadRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseTensorReadResponse:
        self._check(request)
        if not self._leases.release(request.lease_id):
            raise NotFound(f"tensor read lease not found or expired: {request.lease_id!r}")
        log.debug("read lease %s released", request.lease_id)
        return pb.ReleaseTensorReadResponse()

    def _check(
        self,
        request: pb.GetTensorManifestRequest | pb.PrepareTensorReadRequest | pb.ReleaseTensorReadRequest,
    ) -> None:
        """Refuse requests for another source or worker, as the official seed does.

        Raises:
            PreconditionFailed: unreadable by ModelExpress readers, or another source or worker.
            InvalidRequest: no mx_source_id.
        """
        if self._unreadable:
            raise PreconditionFailed(self._unreadable)
        if not request.mx_source_id:
            raise InvalidRequest("mx_source_id", "is required for tensor reads")
        if request.mx_source_id != self._reply.mx_source_id:
            raise PreconditionFailed(
                f"mx_source_id mismatch: this seed serves {self._reply.mx_source_id}, got {request.mx_source_id}"
            )
        if request.HasField("worker_id") and request.worker_id != self._worker_id:
            raise PreconditionFailed(f"worker_id mismatch: this seed is {self._worker_id!r}, got {request.worker_id!r}")

    # -- artifacts (served by peerload.artifacts' own workers) ------------------------------------

    def GetArtifactManifestHeader(
        self, request: pb.GetArtifactManifestHeaderRequest, context: grpc.ServicerContext
    ) -> NoReturn:
        raise Unsupported(_NO_ARTIFACTS.format(rpc="GetArtifactManifestHeader"))

    def GetArtifactManifestChunks(
        self, request: pb.GetArtifactManifestChunksRequest, context: grpc.ServicerContext
    ) -> NoReturn:
        raise Unsupported(_NO_ARTIFACTS.format(rpc="GetArtifactManifestChunks"))

    def PrepareArtifactChunk(self, request: pb.PrepareArtifactChunkRequest, context: grpc.ServicerContext) -> NoReturn:
        raise Unsupported(_NO_ARTIFACTS.format(rpc="PrepareArtifactChunk"))

    def ReleaseArtifactChunk(self, request: pb.ReleaseArtifactChunkRequest, context: grpc.ServicerContext) -> NoReturn:
        raise Unsupported(_NO_ARTIFACTS.format(rpc="ReleaseArtifactChunk"))
