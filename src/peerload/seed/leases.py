"""Read leases: how many peers may read a seed's memory at once, for how long, and when it may go.

One-sided reads cannot be refused on the data plane, so a reader asks for a lease first (over the
seed's gRPC services) and a seed at its cap says no; the reader then picks another source. A seed
that is closing grants no new lease and waits for open ones (up to a bound) before it lets its
memory be deregistered.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from peerload import telemetry
from peerload.errors import LeaseRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """A granted read slot; it lapses at `expires_at` (monotonic seconds) unless released first."""

    lease_id: str
    reader: str
    expires_at: float


class LeaseTable:
    """At most `max_readers` unexpired leases of `timeout_s` seconds each; thread-safe.

    Args:
        max_readers: concurrent leases granted (0 = no cap).
        timeout_s: a lease not released within this lapses (a reader that died frees its slot).
        clock: monotonic seconds (tests pass a fake one).
        transport: the seed's transport, for the bytes- and parts-served metrics.
    """

    def __init__(
        self,
        max_readers: int,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        transport: str = "",
    ) -> None:
        if max_readers < 0 or timeout_s <= 0:
            raise ValueError(f"max_readers must be >= 0 and timeout_s > 0, got {max_readers}, {timeout_s}")
        self.max_readers = max_readers
        self.timeout_s = timeout_s
        self._clock = clock
        self.transport = transport
        self._leases: dict[str, Lease] = {}
        self._closing = False
        self._changed = threading.Condition()
        # How often close() went to sleep waiting for open leases: a close that waits is seen
        # waiting (a caller, or a test, can tell "waits for its readers" from "returned at once").
        self.close_waits = 0

    def acquire(self, reader: str) -> Lease:
        """A new lease for `reader`.

        Raises:
            LeaseRefused: the cap is reached, or the table is closing.
        """
        with self._changed:
            self._expire()
            if self._closing:
                telemetry.SEED_REFUSALS.labels("closing").inc()
                raise LeaseRefused(
                    "the seed is shutting down and grants no new reads; read from another source", closing=True
                )
            if self.max_readers and len(self._leases) >= self.max_readers:
                telemetry.SEED_REFUSALS.labels("at_cap").inc()
                raise LeaseRefused(
                    f"the seed is serving its maximum of {self.max_readers} readers; read from another source",
                    closing=False,
                )
            lease = Lease(secrets.token_hex(8), reader, self._clock() + self.timeout_s)
            self._leases[lease.lease_id] = lease
            telemetry.SEED_LEASES_GRANTED.inc()
            return lease

    def release(self, lease_id: str, bytes_read: int = 0, parts_read: int = 0) -> bool:
        """End a lease, counting what the reader says it read; False if it was unknown or had lapsed already."""
        with self._changed:
            found = self._leases.pop(lease_id, None) is not None
            self._changed.notify_all()
        if found:
            telemetry.SEED_LEASES_ENDED.labels("released").inc()
            telemetry.SEED_BYTES_SERVED.labels(self.transport).inc(bytes_read)
            telemetry.SEED_PARTS_SERVED.labels(self.transport).inc(parts_read)
        return found

    @property
    def closing(self) -> bool:
        """True once `close` was called: no new lease will be granted."""
        return self._closing

    def active(self) -> int:
        """Unexpired leases (what a seed reports as its load)."""
        with self._changed:
            self._expire()
            return len(self._leases)

    def close(self, wait_s: float) -> int:
        """Refuse new leases and wait up to `wait_s` for open ones to end; returns those still open."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            self._closing = True
            while True:
                self._expire()
                left = deadline - time.monotonic()
                if not self._leases or left <= 0:
                    return len(self._leases)
                # Wake for releases, and at the latest when the next lease lapses.
                next_lapse = min(lease.expires_at for lease in self._leases.values()) - self._clock()
                if not self.close_waits:  # said once: why a closing seed has not gone yet
                    log.info("closing: waiting up to %.0f s for %d open read lease(s)", left, len(self._leases))
                self.close_waits += 1
                self._changed.notify_all()  # for whoever waits to see this close waiting
                self._changed.wait(max(0.001, min(left, next_lapse)))

    def wait_draining(self, timeout_s: float) -> bool:
        """Block until close() has gone to sleep waiting for open leases (True), or `timeout_s` passed."""
        with self._changed:
            return self._changed.wait_for(lambda: self.close_waits > 0, timeout_s)

    def _expire(self) -> None:
        now = self._clock()
        for lease_id in [k for k, lease in self._leases.items() if lease.expires_at <= now]:
            del self._leases[lease_id]
            telemetry.SEED_LEASES_ENDED.labels("lapsed").inc()
