"""The sources one load may read: handed out handshaken, tried once, replaced when dropped.

Three kinds of threads ask the pool for sources while a load runs: the load itself (the first
sources), a reader whose source was dropped (a spare in its place), and the striped read's
poller (sources that appeared since). The pool's lock guards only its own books (which sources
were offered, tried, used, dropped); every handshake (RPCs to the coordinator and the source)
runs outside it, so replacing a dropped source never waits behind another thread's slow handshake.
What a handshake checks is the caller's (`handshake.Handshake`, or a resharding one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from peerload.client import CoordinatorClient, SourceRef
from peerload.errors import CoordinatorError, LeaseRefused
from peerload.identity import SourceIdentity
from peerload.loader.handshake import MxPlan, Plan
from peerload.loader.striping import SOURCE_FAILURES, PeerPlan
from peerload.loader.swarm import list_candidates

log = logging.getLogger(__name__)

# (listed source, the striped load it would join or None) -> a usable source; raises SOURCE_FAILURES.
HandshakeFn = Callable[[SourceRef, "PeerPlan | None"], Plan]


class SourcePool:
    """The sources of one load (`worker_id`) of `identity` at `rank`; thread-safe."""

    def __init__(
        self,
        client: CoordinatorClient,
        identity: SourceIdentity,
        rank: int,
        worker_id: str,
        handshake: HandshakeFn,
        record: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.identity = identity
        self.rank = rank
        self._handshake = handshake
        self._record = record or (lambda line: None)  # a line for the load's attempts
        self._lock = threading.Lock()
        self._offered: Iterator[SourceRef] = iter(())
        self._tried: set[str] = {worker_id}  # handshaken (or refused) already, and this load itself
        self._used: list[PeerPlan] = []  # handshaken peerload sources: their leases are this load's
        self._dropped: dict[str, str] = {}  # worker id -> why a striped read dropped it
        self._busy = False  # a source refused only because it served its maximum of readers

    # -- handing out sources -------------------------------------------------------------------

    def offer(self, refs: Iterable[SourceRef]) -> None:
        """The candidates `next()` hands out, best first (replaces what is left of earlier offers)."""
        with self._lock:
            self._offered = iter(list(refs))

    def next(self, parts_of: PeerPlan | None = None) -> Plan | None:
        """The next offered candidate that is usable, handshaken; None when the offer is spent.

        With `parts_of` (a striped load under way) only sources that can join it are usable.
        """
        return self._first_usable(self._offered, parts_of)

    def next_peer(self, parts_of: PeerPlan) -> PeerPlan | None:
        """`next(parts_of)`: a source to join (or replace one in) the striped load of `parts_of`."""
        plan = self.next(parts_of)
        assert not isinstance(plan, MxPlan), "a handshake refuses ModelExpress seeds when parts_of is given"
        return plan

    def first_of(self, refs: Iterable[SourceRef], parts_of: PeerPlan | None = None) -> Plan | None:
        """The first of `refs` not tried yet that is usable, handshaken (None: none)."""
        return self._first_usable(iter(list(refs)), parts_of)

    def join(self, room: int, parts_of: PeerPlan) -> list[PeerPlan]:
        """Up to `room` sources that appeared since the load began (READY or still loading), handshaken."""
        joined: list[PeerPlan] = []
        for ref in self.untried():
            if len(joined) >= room:
                break
            found = self.first_of([ref], parts_of)
            if isinstance(found, PeerPlan):
                joined.append(found)
        return joined

    def untried(self) -> list[SourceRef]:
        """Listed sources not tried yet, READY first then still loading; [] when the coordinator fails."""
        try:
            ready, partial = list_candidates(self.client, self.identity, self.rank, self.tried(), True)
        except CoordinatorError as exc:
            log.debug("looking for more sources failed: %s", exc)
            return []
        return ready + partial

    # -- the books -----------------------------------------------------------------------------

    def dropped(self, worker_id: str, exc: BaseException) -> None:
        """A striped read dropped this source (it is never handed out again)."""
        line = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._dropped[worker_id] = line
        self._record(f"source {worker_id}: {line}")

    def tried(self) -> set[str]:
        """Sources handshaken or refused so far (a copy), this load's own id among them."""
        with self._lock:
            return set(self._tried)

    def used(self) -> list[PeerPlan]:
        """Peerload sources handshaken, in the order they were (their leases are this load's)."""
        with self._lock:
            return list(self._used)

    def dropped_sources(self) -> dict[str, str]:
        """Worker id -> why a striped read dropped it."""
        with self._lock:
            return dict(self._dropped)

    @property
    def busy(self) -> bool:
        """Whether a source refused this load only because it served its maximum of readers."""
        with self._lock:
            return self._busy

    def release(self) -> None:
        """Give back the leases of every source used (those a reader has not given back already)."""
        for plan in self.used():
            plan.release()

    # -- one candidate at a time ---------------------------------------------------------------

    def _first_usable(self, refs: Iterator[SourceRef], parts_of: PeerPlan | None) -> Plan | None:
        while True:
            ref = self._claim(refs)
            if ref is None:
                return None
            plan = self._try(ref, parts_of)
            if plan is not None:
                return plan

    def _claim(self, refs: Iterator[SourceRef]) -> SourceRef | None:
        """The next of `refs` no thread has tried, marked tried (under the lock: no source is asked twice)."""
        with self._lock:
            for ref in refs:
                if ref.worker_id not in self._tried:
                    self._tried.add(ref.worker_id)
                    return ref
        return None

    def _try(self, ref: SourceRef, parts_of: PeerPlan | None) -> Plan | None:
        """Handshake one claimed source, outside the lock; None when it refused."""
        try:
            plan = self._handshake(ref, parts_of)
        except SOURCE_FAILURES as exc:
            self._record(f"source {ref.worker_id}: {type(exc).__name__}: {exc}")
            log.warning("source %s refused (%s: %s)", ref.worker_id, type(exc).__name__, exc)
            if isinstance(exc, LeaseRefused) and not exc.closing:
                with self._lock:
                    self._tried.discard(ref.worker_id)  # at its reader cap now: worth asking again later
                    self._busy = True
            return None
        if isinstance(plan, PeerPlan):
            with self._lock:
                self._used.append(plan)
        return plan
