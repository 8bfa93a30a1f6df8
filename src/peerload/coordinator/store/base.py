"""The registry's storage contract: one record per (mx_source_id, worker_id), atomic updates.

Every write gives the record a new revision, unique within the store. The reaper's conditional
writes take the entry it read and succeed only if the record still has that revision, so any
write in between (a heartbeat, a re-publish, another replica's reaper) wins: even within one
millisecond, and whatever the clocks of several replicas say.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from peerload.wire import SourceStatus

if TYPE_CHECKING:
    from peerload.settings import Settings


class WorkerEntry(NamedTuple):
    """One published worker as stored: indexed fields plus the published request bytes.

    A named tuple, not a dataclass: a listing builds one per worker, and a tuple is several
    times cheaper to make (new ones are made with `_replace`).
    """

    mx_source_id: str
    worker_id: str
    worker_rank: int
    model_name: str  # lower-cased, as hashed into the source id
    status: int  # SourceStatus as last written (the registry derives the effective one)
    updated_at_ms: int  # last publish or heartbeat, unix ms
    source_load: float | None
    payload: bytes  # serialized PublishMetadataRequest (identity, worker, pod fields); b"" when not read
    revision: int = 0  # set by the store on every write
    # What ListSources shows of the worker that only a publish changes: a serialized
    # SourceInstanceRef without updated_at and source_load (b"": not read, or a record written
    # by a peerload that kept none; the payload then has it).
    listing: bytes = b""
    instance: str = ""  # the publishing process (wire.INSTANCE_HEADER), "" when it sent none


@dataclass(frozen=True)
class Beat:
    """One heartbeat to record: a worker's new status, time and load."""

    mx_source_id: str
    worker_id: str
    worker_rank: int  # must match the published rank
    status: int
    updated_at_ms: int
    source_load: float | None
    instance: str = ""  # the beating process, "" when it sent none


class Heartbeat(enum.Enum):
    """Outcome of `Store.heartbeat`."""

    OK = "ok"
    MISSING = "missing"
    RANK_MISMATCH = "rank_mismatch"
    SUPERSEDED = "superseded"  # the record is another process' now (both sent instances, they differ)


class Store(ABC):
    """Where the registry keeps workers. Every method is atomic on its own."""

    @abstractmethod
    def put(self, entry: WorkerEntry) -> None:
        """Insert, or replace the worker with the same (mx_source_id, worker_id)."""

    @abstractmethod
    def get(self, mx_source_id: str, worker_id: str) -> WorkerEntry | None:
        """The entry, or None."""

    @abstractmethod
    def entries(self, mx_source_id: str | None = None, *, payload: bool = True) -> list[WorkerEntry]:
        """All entries, or those of one source id; `payload=False` may leave payloads empty (cheaper)."""

    def listed(self, mx_source_id: str) -> list[WorkerEntry]:
        """The entries of one source id for ListSources: `listing` set where the record has one,
        and then `payload` may be empty (cheaper). Override where reading payloads is costly."""
        return self.entries(mx_source_id)

    def reap_candidates(self, now_ms: int, heartbeat_timeout_ms: int, gc_timeout_ms: int) -> list[WorkerEntry]:
        """Entries (payloads may be empty) a reaper pass at `now_ms` may change: READY ones silent
        for longer than the heartbeat timeout, the others silent for longer than the GC timeout.

        A superset is fine (the registry decides again); override to filter where the data is.
        """
        return due(self.entries(payload=False), now_ms, heartbeat_timeout_ms, gc_timeout_ms)

    def count(self, mx_source_id: str) -> int:
        """How many workers one source id has (override where listing them all is costly)."""
        return len(self.entries(mx_source_id))

    @abstractmethod
    def heartbeat(self, beat: Beat) -> Heartbeat:
        """Set status, time and load of an existing worker whose rank (and instance, when the beat
        and the record both have one) matches."""

    @abstractmethod
    def compare_and_set_status(self, seen: WorkerEntry, status: int) -> bool:
        """Set status only if nothing wrote the worker since `seen` was read (same revision)."""

    @abstractmethod
    def compare_and_delete(self, seen: WorkerEntry) -> bool:
        """Delete only if nothing wrote the worker since `seen` was read (same revision)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """Build the store from configuration (override when the store needs settings)."""
        return cls()

    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve requests."""

    def close(self) -> None:
        """Release connections."""


def due(entries: list[WorkerEntry], now_ms: int, heartbeat_timeout_ms: int, gc_timeout_ms: int) -> list[WorkerEntry]:
    """Those of `entries` a reaper pass at `now_ms` may change (see `Store.reap_candidates`)."""
    return [
        e
        for e in entries
        if now_ms - e.updated_at_ms > (heartbeat_timeout_ms if e.status == SourceStatus.READY else gc_timeout_ms)
    ]
