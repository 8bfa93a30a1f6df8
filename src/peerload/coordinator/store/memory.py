"""In-process store: a dict behind a lock (the embedded default; lost on restart)."""

from __future__ import annotations

import itertools
import threading

from peerload.coordinator.store.base import Beat, Heartbeat, Store, WorkerEntry


class MemoryStore(Store):
    """Entries keyed by (mx_source_id, worker_id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], WorkerEntry] = {}
        self._revisions = itertools.count(1)

    def put(self, entry: WorkerEntry) -> None:
        with self._lock:
            stored = entry._replace(revision=next(self._revisions))
            self._entries[(entry.mx_source_id, entry.worker_id)] = stored

    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        with self._lock:
            return self._entries.get((mx_source_id, worker_id))

    def entries(self, mx_source_id: str | None = None, *, payload: bool = True) -> list[WorkerEntry]:
        with self._lock:
            return [e for e in self._entries.values() if mx_source_id is None or e.mx_source_id == mx_source_id]

    def heartbeat(self, beat: Beat) -> Heartbeat:
        key = (beat.mx_source_id, beat.worker_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return Heartbeat.MISSING
            if entry.worker_rank != beat.worker_rank:
                return Heartbeat.RANK_MISMATCH
            if beat.instance and entry.instance and beat.instance != entry.instance:
                return Heartbeat.SUPERSEDED
            self._entries[key] = entry._replace(
                status=beat.status,
                updated_at_ms=beat.updated_at_ms,
                source_load=beat.source_load,
                revision=next(self._revisions),
            )
            return Heartbeat.OK

    def _unchanged(self, seen: WorkerEntry) -> WorkerEntry | None:
        entry = self._entries.get((seen.mx_source_id, seen.worker_id))
        return entry if entry is not None and entry.revision == seen.revision else None

    def compare_and_set_status(self, seen: WorkerEntry, status: int) -> bool:
        with self._lock:
            entry = self._unchanged(seen)
            if entry is None:
                return False
            self._entries[(seen.mx_source_id, seen.worker_id)] = entry._replace(
                status=status, revision=next(self._revisions)
            )
            return True

    def compare_and_delete(self, seen: WorkerEntry) -> bool:
        with self._lock:
            if self._unchanged(seen) is None:
                return False
            del self._entries[(seen.mx_source_id, seen.worker_id)]
            return True
