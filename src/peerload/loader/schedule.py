"""Which source reads which part next: the striping policy (pure, no I/O, no clock).

Parts are dealt to the sources in contiguous blocks (least loaded source first); a source reads
its own block front to back, and when it runs dry it steals from the back of the block with the
most bytes left, so a fast source ends up reading more. A dropped source's unfinished parts go
back to a shared pool that every source serves before its own block. The loader drives it from
reader threads under one lock; the fleet simulator (`peerload.sim`) drives the very same code
with simulated time.

Swarm (sources still loading): a partial source holds only some parts (`set_holdings`, growing as
it verifies them) and takes, among the parts it holds, those fewest partial sources hold first
(rarest first, ties in this load's own shuffled order, so targets that start together ask the
seeds for different parts and do not fall into step). A complete source leaves the parts some
live partial source holds, or is reading now (`pending`), to it, so the original seeds serve
parts nobody else has or will soon have: about one copy for the whole fleet.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
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
    holds: set[int] | None = None  # parts a loading source may serve; None: all (a complete source)
    pending: set[int] = field(default_factory=set)  # parts a loading source is reading now


class PartScheduler:
    """Assigns parts (by index, with their byte sizes) to named sources.

    Args:
        sizes: bytes of each part, in plan order.
        max_reading: parts one source may have in flight at once (being read or verified).
        shuffle: seed of this load's own part order (None: plan order). Loads that may read each
            other use different ones, so they ask the seeds for different parts.
    """

    def __init__(self, sizes: Sequence[int], *, max_reading: int = 1, shuffle: int | None = None) -> None:
        if max_reading < 1:
            raise ValueError(f"max_reading must be >= 1, got {max_reading}")
        self.sizes = list(sizes)
        self.max_reading = max_reading
        count = len(self.sizes)
        ranked = list(range(count))
        if shuffle is not None:
            random.Random(shuffle).shuffle(ranked)
        self.order = [0] * count  # part -> its position in this load's order
        for position, part in enumerate(ranked):
            self.order[part] = position
        self.state = [PartState.TODO] * count
        self.sources: dict[str, SourceProgress] = {}
        self.pool: deque[int] = deque(sorted(range(count), key=self.order.__getitem__))  # parts nobody holds
        self.partial_holders = [0] * count  # live partial sources holding each part
        self.partial_pending = [0] * count  # live partial sources reading each part now
        self.started: set[int] = set()  # parts whose bytes were read at least once
        self.restarted_bytes = 0  # bytes of parts read again after a failed read

    # -- sources -------------------------------------------------------------------------------

    def add_sources(self, names: Sequence[str], partial: Mapping[str, Iterable[int]] | None = None) -> None:
        """Add sources (least loaded first) and deal the complete ones the pooled parts in contiguous blocks.

        `partial` maps the sources still loading to the parts they hold now (see `set_holdings`).
        """
        partial = partial or {}
        fresh = [n for n in names if n not in self.sources]
        for name in fresh:
            self.sources[name] = SourceProgress(name)
            if name in partial:
                self.set_holdings(name, partial[name])
        fresh = [n for n in fresh if self.sources[n].holds is None]
        if not fresh or not self.pool:
            return
        todo = sorted(self.pool, key=self.order.__getitem__)
        self.pool.clear()
        share = sum(self.sizes[i] for i in todo) / len(fresh)
        held, k = 0, 0
        for i in todo:
            # Move to the next source once this one holds its share (by bytes, not by count).
            if k < len(fresh) - 1 and held >= share:
                k, held = k + 1, 0
            self.sources[fresh[k]].queue.append(i)
            held += self.sizes[i]

    def set_holdings(self, name: str, parts: Iterable[int] | None, pending: Iterable[int] = ()) -> None:
        """`name` (still loading) holds `parts` and is reading `pending` now; None: it holds every part."""
        src = self.sources[name]
        new = None if parts is None else {i for i in parts if 0 <= i < len(self.sizes)}
        reading = set() if new is None else {i for i in pending if 0 <= i < len(self.sizes)} - new
        if src.alive:
            self._count(src, -1)
        src.holds, src.pending = new, reading
        if src.alive:
            self._count(src, +1)

    def _count(self, src: SourceProgress, delta: int) -> None:
        for i in src.holds or ():
            self.partial_holders[i] += delta
        for i in src.pending:
            self.partial_pending[i] += delta

    def drop(self, name: str) -> list[int]:
        """Stop using `name`; the parts it was reading or had queued go back to the pool.

        Parts it finished reading stay its own until their check ends (`done` or `failed`):
        bytes already in place are not read again unless they turn out bad. Returns the re-queued.
        """
        src = self.sources[name]
        if src.alive:
            self._count(src, -1)
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

    def complete_alive(self) -> bool:
        """Whether a live source holds every part (else only loading sources are left)."""
        return any(s.alive and s.holds is None for s in self.sources.values())

    def _partial_alive(self) -> bool:
        return any(s.alive and s.holds is not None for s in self.sources.values())

    # -- parts ---------------------------------------------------------------------------------

    def next_for(self, name: str) -> int | None:
        """The part `name` should read now, or None (at its bound, or nothing left to take)."""
        src = self.sources[name]
        if not src.alive or len(src.reading) + len(src.verifying) >= self.max_reading:
            return None
        if src.holds is not None:
            part = self._rarest_held(src.holds)
        elif self._partial_alive():
            part = self._unshared(src, name)
        elif self.pool:
            part = self.pool.popleft()
        elif src.queue:
            part = src.queue.popleft()
        else:
            victim = self._victim(exclude=name)
            if victim is None:
                return None
            part = victim.queue.pop()
        if part is None:
            return None
        src.reading.add(part)
        self.state[part] = PartState.READING
        self.started.add(part)
        return part

    def in_flight(self) -> set[int]:
        """Parts being read or checked now (what a loading target reports as pending)."""
        return {i for s in self.sources.values() for i in (*s.reading, *s.verifying)}

    def _rarest_held(self, holds: set[int]) -> int | None:
        """Of the parts left that a partial source holds: fewest partial holders first, then load order."""
        todo = [i for i in holds if self.state[i] is PartState.TODO]
        if not todo:
            return None
        part = min(todo, key=lambda i: (self.partial_holders[i], self.order[i]))
        self._unqueue(part)
        return part

    def _unshared(self, src: SourceProgress, name: str) -> int | None:
        """A complete source's next part no live partial source holds or reads: pool, own block, then steal."""
        victim = self._victim(exclude=name)
        lines = [self.pool, src.queue, reversed(victim.queue) if victim else ()]
        for line in lines:
            for i in line:
                if not self.partial_holders[i] and not self.partial_pending[i]:
                    self._unqueue(i)
                    return i
        return None

    def _unqueue(self, part: int) -> None:
        """Take a TODO part out of the pool or whichever block holds it."""
        if part in self.pool:
            self.pool.remove(part)
            return
        for s in self.sources.values():
            if part in s.queue:
                s.queue.remove(part)
                return

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
        """Whether a source with nothing to take should wait (parts in flight may fail, loading sources grow)."""
        return (
            any(s.reading for s in self.sources.values() if s.alive)
            or any(s.verifying for s in self.sources.values())
            or (not self.finished and self._partial_alive())
        )

    def missing(self) -> list[int]:
        """Parts no source delivered, in plan order."""
        return [i for i, s in enumerate(self.state) if s is not PartState.DONE]

    def stranded(self) -> bool:
        """Parts remain but no live source is left to read them."""
        return not self.finished and not self.alive and not any(s.verifying for s in self.sources.values())
