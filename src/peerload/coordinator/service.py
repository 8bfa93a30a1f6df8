"""Thin gRPC servicer for model_express.p2p.P2pService over the Registry."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._grpc_server import parse_request
from peerload.coordinator.registry import Registry
from peerload.coordinator.status import status_code_for

logger = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["P2pService"]


class P2pServicer:
    """One call into the Registry per RPC."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def PublishMetadata(self, request: pb.PublishMetadataRequest) -> pb.PublishMetadataResponse:
        sid = self._registry.publish(request)
        return pb.PublishMetadataResponse(
            success=True, message="published", mx_source_id=sid, worker_id=request.worker_id
        )

    def ListSources(self, request: pb.ListSourcesRequest) -> pb.ListSourcesResponse:
        return pb.ListSourcesResponse(instances=self._registry.list_sources(request))

    def GetMetadata(self, request: pb.GetMetadataRequest) -> pb.GetMetadataResponse:
        return self._registry.get_metadata(request)

    def UpdateStatus(self, request: pb.UpdateStatusRequest) -> pb.UpdateStatusResponse:
        return self._registry.update_status(request)


Observer = Callable[[str, str, float], None]  # (method, status code name, perf_counter at start)


def _unary(
    name: str, request_type: type[Message], call: Callable[[Any], Message], observe: Observer | None = None
) -> grpc.RpcMethodHandler:
    """Parse the request ourselves (undecodable bytes -> INVALID_ARGUMENT, not INTERNAL), map errors."""

    @functools.wraps(call)
    def behaviour(data: bytes, context: grpc.ServicerContext) -> Message:
        started = time.perf_counter()
        code_name = "OK"
        try:
            return call(parse_request(request_type, data))
        except Exception as exc:
            code = status_code_for(exc)
            if code is None:
                # A bug: the client gets an id to quote, never our exception text.
                incident = uuid.uuid4().hex[:12]
                logger.exception("%s failed (incident %s)", name, incident)
                code_name = grpc.StatusCode.INTERNAL.name
                context.abort(
                    grpc.StatusCode.INTERNAL, f"{name}: internal error (incident {incident}); see the coordinator's log"
                )
            code_name = code.name
            context.abort(code, str(exc))
        finally:
            if observe is not None:
                observe(name, code_name, started)

    return grpc.unary_unary_rpc_method_handler(behaviour, response_serializer=lambda m: m.SerializeToString())


def p2p_handler(servicer: P2pServicer, observe: Observer | None = None) -> grpc.GenericRpcHandler:
    """The P2pService handler, served at /model_express.p2p.P2pService/<Method>."""
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        handlers[method.name] = _unary(method.name, request_type, getattr(servicer, method.name), observe)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
