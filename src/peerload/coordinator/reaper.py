"""Background thread that runs `Registry.reap()` periodically; owns nothing else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from peerload.coordinator.registry import Registry
from peerload.errors import StoreUnavailable

logger = logging.getLogger(__name__)


class Reaper:
    """Expire READY workers to STALE and delete old ones; `on_health(bool)` follows the store."""

    def __init__(self, registry: Registry, interval_s: float, on_health: Callable[[bool], None] | None = None) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._on_health = on_health
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peerload-reaper", daemon=True)

    def start(self) -> None:
        """Start reaping every `interval_s` in a background thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.run_once()

    def run_once(self) -> None:
        """One pass; a store outage is logged and reported, never fatal to the thread."""
        try:
            self._registry.reap()
        except StoreUnavailable as exc:
            logger.warning("reaper pass skipped: %s", exc)
            healthy = False
        except Exception:  # keep reaping: one bad record must not stop expiry for all others
            logger.exception("reaper pass failed")
            healthy = True
        else:
            healthy = True
        if self._on_health is not None:
            self._on_health(healthy)

    def close(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
