"""Thin gRPC servicer for model_express.p2p.P2pService over the Registry."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.coordinator.registry import Registry
from peerload.coordinator.status import status_code_for

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _rpc(method: F) -> F:
    """Translate known errors to their status code; anything else is INTERNAL, logged once."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            code = status_code_for(exc)
            if code is None:
                logger.exception("%s failed", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error: {exc}")
            context.abort(code, str(exc))

    return wrapper  # type: ignore[return-value]


class P2pServicer(pb_grpc.P2pServiceServicer):
    """One call into the Registry per RPC."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @_rpc
    def PublishMetadata(self, request: pb.PublishMetadataRequest, context: grpc.ServicerContext
                        ) -> pb.PublishMetadataResponse:
        sid = self._registry.publish(request)
        return pb.PublishMetadataResponse(success=True, message="published", mx_source_id=sid,
                                          worker_id=request.worker_id)

    @_rpc
    def ListSources(self, request: pb.ListSourcesRequest, context: grpc.ServicerContext
                    ) -> pb.ListSourcesResponse:
        return pb.ListSourcesResponse(instances=self._registry.list_sources(request))

    @_rpc
    def GetMetadata(self, request: pb.GetMetadataRequest, context: grpc.ServicerContext
                    ) -> pb.GetMetadataResponse:
        return self._registry.get_metadata(request)

    @_rpc
    def UpdateStatus(self, request: pb.UpdateStatusRequest, context: grpc.ServicerContext
                     ) -> pb.UpdateStatusResponse:
        return self._registry.update_status(request)
