"""Which parts a worker that is still loading may serve: only those whose checksum matched here."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from peerload.parts import encode_held


@dataclass(frozen=True)
class AvailabilitySnapshot:
    """The held parts at one `version` (what GetAvailability answers)."""

    version: int
    bitmap: bytes
    part_count: int
    complete: bool
    pending: bytes = b""  # parts being read now (not served)


class PartAvailability:
    """The verified parts of a plan of `count` parts; thread-safe, versioned."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._held: set[int] = set()
        self._version = 0
        self._lock = threading.Lock()
        self._pending: Callable[[], Iterable[int]] = tuple

    def pending_from(self, parts_in_flight: Callable[[], Iterable[int]]) -> None:
        """Where the parts being read now come from (the load's scheduler)."""
        self._pending = parts_in_flight

    def mark(self, part: int) -> None:
        """`part` arrived and its checksum matched: readers may take it from now on."""
        if not 0 <= part < self.count:
            raise ValueError(f"part {part} is outside a plan of {self.count} parts")
        with self._lock:
            if part not in self._held:
                self._held.add(part)
                self._version += 1

    def unmark(self, part: int) -> None:
        """`part` may have been overwritten: it is not served any more."""
        with self._lock:
            if part in self._held:
                self._held.discard(part)
                self._version += 1

    def clear(self) -> None:
        """Serve nothing (before a rollback zeroes the memory)."""
        with self._lock:
            if self._held:
                self._held.clear()
                self._version += 1

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def snapshot(self) -> AvailabilitySnapshot:
        pending = set(self._pending())
        with self._lock:
            held = sorted(self._held)
            version = self._version
        return AvailabilitySnapshot(
            version,
            encode_held(held, self.count),
            self.count,
            len(held) == self.count,
            encode_held(pending - set(held), self.count),
        )
