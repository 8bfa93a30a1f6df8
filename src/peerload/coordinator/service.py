"""Thin gRPC servicer for model_express.p2p.P2pService over the Registry."""

from __future__ import annotations

import grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._grpc_edge import Observer, service_handler
from peerload.coordinator.registry import MAX_ID_CHARS, Registry
from peerload.wire import INSTANCE_HEADER

SERVICE = pb.DESCRIPTOR.services_by_name["P2pService"]


class P2pServicer:
    """One call into the Registry per RPC; errors become status codes at the edge (`peerload._grpc_edge`)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def PublishMetadata(
        self, request: pb.PublishMetadataRequest, context: grpc.ServicerContext
    ) -> pb.PublishMetadataResponse:
        done = self._registry.publish_as(request, instance_of(context))
        return pb.PublishMetadataResponse(
            success=True, message=done.message, mx_source_id=done.source_id, worker_id=request.worker_id
        )

    def ListSources(self, request: pb.ListSourcesRequest, context: grpc.ServicerContext) -> pb.ListSourcesResponse:
        return self._registry.list_sources_reply(request)

    def GetMetadata(self, request: pb.GetMetadataRequest, context: grpc.ServicerContext) -> pb.GetMetadataResponse:
        return self._registry.get_metadata(request)

    def UpdateStatus(self, request: pb.UpdateStatusRequest, context: grpc.ServicerContext) -> pb.UpdateStatusResponse:
        return self._registry.update_status(request, instance_of(context))


def instance_of(context: grpc.ServicerContext) -> str:
    """The caller's `peerload-instance` header (wire.INSTANCE_HEADER), "" when it sent none (or an unusable one)."""
    for key, value in context.invocation_metadata() or ():
        if key == INSTANCE_HEADER and isinstance(value, str):
            return value[:MAX_ID_CHARS]
    return ""


def p2p_handler(servicer: object, observe: Observer | None = None) -> grpc.GenericRpcHandler:
    """The P2pService handler of `servicer` (a P2pServicer or a wrapper), at /model_express.p2p.P2pService/<Method>."""
    return service_handler(SERVICE, pb, servicer, server="the coordinator", observe=observe)
