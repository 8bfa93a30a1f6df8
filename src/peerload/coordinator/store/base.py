"""The registry's storage contract: one record per (mx_source_id, worker_id), atomic updates."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peerload.settings import Settings


@dataclass(frozen=True)
class WorkerEntry:
    """One published worker as stored: indexed fields plus the published request bytes."""

    mx_source_id: str
    worker_id: str
    worker_rank: int
    model_name: str  # lower-cased, as hashed into the source id
    status: int  # SourceStatus as last written (the registry derives the effective one)
    updated_at_ms: int  # last publish or heartbeat, unix ms
    source_load: float | None
    payload: bytes  # serialized PublishMetadataRequest (identity, worker, pod fields)


@dataclass(frozen=True)
class Beat:
    """One heartbeat to record: a worker's new status, time and load."""

    mx_source_id: str
    worker_id: str
    worker_rank: int  # must match the published rank
    status: int
    updated_at_ms: int
    source_load: float | None


class Heartbeat(enum.Enum):
    """Outcome of `Store.heartbeat`."""

    OK = "ok"
    MISSING = "missing"
    RANK_MISMATCH = "rank_mismatch"


class Store(ABC):
    """Where the registry keeps workers. Every method is atomic on its own."""

    @abstractmethod
    def put(self, entry: WorkerEntry) -> None:
        """Insert, or replace the worker with the same (mx_source_id, worker_id)."""

    @abstractmethod
    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        """The entry, or None."""

    @abstractmethod
    def entries(self, mx_source_id: str | None = None) -> list[WorkerEntry]:
        """All entries, or those of one source id."""

    def count(self, mx_source_id: str) -> int:
        """How many workers one source id has (override where listing them all is costly)."""
        return len(self.entries(mx_source_id))

    @abstractmethod
    def heartbeat(self, beat: Beat) -> Heartbeat:
        """Set status, time and load of an existing worker whose rank matches."""

    @abstractmethod
    def compare_and_set_status(
        self, mx_source_id: str, worker_id: str, expected_updated_at_ms: int, status: int
    ) -> bool:
        """Set status only if nothing touched the worker since `expected_updated_at_ms`."""

    @abstractmethod
    def compare_and_delete(self, mx_source_id: str, worker_id: str, expected_updated_at_ms: int) -> bool:
        """Delete only if nothing touched the worker since `expected_updated_at_ms`."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """Build the store from configuration (override when the store needs settings)."""
        return cls()

    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve requests."""

    def close(self) -> None:
        """Release connections."""
