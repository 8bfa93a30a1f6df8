"""The I/O side of a striped load: one reader thread per active source, parts verified on arrival.

The policy (who reads which part next) is `PartScheduler`; this module only runs it: each
reader asks for a part, READs it, checks its checksum, and reports it done. A source that fails
(dies, stalls past `part_timeout_s`, sends a bad part) is dropped: its unfinished parts go back
to the others and a spare source, if any, takes its place. Sources still loading are polled for
the parts they hold (`poll_s`), and sources that appear during the load join it (`more_sources`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from peerload import telemetry
from peerload.devices import device_id_of
from peerload.errors import (
    ChecksumMismatch,
    LayoutMismatch,
    LeaseRefused,
    NoSourceAvailable,
    ServiceError,
    TransferTimeout,
    TransportError,
)
from peerload.loader.schedule import PartScheduler, PartState
from peerload.manifest import Manifest
from peerload.parts import Part
from peerload.seed_client import SeedClient
from peerload.tensors import TensorSet, part_matches
from peerload.transport.base import EndpointInfo, ReadOp, Transport

log = logging.getLogger(__name__)

# What makes one source unusable: it is dropped, and the others (or storage) take over its parts.
SOURCE_FAILURES = (TransportError, LayoutMismatch, ChecksumMismatch, ServiceError, NoSourceAvailable, LeaseRefused)
# A reader with nothing to take re-checks this often whether a failed source left parts behind.
_IDLE_WAIT_S = 0.05
# How often the sources still loading are asked which parts they hold, and the fleet for new ones.
POLL_S = 0.1
DISCOVER_S = 0.5
MAX_READING_PER_SOURCE = 2  # parts read from one source at once (the simulator uses the same)


@dataclass
class SourceStats:
    """What one source delivered to a load (the `sources` entries of a LoadResult)."""

    worker_id: str
    transport: str
    network: dict[str, str] = field(default_factory=dict)  # the path the bytes took, as configured
    bytes: int = 0
    parts: int = 0
    seconds: float = 0.0  # from this source's first READ to its last delivered part
    error: str = ""  # why it was dropped, if it was

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "worker_id": self.worker_id,
            "transport": self.transport,
            "network": dict(self.network),
            "bytes": self.bytes,
            "parts": self.parts,
            "seconds": round(self.seconds, 6),
            "gbps": round(self.gbps, 4),
            "error": self.error,
        }


def part_ops(regions: Mapping[str, torch.Tensor], manifest: Manifest, part: Part) -> list[ReadOp]:
    """One READ per piece: the source's bytes into ours, at the same offsets, each side's memory named."""
    remote = manifest.region_map()
    ops = []
    for piece in part.pieces:
        flat = regions[piece.region]
        r = remote[piece.region]
        ops.append(
            ReadOp(
                remote_addr=r.addr + piece.offset,
                local_addr=flat.data_ptr() + piece.offset,
                size=piece.size,
                remote_device=r.device_id,
                local_device=device_id_of(flat.device),
                remote_memory=r.memory,
            )
        )
    return ops


@dataclass
class PeerPlan:
    """What the handshake with one source established: where to read, what to expect, its lease."""

    worker_id: str
    peer: EndpointInfo
    manifest: Manifest
    seed: SeedClient
    lease: str | None
    stats: SourceStats
    bad: ChecksumMismatch | None = None  # set by the hashing pool: the source sent a bad part
    holds: set[int] | None = None  # a source still loading: the verified parts it serves; None: all
    version: int = 0  # of `holds`, as the source reported it
    reading_now: int | None = None  # the part its reader thread is reading (even after a drop)

    def release(self, wait: bool = True) -> None:
        """Give the read lease back and close the seed channel (best effort: the lease lapses anyway).

        `wait=False` does it on a thread of its own: a failed source (stopped, partitioned) may not
        answer before the RPC timeout, and the load must not wait for that.
        """
        lease, self.lease = self.lease, None
        if wait:
            self._give_back(lease)
        else:
            threading.Thread(target=self._give_back, args=(lease,), name="peerload-lease-release", daemon=True).start()

    def _give_back(self, lease: str | None) -> None:
        try:
            if lease is not None:
                self.seed.release_lease(lease, self.stats.bytes, self.stats.parts)
        except ServiceError as exc:
            log.debug("releasing the lease on %s failed: %s", self.worker_id, exc)
        finally:
            self.seed.close()


NextSource = Callable[[], "PeerPlan | None"]  # handshakes the next spare source, None when none is left
MoreSources = Callable[[int], "list[PeerPlan]"]  # handshakes up to N sources that appeared since
BytesHook = Callable[[str, int], None]  # (source, bytes just arrived)


@dataclass
class StripeOptions:
    """Limits and hooks of one striped read."""

    part_timeout_s: float
    deadline: float  # monotonic time by which the whole transfer must be done
    verify: bool = True
    wait_faulted: Callable[[Part], None] | None = None  # blocks until a part's pages are resident
    on_bytes: BytesHook | None = None
    on_drop: Callable[[str, BaseException], None] | None = None
    on_verified: Callable[[int], None] | None = None  # a part's checksum matched (it may be served)
    on_invalid: Callable[[int], None] | None = None  # a verified part may have been overwritten
    more_sources: MoreSources | None = None
    max_sources: int = 1  # live sources at once, counting those that join later
    shuffle: int | None = None  # this load's own part order (see PartScheduler)
    # Resharding (`loader.reshard_load`): each source's READs of a part, and the part's check
    # (instead of the same offsets on both sides and the published part checksums). Sources then
    # hold fixed sets of parts (`PeerPlan.holds`), never refreshed.
    ops_for: Callable[[PeerPlan, Part], list[ReadOp]] | None = None
    check: Callable[[PeerPlan, int], bool] | None = None
    after_read: Callable[[PeerPlan, Part], None] | None = None  # runs once a part's READs are done
    verify_workers: int = 1  # parts checked at once (a resharding check waits on its source's digest RPC)


class StripedRead:
    """Reads `parts` of `tensor_set` from several sources at once; `run()` once."""

    def __init__(
        self,
        transport: Transport,
        tensor_set: TensorSet,
        parts: list[Part],
        expected: list[str],
        options: StripeOptions,
    ) -> None:
        self.transport = transport
        self.tensor_set = tensor_set
        self.parts = parts
        self.expected = expected
        self.options = options
        # Per source: one part being read while the previous one is hashed.
        self.scheduler = PartScheduler(
            [p.nbytes for p in parts], max_reading=MAX_READING_PER_SOURCE, shuffle=options.shuffle
        )
        self.verify_seconds = 0.0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._fatal: BaseException | None = None
        self._started: dict[str, float] = {}
        # Sources dropped after a read timed out, and the parts they were reading: such a read may
        # still land (Mooncake cannot cancel a batch), even after another source re-read the part.
        self.timed_out: set[str] = set()
        self._overwritable: set[int] = set()
        self._plans: dict[str, PeerPlan] = {}
        self._grew_at = time.monotonic()  # when a loading source last reported new parts
        self._over = threading.Event()

    def run(self, sources: list[PeerPlan], next_source: NextSource) -> None:
        """Read until every part is verified or no source is left; re-raises a reader's bug."""
        self._next_source = next_source
        self._add(sources)
        poller = threading.Thread(target=self._poll, name="peerload-swarm-poll", daemon=True)
        workers = self.options.verify_workers
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="peerload-verify") as self._hashing:
            for plan in sources:
                self._start(plan)
            poller.start()
            try:
                self._join_readers()
            except BaseException as exc:  # e.g. Ctrl-C: readers stop after the part in hand
                self._stop_all(exc)
                raise
            finally:
                self._over.set()
                poller.join()
        if self._fatal is not None:
            raise self._fatal

    def _add(self, plans: list[PeerPlan]) -> None:
        with self._cond:
            for plan in plans:
                self._plans[plan.worker_id] = plan
            partial = {p.worker_id: p.holds for p in plans if p.holds is not None}
            self.scheduler.add_sources([p.worker_id for p in plans], partial)
            self._cond.notify_all()

    # -- sources still loading, and sources that appear ----------------------------------------

    def _poll(self) -> None:
        """Refresh what loading sources hold (every POLL_S) and let new sources join (every DISCOVER_S)."""
        next_discovery = time.monotonic() + DISCOVER_S
        while not self._over.wait(POLL_S):
            with self._cond:
                loading = [
                    self._plans[n]
                    for n in self.scheduler.alive
                    if self.scheduler.sources[n].holds is not None and self.options.ops_for is None
                ]
            for plan in loading:
                self._refresh(plan)
            if self.options.more_sources is not None and time.monotonic() >= next_discovery:
                next_discovery = time.monotonic() + DISCOVER_S
                with self._cond:
                    room = self.options.max_sources - len(self.scheduler.alive)
                    done = self.scheduler.finished
                if room > 0 and not done:
                    joined = self.options.more_sources(room)
                    self._add(joined)
                    for plan in joined:
                        self._start(plan)

    def _refresh(self, plan: PeerPlan) -> None:
        try:
            held = plan.seed.availability(len(self.parts))
        except SOURCE_FAILURES as exc:
            self._drop(plan, exc)
            return
        with self._cond:
            if not self.scheduler.sources[plan.worker_id].alive:
                return
            if held.version != plan.version or held.parts is None:
                self._grew_at = time.monotonic()
            plan.version, plan.holds = held.version, held.parts
            self.scheduler.set_holdings(plan.worker_id, held.parts, held.pending)
            self._cond.notify_all()

    def in_flight(self) -> set[int]:
        """Parts this load is reading or checking now (served to others as `pending`)."""
        with self._cond:
            return self.scheduler.in_flight()

    def _join_readers(self) -> None:
        while True:
            with self._cond:
                threads = [t for t in self._threads if t.is_alive()]
            if not threads:
                return
            for t in threads:
                t.join()

    def _stop_all(self, exc: BaseException) -> None:
        with self._cond:
            self._fatal = self._fatal or exc
            for name in self.scheduler.alive:
                self.scheduler.drop(name)
            self._cond.notify_all()

    def _start(self, plan: PeerPlan) -> None:
        thread = threading.Thread(
            target=self._reader, args=(plan,), name=f"peerload-read-{plan.worker_id}", daemon=True
        )
        with self._cond:
            self._threads.append(thread)
        thread.start()

    # -- one source ----------------------------------------------------------------------------

    def _reader(self, plan: PeerPlan) -> None:
        try:
            self._read_from(plan)
        except SOURCE_FAILURES as exc:
            self._drop(plan, exc)
        except BaseException as exc:  # a bug, or an interrupt: stop every reader, re-raise in run()
            self._stop_all(exc)
            plan.release()
        else:
            plan.release()

    def _read_from(self, plan: PeerPlan) -> None:
        """Read part after part; each is hashed on the pool while the next one is read."""
        name = plan.worker_id
        pending: list[Future[None]] = []
        while True:
            if plan.bad is not None:
                raise plan.bad
            index = self._take(name)
            if index is None:
                break
            if plan.bad is not None:  # condemned while it waited for a part
                raise plan.bad
            part = self.parts[index]
            if self.options.wait_faulted is not None:
                self.options.wait_faulted(part)
            left = self.options.deadline - time.monotonic()
            if left <= 0:
                raise TransferTimeout("the load's transfer timeout passed", name)
            self._started.setdefault(name, time.perf_counter())
            plan.reading_now = index
            ops = (
                self.options.ops_for(plan, part)
                if self.options.ops_for is not None
                else part_ops(self.tensor_set.regions, plan.manifest, part)
            )
            self.transport.read(
                plan.peer,
                ops,
                timeout_s=min(self.options.part_timeout_s, left),
                progress=self._progress(name),
                last=False,  # more parts follow; the seed's fast polling lingers after the last one
            )
            plan.reading_now = None
            if self.options.after_read is not None:
                self.options.after_read(plan, part)
            if self.options.verify:
                with self._cond:
                    if index not in self.scheduler.sources[name].reading:  # dropped meanwhile (poller)
                        break
                    self.scheduler.read_done(name, index)
                pending = [f for f in pending if not f.done()]
                pending.append(self._hashing.submit(self._verify, plan, index))
            else:
                self._delivered(plan, index)
        for f in pending:
            f.result()
        if plan.bad is not None:
            raise plan.bad

    def _verify(self, plan: PeerPlan, index: int) -> None:
        """Check one part's checksum (on the hashing pool); a mismatch condemns its source."""
        part = self.parts[index]
        began = time.perf_counter()
        if self.options.check is not None:
            ok = self.options.check(plan, index)
        else:
            ok = part_matches(self.tensor_set.regions, part, self.expected[index])
        with self._cond:
            self.verify_seconds += time.perf_counter() - began
        if ok:
            self._delivered(plan, index)
            if self.options.on_verified is not None:
                self.options.on_verified(index)
            return
        plan.bad = ChecksumMismatch(part.regions, source=plan.worker_id)
        telemetry.CHECKSUM_FAILURES.labels("target").inc()
        telemetry.alarm(
            telemetry.CHECKSUM_MISMATCH,
            f"part {index} ({', '.join(part.regions[:3])}{', ...' if len(part.regions) > 3 else ''}) from source "
            f"{plan.worker_id} does not match its published checksum; the source is dropped and its parts are read "
            "again from others",
            f"check source {plan.worker_id}: its memory no longer holds what it published (restart it; if it "
            "recurs, suspect its host's memory or a process writing into its weights)",
            logger=log,
        )
        with self._cond:
            self.scheduler.failed(plan.worker_id, index)
            self._cond.notify_all()

    def _delivered(self, plan: PeerPlan, index: int) -> None:
        with self._cond:
            # Verified bytes count even if their source was dropped while they were checked.
            src = self.scheduler.sources[plan.worker_id]
            if index in src.reading or index in src.verifying:
                self.scheduler.done(plan.worker_id, index)
                plan.stats.bytes += self.parts[index].nbytes
                plan.stats.parts += 1
                plan.stats.seconds = time.perf_counter() - self._started[plan.worker_id]
            self._cond.notify_all()

    def _take(self, name: str) -> int | None:
        """The next part for `name`; waits while other sources' reads may still fail; None: stop."""
        with self._cond:
            while True:
                if self._fatal is not None or not self.scheduler.sources[name].alive:
                    return None
                index = self.scheduler.next_for(name)
                if index is not None:
                    return index
                if self.scheduler.finished or not self.scheduler.waiting_is_useful() or self._hopeless():
                    return None
                if self.options.ops_for is not None and not self.scheduler.in_flight() and not self._held_todo():
                    return None  # fixed holdings: no live source holds what is left, and no read may fail back
                self._cond.wait(_IDLE_WAIT_S)

    def _held_todo(self) -> bool:
        """Whether a live source holds a part nobody has taken yet."""
        todo = {i for i, state in enumerate(self.scheduler.state) if state is PartState.TODO}
        return any(
            s.alive and (s.holds is None and todo or bool(s.holds and todo & s.holds))
            for s in self.scheduler.sources.values()
        )

    def _hopeless(self) -> bool:
        """Past the deadline, or only loading sources left and none of them grew for a part timeout."""
        now = time.monotonic()
        if now >= self.options.deadline:
            return True
        idle = now - self._grew_at
        return not self.scheduler.complete_alive() and idle > self.options.part_timeout_s

    def recheck(self) -> list[int]:
        """After the transport settled: verify again the parts a timed-out read may have overwritten.

        Parts that no longer match go back to missing (storage or a new load fills them); returns them.
        """
        bad = []
        for index in sorted(self._overwritable):
            if not self.options.verify or self.scheduler.state[index] is not PartState.DONE:
                continue
            # A resharded part's check asks its source, which timed out: it counts as missing.
            if self.options.check is not None or not part_matches(
                self.tensor_set.regions, self.parts[index], self.expected[index]
            ):
                self.scheduler.invalidate(index)
                if self.options.on_invalid is not None:
                    self.options.on_invalid(index)
                bad.append(index)
        if bad:
            log.warning("%d verified part(s) were overwritten by a late read; they count as missing", len(bad))
        return bad

    def _drop(self, plan: PeerPlan, exc: BaseException) -> None:
        with self._cond:
            if isinstance(exc, TransferTimeout):
                self.timed_out.add(plan.worker_id)
                self._overwritable.update(self.scheduler.sources[plan.worker_id].reading)
                if plan.reading_now is not None:
                    self._overwritable.add(plan.reading_now)
            if not self.scheduler.sources[plan.worker_id].alive:  # the poller and its reader both saw it
                plan.release(wait=False)
                return
            requeued = self.scheduler.drop(plan.worker_id)
            self._cond.notify_all()
        plan.stats.error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "source %s dropped (%s); %d part(s) go to the other sources",
            plan.worker_id,
            plan.stats.error,
            len(requeued),
        )
        if self.options.on_drop is not None:
            self.options.on_drop(plan.worker_id, exc)
        plan.release(wait=False)
        if self.scheduler.finished or self._fatal is not None:
            return
        spare = self._next_source()
        if spare is not None:
            with self._cond:
                self.scheduler.add_sources([spare.worker_id])
            self._start(spare)

    # -- helpers -------------------------------------------------------------------------------

    def _progress(self, name: str) -> Callable[[int], None] | None:
        hook = self.options.on_bytes
        if hook is None:
            return None
        return lambda delta: hook(name, delta)
