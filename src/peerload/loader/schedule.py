"""Which source reads which part next: the striping policy (pure, no I/O, no clock).

Parts are dealt to the sources in contiguous blocks (least loaded source first); a source reads
its own block front to back, and when it runs dry it steals from the back of the block with the
most bytes left, so a fast source ends up reading more. A dropped source's unfinished parts go
back to a shared pool that every source serves before its own block. The loader drives it from
reader threads under one lock; a simulator can drive it with simulated time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum


class PartState(Enum):
    TODO = "todo"
    READING = "reading"
    VERIFYING = "verifying"
    DONE = "done"


@dataclass
class SourceProgress:
    """What one source has been given and has delivered."""

    name: str
    queue: deque[int] = field(default_factory=deque)  # dealt or stolen, not started
    reading: set[int] = field(default_factory=set)
    verifying: set[int] = field(default_factory=set)  # read, checksum not checked yet
    delivered: list[int] = field(default_factory=list)
    delivered_bytes: int = 0
    alive: bool = True


class PartScheduler:
    """Assigns parts (by index, with their byte sizes) to named sources.

    Args:
        sizes: bytes of each part, in plan order.
        max_reading: parts one source may have in flight at once (being read or verified).
    """

    def __init__(self, sizes: Sequence[int], *, max_reading: int = 1) -> None:
        if max_reading < 1:
            raise ValueError(f"max_reading must be >= 1, got {max_reading}")
        self.sizes = list(sizes)
        self.max_reading = max_reading
        self.state = [PartState.TODO] * len(self.sizes)
        self.sources: dict[str, SourceProgress] = {}
        self.pool: deque[int] = deque(range(len(self.sizes)))  # parts nobody holds
        self.started: set[int] = set()  # parts whose bytes were read at least once
        self.restarted_bytes = 0  # bytes of parts read again after a failed read

    # -- sources -------------------------------------------------------------------------------

    def add_sources(self, names: Sequence[str]) -> None:
        """Add sources (least loaded first) and deal them the pooled parts in contiguous blocks."""
        fresh = [n for n in names if n not in self.sources]
        for name in fresh:
            self.sources[name] = SourceProgress(name)
        if not fresh or not self.pool:
            return
        todo = sorted(self.pool)
        self.pool.clear()
        share = sum(self.sizes[i] for i in todo) / len(fresh)
        held, k = 0, 0
        for i in todo:
            # Move to the next source once this one holds its share (by bytes, not by count).
            if k < len(fresh) - 1 and held >= share:
                k, held = k + 1, 0
            self.sources[fresh[k]].queue.append(i)
            held += self.sizes[i]

    def drop(self, name: str) -> list[int]:
        """Stop using `name`; the parts it was reading or had queued go back to the pool.

        Parts it finished reading stay its own until their check ends (`done` or `failed`):
        bytes already in place are not read again unless they turn out bad. Returns the re-queued.
        """
        src = self.sources[name]
        src.alive = False
        back = sorted(src.reading) + list(src.queue)
        for i in src.reading:
            self.state[i] = PartState.TODO
            self.restarted_bytes += self.sizes[i]
        src.reading.clear()
        src.queue.clear()
        self.pool.extendleft(reversed(back))
        return back

    @property
    def alive(self) -> list[str]:
        return [n for n, s in self.sources.items() if s.alive]

    # -- parts ---------------------------------------------------------------------------------

    def next_for(self, name: str) -> int | None:
        """The part `name` should read now, or None (at its bound, or nothing left to take)."""
        src = self.sources[name]
        if not src.alive or len(src.reading) + len(src.verifying) >= self.max_reading:
            return None
        if self.pool:
            part = self.pool.popleft()
        elif src.queue:
            part = src.queue.popleft()
        else:
            victim = self._victim(exclude=name)
            if victim is None:
                return None
            part = victim.queue.pop()
        src.reading.add(part)
        self.state[part] = PartState.READING
        self.started.add(part)
        return part

    def _victim(self, exclude: str) -> SourceProgress | None:
        """The source with the most queued bytes (ties: the first added)."""
        best, best_bytes = None, 0
        for s in self.sources.values():
            queued = sum(self.sizes[i] for i in s.queue)
            if s.name != exclude and queued > best_bytes:
                best, best_bytes = s, queued
        return best

    def read_done(self, name: str, part: int) -> None:
        """`name`'s bytes of `part` are in place; their checksum is being checked."""
        src = self.sources[name]
        src.reading.discard(part)
        src.verifying.add(part)
        self.state[part] = PartState.VERIFYING

    def done(self, name: str, part: int) -> None:
        """`name` delivered `part`, verified."""
        src = self.sources[name]
        src.reading.discard(part)
        src.verifying.discard(part)
        self.state[part] = PartState.DONE
        src.delivered.append(part)
        src.delivered_bytes += self.sizes[part]

    def failed(self, name: str, part: int) -> None:
        """`name`'s read or check of `part` failed (the source stays; callers usually `drop` it)."""
        self.sources[name].reading.discard(part)
        self.sources[name].verifying.discard(part)
        self.state[part] = PartState.TODO
        self.restarted_bytes += self.sizes[part]
        self.pool.appendleft(part)

    def invalidate(self, part: int) -> None:
        """A delivered `part` turned out bad after all (overwritten later): it is missing again."""
        self.state[part] = PartState.TODO
        self.restarted_bytes += self.sizes[part]

    # -- the whole load ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return all(s is PartState.DONE for s in self.state)

    def waiting_is_useful(self) -> bool:
        """Whether a source with nothing to take should wait (parts in flight may still fail)."""
        return any(s.reading for s in self.sources.values() if s.alive) or any(
            s.verifying for s in self.sources.values()
        )

    def missing(self) -> list[int]:
        """Parts no source delivered, in plan order."""
        return [i for i, s in enumerate(self.state) if s is not PartState.DONE]

    def stranded(self) -> bool:
        """Parts remain but no live source is left to read them."""
        return not self.finished and not self.alive and not any(s.verifying for s in self.sources.values())
