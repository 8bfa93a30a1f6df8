"""The one place a server-side error becomes a gRPC status code."""

from __future__ import annotations

import grpc

from peerload.errors import ConfigError, InvalidRequest, LimitExceeded, NotFound, StoreUnavailable

STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code_for(error: BaseException) -> grpc.StatusCode | None:
    """The code for a known error (most specific class wins), or None for a bug."""
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return None
