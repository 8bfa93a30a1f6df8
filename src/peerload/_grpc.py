"""Client-side gRPC plumbing shared by every peerload client: channels, credentials, deadlines, retries, errors.

The one place a `grpc.RpcError` becomes a peerload `ServiceError`, so nothing above the clients
imports grpc to handle failures, and the one place clients get TLS and their bearer token.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from peerload._backoff import Backoff
from peerload.credentials import TokenFile, read_pem
from peerload.errors import ServiceError
from peerload.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 2.0
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# ServiceError.code of failures the RPC status cannot tell (it was OK): the reply said no, or
# answered for another source or worker.
REJECTED, WRONG_REPLY = "REJECTED", "WRONG_REPLY"


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches peerload servers: TLS roots (None: plaintext) and its bearer token."""

    root_certificates: bytes | None = None
    server_name: str = ""  # checked in the server's certificate instead of the dialled host
    token: Callable[[], str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ChannelSecurity:
        """TLS from `tls_ca` / `tls_server_name`; the token from `auth_token`, else `auth_token_file`.

        Raises:
            ConfigError: a named file cannot be read or holds no certificate / token.
        """
        roots = read_pem(settings.tls_ca, "tls_ca", "CERTIFICATE") if settings.tls_ca else None
        token: Callable[[], str] | None = None
        if settings.auth_token:
            fixed = settings.auth_token
            token = lambda: fixed  # noqa: E731
        elif settings.auth_token_file:
            token = TokenFile(settings.auth_token_file, "auth_token_file").first
        return cls(root_certificates=roots, server_name=settings.tls_server_name, token=token)


PLAINTEXT = ChannelSecurity()


def open_channel(
    address: str,
    max_message_bytes: int,
    security: ChannelSecurity = PLAINTEXT,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address` (TLS and a bearer token per `security`); messages up to `max_message_bytes`.

    `options` are further gRPC channel arguments (e.g. `PRIVATE_CONNECTION`).
    """
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    if security.root_certificates is None:
        channel = grpc.insecure_channel(address, options=args)
    else:
        if security.server_name:
            args.append(("grpc.ssl_target_name_override", security.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=security.root_certificates)
        channel = grpc.secure_channel(address, credentials, options=args)
    if security.token is not None:
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel


_Client = TypeVar("_Client", bound="ChannelClient")


class ChannelClient:
    """A client that owns one channel (`self._channel`): `close()` it, or use it in a `with`."""

    _channel: grpc.Channel

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call, the header the official client sends."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token()}")]
        return _ClientCallDetails(details, metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)


# Channel arguments for a connection of its own: no subchannel shared with other channels to the
# same address, so a new channel dials at once instead of waiting out gRPC's reconnect backoff.
PRIVATE_CONNECTION: tuple[tuple[str, Any], ...] = (("grpc.use_local_subchannel_pool", 1),)


class Caller:
    """Calls RPCs with a deadline, retries UNAVAILABLE with backoff, and raises typed errors.

    Args:
        address: the server's HOST:PORT, named in every error.
        timeout_s: deadline of each attempt.
        retries: how many times UNAVAILABLE is retried (jittered backoff: 0.1-0.2 s, 0.2-0.4 s,
            ... at most 2 s).
        error: raised for a failed RPC.
        unreachable: raised when the server cannot be reached (UNAVAILABLE after retries,
            DEADLINE_EXCEEDED); a subclass of `error`, or `error` itself.
        rng, sleep: the backoff's jitter and wait (tests pass their own).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float,
        retries: int,
        error: type[ServiceError],
        unreachable: type[ServiceError] | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.retries = retries
        self._error = error
        self._unreachable = unreachable or error
        self._rng = rng or random.Random()
        self._sleep = sleep

    def __call__(self, rpc: str, method: Callable[..., T], request: Any, metadata: Sequence[tuple[str, str]] = ()) -> T:
        """`method(request)` with the deadline (and `metadata`, request headers, when given)."""
        backoff = Backoff(_BACKOFF_FIRST_S, _BACKOFF_MAX_S, self._rng)
        extra: dict[str, Any] = {"metadata": tuple(metadata)} if metadata else {}
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s, **extra)
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                details = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    delay = backoff.next()
                    log.debug(
                        "%s to %s unavailable (attempt %d), retrying in %.1fs: %s",
                        rpc,
                        self.address,
                        attempt + 1,
                        delay,
                        details,
                    )
                    self._sleep(delay)
                    continue
                if code in _UNREACHABLE:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise self._unreachable(rpc, code.name, f"{details}{tries}", self.address) from None
                raise self._error(rpc, code.name, details, self.address) from None
            except ValueError as exc:  # e.g. a closed channel
                raise self._error(rpc, "CANCELLED", str(exc), self.address) from None
        raise AssertionError("unreachable")

    def rejected(self, rpc: str, message: str) -> ServiceError:
        """The error for a reply that succeeded at the RPC level but refused the request in its body
        (code REJECTED: the server answered, and said no)."""
        return self._error(rpc, REJECTED, message, self.address)

    def wrong_reply(self, rpc: str, message: str) -> ServiceError:
        """The error for a reply that succeeded at the RPC level but answers another question (code
        WRONG_REPLY: e.g. the manifest of another source; that server is not the one asked for)."""
        return self._error(rpc, WRONG_REPLY, message, self.address)
