"""The phases of a load, timed into one dict (what `LoadResult.seconds` and reports show)."""

from __future__ import annotations

import threading
import time

_ADD = threading.Lock()  # handshakes time themselves from several threads at once

# Every phase a load times, in the order they first run; `settle` is the wait for timed-out
# transfers to stop writing (before a re-check or a rollback).
PHASES = ("health", "prepare", "discover", "handshake", "transfer", "settle", "verify", "storage", "publish")


class PhaseTimer:
    """Adds the wall time of a `with` block to `seconds[name]`."""

    def __init__(self, seconds: dict[str, float], name: str) -> None:
        if name not in PHASES:  # a phase the reports would not show
            raise ValueError(f"phase {name!r} is not one of PHASES {PHASES}: add it there")
        self.seconds, self.name = seconds, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        took = time.perf_counter() - self.started
        with _ADD:
            self.seconds[self.name] = self.seconds.get(self.name, 0.0) + took
