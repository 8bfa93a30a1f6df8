"""The server edge of every peerload gRPC service: requests in, typed errors out as status codes.

Servicers (the coordinator's P2pService, a seed's SeedService and WorkerService) are plain
methods `Name(request, context) -> reply` that raise peerload errors; they never abort by hand.
`service_handler` parses each request itself, calls the method and turns what it raised into a
status code and details through one table, `STATUS_CODES`. Anything else is a bug: the caller
gets INTERNAL with an incident id to quote, the server's log gets the traceback under that id,
and the exception's text (which may name internals) never leaves the server.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from peerload.errors import (
    ConfigError,
    InvalidRequest,
    LeaseRefused,
    LimitExceeded,
    NotFound,
    PreconditionFailed,
    ServerClosing,
    StoreUnavailable,
    Unsupported,
    WorkerSuperseded,
)

log = logging.getLogger(__name__)

_Request = TypeVar("_Request", bound=Message)
Observer = Callable[[str, str, float], None]  # (method, status code name, perf_counter at start)
_Code: TypeAlias = "grpc.StatusCode | Callable[[Any], grpc.StatusCode]"

# The one table from a server-side error to its status code (most specific class wins). An entry
# may be a function of the error where its fields decide the code.
STATUS_CODES: dict[type[BaseException], _Code] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    WorkerSuperseded: grpc.StatusCode.ALREADY_EXISTS,
    ServerClosing: grpc.StatusCode.UNAVAILABLE,
    # At the reader cap: this seed, later. Closing: never again (readers tell the two apart).
    LeaseRefused: lambda e: grpc.StatusCode.UNAVAILABLE if e.closing else grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code_for(error: BaseException) -> grpc.StatusCode | None:
    """The code for a known error (most specific class wins), or None for a bug."""
    for kind in type(error).__mro__:
        code = STATUS_CODES.get(kind)
        if code is not None:
            return code if isinstance(code, grpc.StatusCode) else code(error)
    return None


def parse_request(request_type: type[_Request], data: bytes) -> _Request:
    """`data` parsed as `request_type`.

    Raises:
        InvalidRequest: the bytes are not such a message (INVALID_ARGUMENT for the caller).
    """
    request = request_type()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidRequest("request", f"is not a valid {request_type.__name__}: {exc}") from None
    return request


def service_handler(
    service: ServiceDescriptor,
    messages: ModuleType,
    servicer: object,
    *,
    server: str,
    observe: Observer | None = None,
) -> grpc.GenericRpcHandler:
    """`service`'s unary methods on `servicer` (named as in the proto, taking (request, context)).

    `server` names the process in incident messages ("the coordinator", "the seed"); `observe`
    is told each call's method, status code name and start time (metrics).
    """
    handlers = {}
    for method in service.methods:
        request_type = getattr(messages, method.input_type.name)
        call = getattr(servicer, method.name)
        handlers[method.name] = _unary(method.name, request_type, call, server, observe)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _unary(
    name: str,
    request_type: type[Message],
    call: Callable[[Any, grpc.ServicerContext], Message],
    server: str,
    observe: Observer | None,
) -> grpc.RpcMethodHandler:
    def behaviour(data: bytes, context: grpc.ServicerContext) -> Message:
        started = time.perf_counter()
        code_name = grpc.StatusCode.OK.name
        try:
            return call(parse_request(request_type, data), context)
        except Exception as exc:
            code = status_code_for(exc)
            code_name = (code or grpc.StatusCode.INTERNAL).name
            _abort(context, name, server, exc, code)
        finally:
            if observe is not None:
                observe(name, code_name, started)

    return grpc.unary_unary_rpc_method_handler(behaviour, response_serializer=lambda m: m.SerializeToString())


def _abort(
    context: grpc.ServicerContext, name: str, server: str, exc: Exception, code: grpc.StatusCode | None
) -> NoReturn:
    if code is not None:
        context.abort(code, str(exc))
    # A bug: the client gets an id to quote, never our exception text.
    incident = uuid.uuid4().hex[:12]
    log.exception("%s failed (incident %s)", name, incident)
    context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error (incident {incident}); see {server}'s log")
    raise AssertionError("unreachable: context.abort raises")
