"""In-process store: a dict behind a lock (the embedded default; lost on restart)."""

from __future__ import annotations

import dataclasses
import threading

from peerload.coordinator.store.base import Beat, Heartbeat, Store, WorkerEntry


class MemoryStore(Store):
    """Entries keyed by (mx_source_id, worker_id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], WorkerEntry] = {}

    def put(self, entry: WorkerEntry) -> None:
        with self._lock:
            self._entries[(entry.mx_source_id, entry.worker_id)] = entry

    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        with self._lock:
            return self._entries.get((mx_source_id, worker_id))

    def entries(self, mx_source_id: str | None = None) -> list[WorkerEntry]:
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
            self._entries[key] = dataclasses.replace(
                entry, status=beat.status, updated_at_ms=beat.updated_at_ms, source_load=beat.source_load
            )
            return Heartbeat.OK

    def compare_and_set_status(
        self, mx_source_id: str, worker_id: str, expected_updated_at_ms: int, status: int
    ) -> bool:
        key = (mx_source_id, worker_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.updated_at_ms != expected_updated_at_ms:
                return False
            self._entries[key] = dataclasses.replace(entry, status=status)
            return True

    def compare_and_delete(self, mx_source_id: str, worker_id: str, expected_updated_at_ms: int) -> bool:
        key = (mx_source_id, worker_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.updated_at_ms != expected_updated_at_ms:
                return False
            del self._entries[key]
            return True
