"""A Store that counts and times every operation (`mx_backend_ops_*`) and raises the store-outage alarm.

An outage is one WARNING line when the first operation fails and one INFO line when the store
answers again, however many RPCs fail in between. The request thread is told that an operation
failed (`failed_in_this_request`), so the RPC's outcome says so even where a handler would
answer an empty list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from peerload.coordinator.store.base import Beat, Heartbeat, Store, WorkerEntry
from peerload.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# ModelExpress names the subsystem here, not the storage engine (that is mx_build_info{backend}).
SUBSYSTEM = "p2p"

OpObserver = Callable[[str, str, str, float], None]  # (store, op, result, seconds)
AlarmHook = Callable[[str, str], None]  # (cause, fix)


class MeteredStore(Store):
    """Delegates to `inner`; every call is observed as (SUBSYSTEM, op, "ok" | "error", seconds)."""

    def __init__(self, inner: Store, observe: OpObserver, in_flight: Callable[[str, int], None], on_outage: AlarmHook):
        self.inner = inner
        self._observe = observe
        self._in_flight = in_flight
        self._on_outage = on_outage
        self._down = False
        self._lock = threading.Lock()
        self._request = threading.local()

    # -- what the RPC edge asks ---------------------------------------------------------------
    def begin_request(self) -> None:
        self._request.failed = False

    def failed_in_this_request(self) -> bool:
        return bool(getattr(self._request, "failed", False))

    @property
    def down(self) -> bool:
        return self._down

    # -- the Store contract -------------------------------------------------------------------
    def put(self, entry: WorkerEntry) -> None:
        self._call("put", lambda: self.inner.put(entry))

    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        return self._call("get", lambda: self.inner.get(mx_source_id, worker_id))

    def entries(self, mx_source_id: str | None = None, *, payload: bool = True) -> list[WorkerEntry]:
        return self._call("entries", lambda: self.inner.entries(mx_source_id, payload=payload))

    def listed(self, mx_source_id: str) -> list[WorkerEntry]:
        return self._call("listed", lambda: self.inner.listed(mx_source_id))

    def reap_candidates(self, now_ms: int, heartbeat_timeout_ms: int, gc_timeout_ms: int) -> list[WorkerEntry]:
        return self._call(
            "reap_candidates", lambda: self.inner.reap_candidates(now_ms, heartbeat_timeout_ms, gc_timeout_ms)
        )

    def count(self, mx_source_id: str) -> int:
        return self._call("count", lambda: self.inner.count(mx_source_id))

    def heartbeat(self, beat: Beat) -> Heartbeat:
        return self._call("heartbeat", lambda: self.inner.heartbeat(beat))

    def compare_and_set_status(self, seen: WorkerEntry, status: int) -> bool:
        return self._call("compare_and_set_status", lambda: self.inner.compare_and_set_status(seen, status))

    def compare_and_delete(self, seen: WorkerEntry) -> bool:
        return self._call("compare_and_delete", lambda: self.inner.compare_and_delete(seen))

    def ping(self) -> None:
        self._call("ping", self.inner.ping)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # e.g. RedisStore.url, for logs and tests
        return getattr(self.inner, name)

    def _call(self, op: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        self._in_flight(op, 1)
        try:
            result = call()
        except StoreUnavailable as exc:
            self._request.failed = True
            self._observe(SUBSYSTEM, op, "error", time.perf_counter() - started)
            self._went_down(exc)
            raise
        except Exception:
            self._observe(SUBSYSTEM, op, "error", time.perf_counter() - started)
            raise
        finally:
            self._in_flight(op, -1)
        self._observe(SUBSYSTEM, op, "ok", time.perf_counter() - started)
        if self._down:
            self._came_back()
        return result

    def _went_down(self, exc: StoreUnavailable) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        self._on_outage(
            f"the coordinator's store ({type(self.inner).__name__}) does not answer: {exc}; RPCs that need it fail "
            "with UNAVAILABLE (clients try another replica or fall back to storage)",
            "bring the store back (is redis-server running and reachable at --redis-url?), or point --redis-url at "
            "a reachable one; seeds re-publish themselves when it returns",
        )

    def _came_back(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.info("the coordinator's store (%s) answers again", type(self.inner).__name__)
