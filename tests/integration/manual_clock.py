"""A clock the test moves by hand, and a bounded wait for a reaper thread: shared by coordinator tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ManualClock:
    """Unix seconds that move only when a test says so: expiry and ordering without sleeping."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def wait_until(predicate: Callable[[], bool], what: str, hang_s: float) -> None:
    """Poll `predicate` until it holds (the reaper thread works on its own period); `hang_s` only
    turns a hang into a failure and is never reached when things work."""
    deadline = time.monotonic() + hang_s  # clock-ok: only bounds a wait for the reaper thread
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"  # clock-ok: bounds the wait
        time.sleep(0.02)
