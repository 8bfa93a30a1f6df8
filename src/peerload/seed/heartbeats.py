"""What a seed's heartbeat thread has done so far: counted beats that callers can read and wait on.

A beat is one UpdateStatus attempt. The counts say how a seed rode out a coordinator fault in
beats rather than seconds (e.g. "the first beat to reach the restarted coordinator published
again"), so an embedding program, or a test, can wait for the next beat instead of sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from peerload.wire import SourceStatus


@dataclass(frozen=True)
class HeartbeatCounts:
    """A snapshot. Beats run one at a time: beat number `attempts` is the latest one started, and
    every earlier one has ended, either `succeeded` or `failed` (raised CoordinatorError)."""

    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    republished: int = 0  # beats that found the coordinator had forgotten this worker and published it again
    republished_at: int = 0  # the number of the latest such beat (0: none yet)
    last_status: SourceStatus | None = None  # what the latest successful beat reported
    status_since: int = 0  # the number of the first successful beat in a row that reported `last_status`

    @property
    def ended(self) -> int:
        """Beats that have finished, one way or the other."""
        return self.succeeded + self.failed


class HeartbeatCounter:
    """Thread-safe HeartbeatCounts: the heartbeat thread records, anyone reads or waits."""

    def __init__(self) -> None:
        self._counts = HeartbeatCounts()
        self._changed = threading.Condition()

    def snapshot(self) -> HeartbeatCounts:
        with self._changed:
            return self._counts

    def started(self) -> None:
        self._update(lambda c: replace(c, attempts=c.attempts + 1))

    def republished(self) -> None:
        self._update(lambda c: replace(c, republished=c.republished + 1, republished_at=c.attempts))

    def succeeded(self, status: SourceStatus) -> None:
        def change(c: HeartbeatCounts) -> HeartbeatCounts:
            since = c.status_since if status == c.last_status else c.attempts
            return replace(c, succeeded=c.succeeded + 1, last_status=status, status_since=since)

        self._update(change)

    def failed(self) -> None:
        self._update(lambda c: replace(c, failed=c.failed + 1))

    def wait_for(self, predicate: Callable[[HeartbeatCounts], bool], timeout_s: float) -> HeartbeatCounts | None:
        """A snapshot for which `predicate` holds, None if none does within `timeout_s`. It may be
        a few beats later than the one that made it true: `republished_at` and `status_since` say
        which beat that was."""
        with self._changed:
            if self._changed.wait_for(lambda: predicate(self._counts), timeout_s):
                return self._counts
            return None

    def _update(self, change: Callable[[HeartbeatCounts], HeartbeatCounts]) -> None:
        with self._changed:
            self._counts = change(self._counts)
            self._changed.notify_all()
