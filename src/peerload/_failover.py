"""Several coordinator replicas behind one client: each call goes to the replica in use, and on to
the next in the list when that one cannot be reached (gRPC's pick-first order, per call).

Replicas over one Redis share every record, so any of them can answer any call, and every call
of the P2pService is safe to repeat (publish and heartbeats overwrite). A DNS name that resolves
to several addresses is one endpoint here: gRPC's own resolver fails over between those.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc

log = logging.getLogger(__name__)

S = TypeVar("S")  # what a caller keeps per endpoint (its stubs)
R = TypeVar("R")

# What moves a call on to the next replica: that one is down, or hung past the deadline.
_FAILOVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Endpoints(Generic[S]):
    """One channel and stubs per replica; `call` tries them in turn, from the one last answering.

    Args:
        addresses: the replicas' HOST:PORT (a DNS name may stand for several).
        open_channel: opens the channel to one address.
        stubs: builds what `call` picks a method from, for one channel.

    A client starts with the first address; to spread a fleet over the replicas, give its
    workers the list in different orders (or one DNS name for all of them).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        open_channel: Callable[[str], grpc.Channel],
        stubs: Callable[[grpc.Channel], S],
    ) -> None:
        if not addresses:
            raise ValueError("no coordinator address")
        self.addresses = tuple(addresses)
        self._channels = [open_channel(a) for a in self.addresses]
        self._stubs = [stubs(c) for c in self._channels]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The address calls go to first (the one that answered last)."""
        return self.addresses[self._current]

    def call(self, pick: Callable[[S], Callable[..., R]]) -> Callable[..., R]:
        """The RPC `pick(stubs)` as one callable `(request, timeout=...)` over every replica.

        The replica in use gets the call; if it is unreachable (UNAVAILABLE, DEADLINE_EXCEEDED)
        the next ones do, each once with the full deadline. The last error is raised when none
        answers, for the caller's own retries.
        """

        def invoke(request: Any, **kwargs: Any) -> R:
            first = self._current
            count = len(self.addresses)
            for step in range(count):
                index = (first + step) % count
                try:
                    response = pick(self._stubs[index])(request, **kwargs)
                except grpc.RpcError as exc:
                    if step + 1 == count or exc.code() not in _FAILOVER:
                        raise
                    log.debug(
                        "coordinator %s unreachable (%s), trying %s",
                        self.addresses[index],
                        exc.code().name,
                        self.addresses[(index + 1) % count],
                    )
                    continue
                self._use(index)
                return response
            raise AssertionError("unreachable")

        return invoke

    def _use(self, index: int) -> None:
        with self._lock:
            if index != self._current:
                log.warning("coordinator %s unreachable: using %s", self.current, self.addresses[index])
                self._current = index

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
