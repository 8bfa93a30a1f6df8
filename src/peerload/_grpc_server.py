"""Server-side gRPC plumbing shared by the coordinator and a seed's gRPC server: build, secure, bind
(what each service's methods answer goes through `peerload._grpc_edge`).

Security is per server, not per service, so every service added to one of these servers (the
coordinator's P2pService, a seed's SeedService and WorkerService) gets the same TLS and the same
bearer-token check; grpc.health.v1 alone stays open for probes.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from peerload._address import host_port, is_loopback
from peerload.credentials import TokenFile, read_pem
from peerload.errors import ConfigError
from peerload.settings import Settings

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_REFUSAL_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class ServerSecurity:
    """TLS identity and accepted bearer tokens of one server (nothing set: plaintext, open)."""

    key_and_cert: tuple[bytes, bytes] | None = None
    tokens: TokenFile | None = None  # may call every RPC
    write_tokens: TokenFile | None = None  # alone may call the server's write methods, when set

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerSecurity:
        """From `tls_cert`/`tls_key`, `accept_tokens_file` and `accept_write_tokens_file`.

        Raises:
            ConfigError: a named file cannot be read or holds no certificate, key or token.
        """
        pair = None
        if settings.tls_cert:
            pair = (
                read_pem(settings.tls_key, "tls_key", "PRIVATE KEY"),
                read_pem(settings.tls_cert, "tls_cert", "CERTIFICATE"),
            )
        tokens = TokenFile(settings.accept_tokens_file, "accept_tokens_file") if settings.accept_tokens_file else None
        writers = settings.accept_write_tokens_file
        return cls(pair, tokens, TokenFile(writers, "accept_write_tokens_file") if writers else None)

    def describe(self) -> str:
        """ "TLS, tokens required" and the like, for a server's startup line."""
        tls = "TLS" if self.key_and_cert else "plaintext"
        if self.tokens is not None:
            auth = "bearer token required" + ("; writes need a write token" if self.write_tokens else "")
        elif self.write_tokens is not None:
            auth = "reads open, writes need a write token"
        else:
            auth = "no token required"
        return f"{tls}, {auth}"


OPEN = ServerSecurity()


def new_server(
    security: ServerSecurity,
    *,
    max_workers: int,
    options: Sequence[tuple[str, Any]],
    thread_name_prefix: str,
    write_methods: Collection[str] = (),
) -> grpc.Server:
    """A grpc.Server whose every RPC but health checks passes the token check of `security`.

    `write_methods` are full method paths that need a write token when `security.write_tokens` is set.
    """
    interceptors = []
    if security.tokens is not None or security.write_tokens is not None:
        interceptors.append(_TokenCheck(security, frozenset(write_methods)))
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
    return grpc.server(executor, options=list(options), interceptors=interceptors)


def bind(server: grpc.Server, host: str, port: int, security: ServerSecurity, *, what: str, fix: str) -> int:
    """Listen on host:port (0 picks a free port), with TLS if `security` has a certificate; the bound port.

    Warns when a non-loopback address is served without TLS or without a token.

    Raises:
        ConfigError: the address cannot be bound; the message ends with `fix`.
    """
    target = host_port(host, port)
    try:
        if security.key_and_cert is not None:
            bound = server.add_secure_port(target, grpc.ssl_server_credentials([security.key_and_cert]))
        else:
            bound = server.add_insecure_port(target)
    except RuntimeError as exc:
        raise ConfigError(f"{what} cannot listen on {target}: {exc}; {fix}") from None
    if bound == 0:
        raise ConfigError(f"{what} cannot listen on {target} (port in use?); {fix}")
    if not is_loopback(host):
        _warn_exposed(what, target, security)
    return bound


def _warn_exposed(what: str, target: str, security: ServerSecurity) -> None:
    missing = []
    if security.key_and_cert is None:
        missing.append("TLS (metadata and tokens cross the network in clear text)")
    if security.tokens is None:
        missing.append(
            "a token (anyone who reaches it can " + ("read" if security.write_tokens else "read and write") + ")"
        )
    if missing:
        log.warning("%s listens on %s without %s; see docs/security.md", what, target, " and without ".join(missing))


class _TokenCheck(grpc.ServerInterceptor):
    """Refuses an RPC without an accepted `authorization: Bearer <token>` header, before parsing it."""

    def __init__(self, security: ServerSecurity, write_methods: frozenset[str]) -> None:
        self._tokens = security.tokens
        self._write_tokens = security.write_tokens
        self._write_methods = write_methods
        self._refusals = _RefusalLog()

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None], details: Any
    ) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        if method.startswith(HEALTH_PREFIX):
            return continuation(details)
        refusal = self._refusal(method, _bearer(details.invocation_metadata))
        handler = continuation(details)
        if refusal is None or handler is None:
            return handler
        self._refusals.note(method, refusal[1])
        return _refusing(handler, *refusal)

    def _refusal(self, method: str, token: str | None) -> tuple[grpc.StatusCode, str] | None:
        """None if `token` may call `method`, else the status code and message to answer with."""
        writes = self._write_tokens is not None and method in self._write_methods
        if writes:
            assert self._write_tokens is not None
            accepted = self._write_tokens.tokens()
        elif self._tokens is None:
            return None  # only writes are restricted
        else:
            accepted = self._tokens.tokens() + (self._write_tokens.tokens() if self._write_tokens else ())
        if token is not None and _matches(token, accepted):
            return None
        if writes and token is not None and self._tokens is not None and _matches(token, self._tokens.tokens()):
            return grpc.StatusCode.PERMISSION_DENIED, f"{method}: this token may read but not write; use a write token"
        what = "an accepted" if token is not None else "a"
        return grpc.StatusCode.UNAUTHENTICATED, f"{method} needs {what} bearer token (authorization: Bearer <token>)"


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _matches(token: str, accepted: Sequence[str]) -> bool:
    """Constant-time comparison against every accepted token."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers `code` without deserializing the request."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


class _RefusalLog:
    """Logs refused RPCs at most once per interval, with a count, so a flood cannot fill the log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._last = 0.0

    def note(self, method: str, message: str) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._last < _REFUSAL_LOG_EVERY_S:
                return
            count, self._count, self._last = self._count, 0, now
        log.warning("refused %d RPC(s) without an accepted token, latest: %s", count, message)
