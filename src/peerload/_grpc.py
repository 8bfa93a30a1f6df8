"""Client-side gRPC plumbing shared by every peerload client: channels, deadlines, retries, errors.

The one place a `grpc.RpcError` becomes a peerload `ServiceError`, so nothing above the clients
imports grpc to handle failures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from peerload.errors import ServiceError

log = logging.getLogger(__name__)
T = TypeVar("T")

_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 2.0
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def open_channel(address: str, max_message_bytes: int, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A plaintext channel to `address` whose messages may be up to `max_message_bytes`.

    `options` are further gRPC channel arguments (e.g. `PRIVATE_CONNECTION`).
    """
    args = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    return grpc.insecure_channel(address, options=args)


# Channel arguments for a connection of its own: no subchannel shared with other channels to the
# same address, so a new channel dials at once instead of waiting out gRPC's reconnect backoff.
PRIVATE_CONNECTION: tuple[tuple[str, Any], ...] = (("grpc.use_local_subchannel_pool", 1),)


class Caller:
    """Calls RPCs with a deadline, retries UNAVAILABLE with backoff, and raises typed errors.

    Args:
        address: the server's HOST:PORT, named in every error.
        timeout_s: deadline of each attempt.
        retries: how many times UNAVAILABLE is retried (backoff 0.2 s, 0.4 s, ... <= 2 s).
        error: raised for a failed RPC.
        unreachable: raised when the server cannot be reached (UNAVAILABLE after retries,
            DEADLINE_EXCEEDED); a subclass of `error`, or `error` itself.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float,
        retries: int,
        error: type[ServiceError],
        unreachable: type[ServiceError] | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.retries = retries
        self._error = error
        self._unreachable = unreachable or error

    def __call__(self, rpc: str, method: Callable[..., T], request: Any) -> T:
        delay = _BACKOFF_FIRST_S
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                details = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    log.debug(
                        "%s to %s unavailable (attempt %d), retrying in %.1fs: %s",
                        rpc,
                        self.address,
                        attempt + 1,
                        delay,
                        details,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                if code in _UNREACHABLE:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise self._unreachable(rpc, code.name, f"{details}{tries}", self.address) from None
                raise self._error(rpc, code.name, details, self.address) from None
            except ValueError as exc:  # e.g. a closed channel
                raise self._error(rpc, "CANCELLED", str(exc), self.address) from None
        raise AssertionError("unreachable")

    def rejected(self, rpc: str, message: str) -> ServiceError:
        """The error for a reply that succeeded at the RPC level but refused the request."""
        return self._error(rpc, "OK", f"rejected: {message}", self.address)
