"""Target side: health-check, prepare, discover, transfer, verify, fall back, then publish.

The whole sequence lives in `TargetLoad.run`. Bytes come in verified parts from up to
`max_parallel_sources` peers at once (`striping`); a failed source's unfinished parts go to the
others, storage fills only what no peer delivered, and if that fails too everything is rolled
back, so a half-loaded model is never returned.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from peerload._grpc import ChannelSecurity
from peerload.boxes import Layout
from peerload.client import CoordinatorClient, SourceRef
from peerload.errors import (
    ConfigError,
    CoordinatorError,
    DestinationAbandoned,
    LoadFailed,
    PeerloadError,
    TransferTimeout,
)
from peerload.identity import SourceIdentity, new_worker_id
from peerload.loader import mx_source
from peerload.loader.faulting import Faulting, waves
from peerload.loader.handshake import Handshake, MxPlan
from peerload.loader.load_metrics import origin_of, record_failure, record_fallback, record_load
from peerload.loader.phases import PhaseTimer
from peerload.loader.reshard_load import ReshardHandshake, Resharding, has_layout
from peerload.loader.sources import SourcePool
from peerload.loader.storage import copy_into, fill_parts
from peerload.loader.striping import DISCOVER_S, SOURCE_FAILURES, PeerPlan, SourceStats, StripedRead, StripeOptions
from peerload.loader.survey import explain_sources
from peerload.loader.swarm import list_candidates, part_order_seed, serve_while_loading
from peerload.parts import Part, plan_parts
from peerload.seed.publisher import Publisher
from peerload.settings import Settings
from peerload.tensors import TensorSet, collect
from peerload.transport import make_transport, populate_supported
from peerload.transport.base import Transport

log = logging.getLogger(__name__)

Fallback = Callable[[], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Progress:
    """Bytes moved so far from `source` (`done`) out of the whole load's `total`."""

    source: str
    done: int
    total: int


ProgressHook = Callable[[Progress], None]


@dataclass(frozen=True)
class LoadOptions:
    """How one load runs, besides what it loads (`identity`) and the settings."""

    rank: int = 0  # pp_rank * tp_size + tp_rank
    fallback: Fallback | None = None  # storage tensors by name, final layout; None: no fallback
    publish: bool = True  # serve the loaded tensors as a new source afterwards
    progress: ProgressHook | None = None
    worker_id: str | None = None  # generated when omitted
    # Where each destination tensor sits in the full checkpoint tensors (`peerload.boxes`): lets
    # the load reshard from sources of another tensor-parallel size, and is published afterwards.
    layout: Layout | None = None

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"rank must be >= 0, got {self.rank}")


@dataclass
class LoadResult:
    """What a load did: where the bytes came from, how long each phase took, what was tried."""

    source: str  # the peer that delivered most bytes, or "storage" when storage filled any
    bytes: int
    seconds: dict[str, float]
    attempts: list[str]
    worker_id: str
    # Whether the bytes from peers were checked against their checksums (None: from storage), and
    # if not, why.
    verified: bool | None = None
    unverified_reason: str = ""
    publisher: Publisher | None = None
    tensor_set: TensorSet | None = field(default=None, repr=False)
    sources: list[SourceStats] = field(default_factory=list)  # every peer read from, in start order
    restarted_bytes: int = 0  # bytes read again after a source failed mid-part
    storage_bytes: int = 0  # bytes storage filled (all of them when no peer worked)
    resharded_from: str = ""  # the other layout the peers' bytes were resharded from ("": none)

    @property
    def gbps(self) -> float:
        """GB/s of the data movement itself (transfer phase, or storage load)."""
        moving = self.seconds.get("transfer" if self.source != "storage" else "storage", 0.0)
        return self.bytes / moving / 1e9 if moving > 0 else 0.0

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


@dataclass
class _PeerOutcome:
    """What the peers delivered: parts still missing and the verified plan (for publishing)."""

    parts: list[Part]
    missing: list[Part]
    part_bytes: int
    sums: list[str]


# wait_for_source_s: how often the coordinator is asked again, and how often the wait says so.
_WAIT_POLL_S = 0.5
_WAIT_PROGRESS_S = 5.0


class TargetLoad:
    """One load of `destination` for `identity`; `run()` does it once."""

    def __init__(
        self,
        destination: Mapping[str, torch.Tensor] | torch.nn.Module,
        identity: SourceIdentity,
        settings: Settings,
        options: LoadOptions = LoadOptions(),
    ) -> None:
        self.destination = destination
        self.identity = identity
        self.settings = settings
        self.options = options
        self.rank = options.rank
        self.fallback = options.fallback if settings.storage_fallback else None
        self.worker_id = options.worker_id or new_worker_id(options.rank)
        self.seconds: dict[str, float] = {}
        self.attempts: list[str] = []
        self.security = ChannelSecurity.from_settings(settings)
        self.client = CoordinatorClient(
            settings.coordinator, timeout_s=settings.rpc_timeout_s, retries=settings.rpc_retries, security=self.security
        )
        self.transport: Transport | None = None
        self._waves: list[list[str]] = []
        self._faulting = Faulting([])
        self.pool: SourcePool | None = None  # the sources this load may read (once it is prepared)
        self._resharding: Resharding | None = None  # the ranks of another layout read from, if any
        self.resharded_from = ""  # that layout, described
        self._reshardable_seen = False  # a READY near miss differs only in its parallel layout
        self._used_mx: list[SourceStats] = []  # official ModelExpress seeds read from
        # Fan-out: read from sources still loading; serve our own verified parts while loading.
        self._swarm = settings.serve_while_loading
        self._serve = settings.serve_while_loading and options.publish and settings.verify_checksums
        self._early: Publisher | None = None  # this load, published INITIALIZING while it loads
        self._restarted_bytes = 0
        self._storage_bytes = 0
        self._started = time.perf_counter()
        self.unverified = ""  # why the bytes from peers were not content-verified
        self.hint = ""  # what to change so that a near-miss source can serve (after discovery)

    # -- the sequence --------------------------------------------------------------------------

    def run(self) -> LoadResult:
        started = self._started = time.perf_counter()
        tensor_set: TensorSet | None = None
        try:
            coordinator_up = self._health()
            tensor_set = self._prepare()
            outcome = self._from_peers(tensor_set) if coordinator_up else None
            if outcome is None or outcome.missing:
                self._from_storage(tensor_set, outcome)
            # Published even when the coordinator was down: it publishes itself once that answers.
            publisher = self._publish(tensor_set, outcome) if self.options.publish else None
        except BaseException as exc:
            self._withdraw()
            self._faulting.stop()  # an interrupt must not wait for gigabytes of page faults
            self._finish(keep_transport=False)
            self.seconds["total"] = time.perf_counter() - started
            record_failure(self.seconds)
            if tensor_set is not None and not isinstance(exc, PeerloadError):
                # Interrupted (Ctrl-C) or a bug: the transport is closed, nothing writes any more;
                # never leave half a model in the caller's tensors. Failed loads rolled back already.
                for flat in tensor_set.regions.values():
                    flat.zero_()
            raise
        self._finish(keep_transport=publisher is not None)
        self.seconds["total"] = time.perf_counter() - started
        source = self._main_source()
        result = LoadResult(
            source=source,
            bytes=tensor_set.total_bytes,
            seconds=self.seconds,
            attempts=self.attempts,
            worker_id=self.worker_id,
            verified=None if source == "storage" else not self.unverified,
            unverified_reason=self.unverified,
            publisher=publisher,
            tensor_set=tensor_set,
            sources=self._all_stats(),
            restarted_bytes=self._restarted_bytes,
            storage_bytes=self._storage_bytes,
            resharded_from=self.resharded_from,
        )
        record_load(result, self.identity.model_name, self.rank, self.settings.expect_tcp)
        return result

    def _health(self) -> bool:
        with self._phase("health"):
            try:
                self.client.health_check()
                return True
            except CoordinatorError as exc:
                if self.fallback is None:
                    raise
                self.attempts.append(str(exc))  # "coordinator at HOST:PORT: Check failed with ..."
                log.warning("coordinator unreachable, loading from storage: %s", exc)
                return False

    def _prepare(self) -> TensorSet:
        with self._phase("prepare"):
            tensor_set = collect(self.destination, self.options.layout)
            self._waves = waves(tensor_set)
            self._faulting = Faulting([[tensor_set.regions[n] for n in wave] for wave in self._waves])
            self.transport = make_transport(self.settings, self.worker_id)
            self.transport.register(tensor_set.regions)
        return tensor_set

    def _from_peers(self, tensor_set: TensorSet) -> _PeerOutcome | None:
        """Stripe the load over the READY peers; None when no peer was usable at all."""
        pool = self.pool = self._pool(tensor_set)
        pool.offer(self._discover()[: max(self.settings.max_source_attempts, self.settings.max_parallel_sources)])
        first = pool.next()
        while isinstance(first, MxPlan):  # only when no peerload seed was usable
            try:
                return self._from_modelexpress(first, tensor_set)
            except SOURCE_FAILURES as exc:
                first.stats.error = f"{type(exc).__name__}: {exc}"
                self.attempts.append(f"source {first.worker_id}: {first.stats.error}")
                log.warning("source %s failed (%s); rolling back", first.worker_id, first.stats.error)
                self._settle([first.worker_id])
                self._rollback(tensor_set)
            first = pool.next()
        if first is None and self._swarm and pool.busy:
            first = self._wait_for_a_source(pool)
        if first is None:
            if has_layout(tensor_set):
                return self._from_resharding(tensor_set)
            if self._reshardable_seen:
                line = _no_layout_line(tensor_set)
                self.attempts.append(line)
                log.warning("%s", line)
            return None
        if not self.settings.verify_checksums:
            self.unverified = "checksum verification is turned off"
        parts = first.manifest.parts() or self._fallback_plan(tensor_set)
        expected = list(first.manifest.part_checksums)
        self._serve_while_loading(tensor_set, first)
        availability = self._early.availability if self._early is not None else None
        sources = [first]
        while len(sources) < self.settings.max_parallel_sources:
            more = pool.next_peer(first)
            if more is None:
                break
            sources.append(more)
        assert self.transport is not None
        reading = StripedRead(
            self.transport,
            tensor_set,
            parts,
            expected,
            StripeOptions(
                part_timeout_s=self.settings.part_timeout_s,
                deadline=time.monotonic() + self.settings.transfer_timeout_s,
                verify=self.settings.verify_checksums,
                wait_faulted=None if populate_supported() else self._wait_faulted(tensor_set, parts),
                on_bytes=self._progress_hook(tensor_set.total_bytes),
                on_drop=pool.dropped,
                on_verified=availability.mark if availability is not None else None,
                on_invalid=availability.unmark if availability is not None else None,
                more_sources=(lambda room: pool.join(room, first)) if self._swarm else None,
                max_sources=self.settings.max_parallel_sources,
                shuffle=part_order_seed(self.worker_id) if self._swarm else None,
            ),
        )
        if availability is not None:
            availability.pending_from(reading.in_flight)
        with self._phase("transfer"):
            reading.run(sources, lambda: pool.next_peer(first))
        if reading.timed_out:
            # A timed-out read may land after its parts were read again: wait, then check them again.
            self._settle(sorted(reading.timed_out))
            reading.recheck()
        self.seconds["verify"] = reading.verify_seconds
        self._restarted_bytes = reading.scheduler.restarted_bytes
        missing = [parts[i] for i in reading.scheduler.missing()]
        if self._early is not None and missing:
            self._withdraw()  # storage fills the rest; the plain publish path serves the result
        return _PeerOutcome(parts=parts, missing=missing, part_bytes=first.manifest.part_bytes, sums=expected)

    def _from_resharding(self, tensor_set: TensorSet) -> _PeerOutcome | None:
        """Read from the ranks of another layout of the model, per a checked plan; None when none can serve."""
        assert self.transport is not None
        handshake = ReshardHandshake(
            self.client,
            self.transport,
            tensor_set,
            self.settings,
            self.security,
            self.worker_id,
            self.seconds,
            self.attempts.append,
        )
        found = handshake.first_usable(self.identity)
        if found is None:
            return None
        self._resharding = found
        self.resharded_from = found.layout.describe()
        if not self.settings.verify_checksums:
            self.unverified = "checksum verification is turned off"
        reading = StripedRead(
            self.transport,
            tensor_set,
            found.parts,
            [],
            StripeOptions(
                part_timeout_s=self.settings.part_timeout_s,
                deadline=time.monotonic() + self.settings.transfer_timeout_s,
                verify=self.settings.verify_checksums,
                wait_faulted=None if populate_supported() else self._wait_faulted(tensor_set, found.parts),
                on_bytes=self._progress_hook(tensor_set.total_bytes),
                on_drop=lambda worker_id, exc: self.attempts.append(f"source {worker_id}: {type(exc).__name__}: {exc}"),
                max_sources=len(found.sources),
                ops_for=found.ops_for,
                check=found.check,
                after_read=found.after_read,
                verify_workers=len(found.sources),
            ),
        )
        with self._phase("transfer"):
            reading.run(found.sources, lambda: None)
        if reading.timed_out:
            self._settle(sorted(reading.timed_out))
            reading.recheck()
        self.seconds["verify"] = reading.verify_seconds
        self._restarted_bytes = reading.scheduler.restarted_bytes
        missing = [found.parts[i] for i in reading.scheduler.missing()]
        return _PeerOutcome(parts=found.parts, missing=missing, part_bytes=0, sums=[])

    def _serve_while_loading(self, tensor_set: TensorSet, first: PeerPlan) -> None:
        """Publish this load INITIALIZING, serving its parts as they verify (fan-out); best effort."""
        if not self._serve or first.manifest.part_bytes == 0:
            return
        assert self.transport is not None
        with self._phase("publish"):
            try:
                self._early = serve_while_loading(
                    tensor_set,
                    self.identity,
                    self.settings,
                    rank=self.rank,
                    worker_id=self.worker_id,
                    transport=self.transport,
                    plan_of=first.manifest,
                )
            except PeerloadError as exc:
                self.attempts.append(f"serving while loading failed (loading anyway): {exc}")
                log.warning("cannot serve while loading, loading anyway: %s", exc)

    def _pool(self, tensor_set: TensorSet) -> SourcePool:
        """The pool of sources of this load, handshaking them against `tensor_set`."""
        assert self.transport is not None
        handshake = Handshake(
            self.client, self.transport, tensor_set, self.settings, self.security, self.worker_id, self.seconds
        )
        return SourcePool(self.client, self.identity, self.rank, self.worker_id, handshake, self.attempts.append)

    def _wait_for_a_source(self, pool: SourcePool) -> PeerPlan | None:
        """Every source was at its reader cap: look again (READY and loading) for up to part_timeout_s."""
        deadline = time.monotonic() + min(self.settings.part_timeout_s, self.settings.transfer_timeout_s)
        log.info("every source serves its maximum of readers; waiting for one (or a loading peer)")
        with self._phase("discover"):
            while time.monotonic() < deadline:
                time.sleep(DISCOVER_S)
                found = pool.first_of(pool.untried())
                if isinstance(found, MxPlan):  # only peerload sources can start a striped load here
                    found.read.release()
                elif found is not None:
                    return found
        return None

    def _withdraw(self) -> None:
        """Stop serving this load's parts (before memory is rolled back or storage fills it)."""
        early, self._early = self._early, None
        if early is not None:
            early.withdraw()

    def _discover(self) -> list[SourceRef]:
        with self._phase("discover"):
            try:
                ready, partial = self._candidates()
            except CoordinatorError as exc:
                if self.fallback is None:
                    raise
                self.attempts.append(f"discovery failed: {exc}")
                return []
        if not ready:
            reason = (
                f"no READY source of {self.identity.model_name} (id {self.identity.source_id()}) at rank {self.rank}"
            )
            if self.settings.wait_for_source_s and not partial:
                reason += f" within {self.settings.wait_for_source_s:g} s (wait_for_source_s)"
            self.attempts.append(reason)
            if not partial:
                then = "loading from storage" if self.fallback is not None else "and no storage fallback"
                log.info("%s; %s", reason, then)
            self._explain_no_source()
        return ready + partial

    def _candidates(self) -> tuple[list[SourceRef], list[SourceRef]]:
        """READY and loading sources; with wait_for_source_s, waits (bounded) until there is one."""
        listed = list_candidates(self.client, self.identity, self.rank, {self.worker_id}, self._swarm)
        wait_s = self.settings.wait_for_source_s
        if any(listed) or not wait_s:
            return listed
        deadline = time.monotonic() + wait_s
        said = 0.0  # when the progress line was last written
        while not any(listed) and (left := deadline - time.monotonic()) > 0:
            if time.monotonic() - said >= _WAIT_PROGRESS_S:
                said = time.monotonic()
                log.info(
                    "waiting for a source of %s (id %s) at rank %d to become READY: %.0f s left (wait_for_source_s)",
                    self.identity.model_name,
                    self.identity.source_id(),
                    self.rank,
                    left,
                )
            time.sleep(min(_WAIT_POLL_S, left))
            listed = list_candidates(self.client, self.identity, self.rank, {self.worker_id}, self._swarm)
        return listed

    def _explain_no_source(self) -> None:
        """Add the sources that almost matched to the attempts (bounded RPCs; never fails the load)."""
        with self._phase("discover"):
            try:
                found = explain_sources(self.client, self.identity, self.rank, exclude={self.worker_id})
            except CoordinatorError as exc:
                self.attempts.append(f"listing the coordinator's other sources failed: {exc}")
                return
        self.attempts.extend(found.attempt_lines())
        self.hint = found.hint
        self._reshardable_seen = any(m.reshardable and m.ready for m in found.near_misses)

    def _from_modelexpress(self, plan: MxPlan, tensor_set: TensorSet) -> _PeerOutcome:
        """Read everything from one official seed, wave by wave (no parts: it publishes no checksums)."""
        assert self.transport is not None
        self._used_mx.append(plan.stats)
        deadline = time.monotonic() + self.settings.transfer_timeout_s
        hook = self._progress_hook(tensor_set.total_bytes)
        progress = (lambda delta: hook(plan.worker_id, delta)) if hook else None
        started = time.perf_counter()
        try:
            with self._phase("transfer"):
                for i, wave in enumerate(self._waves):
                    self._faulting.wait(i)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TransferTimeout("the load's transfer timeout passed", plan.worker_id)
                    ops = [op for name in wave for op in plan.read.reads.get(name, [])]
                    self.transport.read(plan.read.peer, ops, timeout_s=left, progress=progress)
        finally:
            plan.read.release()
        plan.stats.bytes = sum(op.size for ops in plan.read.reads.values() for op in ops)
        plan.stats.seconds = time.perf_counter() - started
        self.unverified = mx_source.UNVERIFIED
        log.warning("loaded from %s without content verification: %s", plan.worker_id, self.unverified)
        return _PeerOutcome(parts=[], missing=[], part_bytes=0, sums=[])

    def _fallback_reason(self, outcome: _PeerOutcome | None) -> str:
        """Why storage is read: coordinator_unreachable, no_source, sources_failed or peers_incomplete."""
        if outcome is not None:
            return "peers_incomplete"
        if any(a.startswith(("coordinator ", "discovery failed")) for a in self.attempts):
            return "coordinator_unreachable"
        return "sources_failed" if any(a.startswith("source ") for a in self.attempts) else "no_source"

    def _fallback_plan(self, tensor_set: TensorSet) -> list[Part]:
        """A plan of our own when the source publishes none (only allowed without verification)."""
        return plan_parts(((n, r.numel()) for n, r in tensor_set.regions.items()), self.settings.chunk_bytes)

    def _from_storage(self, tensor_set: TensorSet, outcome: _PeerOutcome | None) -> None:
        """Fill what no peer delivered (everything when no peer worked) from storage."""
        missing_bytes = tensor_set.total_bytes if outcome is None else sum(p.nbytes for p in outcome.missing)
        if self.fallback is None:
            self._rollback(tensor_set)
            raise LoadFailed(
                f"no peer could provide {self.identity.model_name} at rank {self.rank} ({missing_bytes} bytes "
                "missing) and no storage fallback is configured; the destination was rolled back",
                self.attempts,
                hint=self.hint,
            )
        if outcome is not None:
            log.warning("peers left %d bytes undelivered; reading them from storage", missing_bytes)
        record_fallback(self._fallback_reason(outcome), self.identity.model_name, self.rank, self.attempts, self.hint)
        with self._phase("storage"):
            self._faulting.join()
            try:
                loaded = self.fallback()
                if outcome is None:
                    copy_into(tensor_set, loaded)
                    self._storage_bytes = tensor_set.total_bytes
                else:
                    self._storage_bytes = fill_parts(tensor_set, loaded, outcome.missing)
            except BaseException:
                self._rollback(tensor_set)
                raise

    def _publish(self, tensor_set: TensorSet, outcome: _PeerOutcome | None) -> Publisher | None:
        if self._early is not None:  # served while loading, every part verified: now complete
            early, self._early = self._early, None
            with self._phase("publish"):
                early.ready(self._summary(tensor_set))
            return early
        # Checksums verified from peers are reused; after storage filled bytes they are recomputed.
        reuse = outcome is not None and not outcome.missing and outcome.sums
        with self._phase("publish"):
            try:
                return Publisher(
                    tensor_set,
                    self.identity,
                    rank=self.rank,
                    settings=self.settings,
                    worker_id=self.worker_id,
                    transport=self.transport,
                    part_sums=(outcome.part_bytes, outcome.sums) if reuse and outcome else None,
                    load_summary=self._summary(tensor_set),
                    publish_later=True,
                )
            except PeerloadError as exc:
                # The model is loaded and verified; failing to become a seed must not lose it.
                self.attempts.append(f"publish as a new source failed: {exc}")
                log.warning("loaded, but could not publish as a new source: %s", exc)
                return None

    # -- helpers -------------------------------------------------------------------------------

    def _summary(self, tensor_set: TensorSet) -> str:
        """How this load went, as the published record carries it (the coordinator's status page)."""
        peer_bytes = sum(s.bytes for s in self._all_stats())
        moving = self.seconds.get("storage" if self._storage_bytes and not peer_bytes else "transfer", 0.0)
        return json.dumps(
            {
                "origin": origin_of(peer_bytes, self._storage_bytes),
                "bytes": tensor_set.total_bytes,
                "seconds": round(time.perf_counter() - self._started, 3),
                "gbps": round(tensor_set.total_bytes / moving / 1e9, 3) if moving > 0 else 0.0,
                "sources": [s.worker_id for s in self._all_stats() if s.bytes],
                "finished_at": round(time.time(), 3),
            },
            separators=(",", ":"),
        )

    def _main_source(self) -> str:
        """'storage' when storage filled anything, else the peer that delivered most bytes."""
        delivered = [s for s in self._all_stats() if s.bytes]
        if self._storage_bytes or not delivered:
            return "storage"
        return max(delivered, key=lambda s: s.bytes).worker_id

    def _all_stats(self) -> list[SourceStats]:
        used = self.pool.used() if self.pool is not None else []
        resharded = self._resharding.sources if self._resharding is not None else []
        return [*self._used_mx, *(plan.stats for plan in [*used, *resharded])]

    def _settle(self, sources: list[str]) -> None:
        """Before a rollback or a re-check: wait until failed transfers can no longer write into the destination."""
        assert self.transport is not None
        bound = self.settings.settle_timeout_s
        with self._phase("settle"):
            settled = self.transport.settle(bound)
        if not settled:
            raise DestinationAbandoned(
                f"a timed-out transfer from source(s) {', '.join(sources)} may still write into the destination after "
                f"{bound:g} s (settle_timeout_s): it was given up, not returned; discard it",
                self.attempts,
            )

    def _rollback(self, tensor_set: TensorSet) -> None:
        self._withdraw()  # nobody may read these parts once they are zeroed
        self._faulting.join()  # the page-touching fallback must not race these writes
        for flat in tensor_set.regions.values():
            flat.zero_()

    def _wait_faulted(self, tensor_set: TensorSet, parts: list[Part]) -> Callable[[Part], None]:
        """Blocks a reader until the wave holding a part's last region is faulted in."""
        wave_of = {name: i for i, wave in enumerate(self._waves) for name in wave}
        return lambda part: self._faulting.wait(max(wave_of[r] for r in part.regions))

    def _progress_hook(self, total: int) -> Callable[[str, int], None] | None:
        hook = self.options.progress
        if hook is None:
            return None
        done: dict[str, int] = {}
        lock = threading.Lock()

        def report(source: str, delta: int) -> None:
            with lock:
                done[source] = done.get(source, 0) + delta
                event = Progress(source=source, done=done[source], total=total)
            hook(event)

        return report

    def _phase(self, name: str) -> PhaseTimer:
        return PhaseTimer(self.seconds, name)

    def _finish(self, keep_transport: bool) -> None:
        """Wait for the prefault thread; release leases; close what a publisher did not take over."""
        self._faulting.join()
        if self.pool is not None:
            self.pool.release()
        if self._resharding is not None:
            self._resharding.release()
        if not keep_transport and self.transport is not None:
            self.transport.close()
        self.transport = None
        self.client.close()


def load_into(
    destination: Mapping[str, torch.Tensor] | torch.nn.Module,
    identity: SourceIdentity,
    *,
    rank: int = 0,
    settings: Settings | None = None,
    fallback: Fallback | None = None,
    publish: bool = True,
    progress: ProgressHook | None = None,
    worker_id: str | None = None,
    layout: Layout | None = None,
) -> LoadResult:
    """Fill `destination` in place from READY peers, else from `fallback`, then publish it.

    Bytes come in verified parts from up to `settings.max_parallel_sources` peers at once; a
    peer that fails mid-load is dropped and only its unfinished parts are read again elsewhere;
    storage fills only what no peer delivered.

    Args:
        destination: the model (or name->tensor map) with allocated, possibly uninitialised
            tensors in the final post-processed layout (the same layout the seeds publish).
        identity: what to load; sources must have the same identity and `rank`.
        rank: this worker's rank (pp_rank * tp_size + tp_rank).
        settings: configuration; defaults to `Settings.load()` (env vars).
        fallback: returns the tensors from storage, by name, in the final layout; used when no
            peer works (and when the coordinator is down). None: raise instead.
        publish: after loading, serve these tensors as a new source (keep `result.publisher`
            alive, or call `result.close()` when the instance stops).
        progress: called with `Progress` as bytes arrive from a peer (from reader threads).
        worker_id: this worker's id as a source; generated when omitted.
        layout: where each destination tensor sits in the full checkpoint tensors (name ->
            boxes, `peerload.boxes`; e.g. `adapters.hf.tensor_layout`). With it, sources of
            another tensor-parallel size can serve this load (resharding) when none of this
            layout is READY, and this worker publishes it afterwards.

    Raises:
        CoordinatorUnavailable: the coordinator is down and there is no fallback.
        LoadFailed: no peer and no storage produced a verified model (destination rolled back).
        ConfigError / MissingExtraError: bad destination tensors or an unavailable transport.
    """
    options = LoadOptions(
        rank=rank, fallback=fallback, publish=publish, progress=progress, worker_id=worker_id, layout=layout
    )
    return TargetLoad(destination, identity, settings or Settings.load(), options).run()


def _no_layout_line(tensor_set: TensorSet) -> str:
    """Why this load cannot reshard from a READY source of another layout: the tensors it has no boxes for."""
    missing = [e for e in tensor_set.entries if not e.boxes]
    head = "resharding: a source of another parallel layout is READY, but this load"
    if len(missing) == len(tensor_set.entries) and not any(e.no_layout for e in missing):
        return (
            f"{head} has no layout (boxes per tensor) to plan from, so it cannot read it: `peerload load`, "
            "load_into(layout=...) and vLLM's `--load-format peerload` have one (docs/resharding.md)"
        )
    named = "; ".join(f"{e.name} ({e.no_layout or 'no layout'})" for e in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"{head} cannot describe {len(missing)} of its tensors, so it cannot plan from it: {named}{more}"
