"""Target side: health-check, prepare, discover, transfer, verify, fall back, then publish.

The whole sequence lives in `TargetLoad.run`; every failure of one source rolls the destination
back before the next source (or storage) is tried, so a half-loaded model is never returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from peerload._grpc import ChannelSecurity
from peerload.client import CoordinatorClient, SourceRef, SourceStatus
from peerload.errors import (
    ChecksumMismatch,
    ConfigError,
    CoordinatorError,
    DestinationAbandoned,
    LayoutMismatch,
    LoadFailed,
    NoSourceAvailable,
    PeerloadError,
    ServiceError,
    TransferTimeout,
    TransportError,
)
from peerload.identity import SourceIdentity, new_worker_id
from peerload.loader.faulting import Faulting, waves
from peerload.loader.phases import PhaseTimer
from peerload.loader.selection import order_sources
from peerload.loader.storage import copy_into
from peerload.loader.survey import explain_sources
from peerload.manifest import Manifest
from peerload.seed.publisher import Publisher
from peerload.seed_client import fetch_manifest
from peerload.settings import Settings
from peerload.tensors import TensorSet, check_layout, checksums, collect
from peerload.transport import make_transport
from peerload.transport.base import EndpointInfo, ReadOp, Transport

log = logging.getLogger(__name__)

Fallback = Callable[[], Mapping[str, torch.Tensor]]
# What makes one source unusable (the loader rolls back and tries the next one).
SOURCE_FAILURES = (TransportError, LayoutMismatch, ChecksumMismatch, ServiceError, NoSourceAvailable)


@dataclass(frozen=True)
class Progress:
    """Bytes moved so far from `source` out of `total`."""

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

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"rank must be >= 0, got {self.rank}")


@dataclass
class LoadResult:
    """What a load did: where the bytes came from, how long each phase took, what was tried."""

    source: str  # the peer's worker id, or "storage"
    bytes: int
    seconds: dict[str, float]
    attempts: list[str]
    worker_id: str
    publisher: Publisher | None = None
    tensor_set: TensorSet | None = field(default=None, repr=False)

    @property
    def gbps(self) -> float:
        """GB/s of the data movement itself (transfer phase, or storage load)."""
        moving = self.seconds.get("transfer" if self.source != "storage" else "storage", 0.0)
        return self.bytes / moving / 1e9 if moving > 0 else 0.0

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


@dataclass(frozen=True)
class PeerPlan:
    """What the handshake with one source established: where to read and what to expect."""

    worker_id: str
    peer: EndpointInfo
    manifest: Manifest
    expected: dict[str, str]  # region -> checksum


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
        self.hint = ""  # what to change so that a near-miss source can serve (after discovery)

    # -- the sequence --------------------------------------------------------------------------

    def run(self) -> LoadResult:
        started = time.perf_counter()
        try:
            coordinator_up = self._health()
            tensor_set = self._prepare()
            source, sums = self._from_peers(tensor_set) if coordinator_up else (None, None)
            if source is None:
                sums = self._from_storage(tensor_set)
                source = "storage"
            publisher = self._publish(tensor_set, sums) if self.options.publish and coordinator_up else None
        except BaseException:
            self._finish(keep_transport=False)
            raise
        self._finish(keep_transport=publisher is not None)
        self.seconds["total"] = time.perf_counter() - started
        return LoadResult(
            source=source,
            bytes=tensor_set.total_bytes,
            seconds=self.seconds,
            attempts=self.attempts,
            worker_id=self.worker_id,
            publisher=publisher,
            tensor_set=tensor_set,
        )

    def _health(self) -> bool:
        with self._phase("health"):
            try:
                self.client.health_check()
                return True
            except CoordinatorError as exc:
                if self.fallback is None:
                    raise
                self.attempts.append(f"coordinator {self.settings.coordinator}: {exc}")
                log.warning("coordinator unreachable, loading from storage: %s", exc)
                return False

    def _prepare(self) -> TensorSet:
        with self._phase("prepare"):
            tensor_set = collect(self.destination)
            self._waves = waves(tensor_set)
            self._faulting = Faulting([[tensor_set.regions[n] for n in wave] for wave in self._waves])
            self.transport = make_transport(self.settings, self.worker_id)
            self.transport.register(tensor_set.regions)
        return tensor_set

    def _from_peers(self, tensor_set: TensorSet) -> tuple[str | None, dict[str, str] | None]:
        candidates = self._discover()
        for ref in candidates[: self.settings.max_source_attempts]:
            try:
                plan = self._handshake(ref, tensor_set)
                return ref.worker_id, self._transfer_and_verify(plan, tensor_set)
            except SOURCE_FAILURES as exc:
                self.attempts.append(f"source {ref.worker_id}: {type(exc).__name__}: {exc}")
                log.warning("source %s failed (%s: %s); rolling back", ref.worker_id, type(exc).__name__, exc)
                self._settle(ref.worker_id)
                self._rollback(tensor_set)
        return None, None

    def _discover(self) -> list[SourceRef]:
        with self._phase("discover"):
            try:
                refs = self.client.list_sources(self.identity, status=SourceStatus.READY, worker_rank=self.rank)
            except CoordinatorError as exc:
                if self.fallback is None:
                    raise
                self.attempts.append(f"discovery failed: {exc}")
                return []
            candidates = order_sources(refs, exclude={self.worker_id})
        if not candidates:
            reason = (
                f"no READY source of {self.identity.model_name} (id {self.identity.source_id()}) at rank {self.rank}"
            )
            self.attempts.append(reason)
            log.info("%s; loading from storage", reason)
            self._explain_no_source()
        return candidates

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

    def _handshake(self, ref: SourceRef, tensor_set: TensorSet) -> PeerPlan:
        """Fetch the source's record and manifest; refuse it before any byte moves if it differs."""
        assert self.transport is not None
        worker_id = ref.worker_id
        with self._phase("handshake"):
            record = self.client.get_metadata(ref.mx_source_id, worker_id)
            if record is None:
                raise NoSourceAvailable(f"source {worker_id} vanished before the transfer")
            if not record.worker_grpc_endpoint:
                raise NoSourceAvailable(f"source {worker_id} serves no manifest endpoint (not a peerload seed?)")
            manifest = fetch_manifest(
                record.worker_grpc_endpoint, worker_id, self.settings.rpc_timeout_s, security=self.security
            )
            check_layout(tensor_set, manifest, source=worker_id)
            peer = EndpointInfo(
                agent_name=record.agent_name,
                nixl_metadata=record.nixl_metadata,
                transfer_engine_session_id=record.transfer_engine_session_id,
            )
            if peer.transport != self.transport.kind:
                raise LayoutMismatch(
                    [f"source uses transport {peer.transport}, we use {self.transport.kind}"], source=worker_id
                )
        expected = {r.name: r.checksum for r in manifest.regions}
        usable = manifest.checksum_algorithm == "xxh3_64" and all(expected.values())
        if self.settings.verify_checksums and not usable:
            raise ChecksumMismatch(["(source published no usable checksums)"], source=worker_id)
        return PeerPlan(worker_id=worker_id, peer=peer, manifest=manifest, expected=expected)

    def _transfer_and_verify(self, plan: PeerPlan, tensor_set: TensorSet) -> dict[str, str]:
        """Read every wave once it is faulted in, hashing wave i while wave i+1 is read."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="peerload-verify") as hashing:
            with self._phase("transfer"):
                hashed = self._transfer(plan, tensor_set, hashing)
            if not self.settings.verify_checksums:
                return plan.expected
            with self._phase("verify"):
                actual = {name: digest for f in hashed for name, digest in f.result().items()}
        bad = sorted(n for n in plan.expected if actual.get(n) != plan.expected[n])
        if bad:
            raise ChecksumMismatch(bad, source=plan.worker_id)
        return actual

    def _transfer(
        self, plan: PeerPlan, tensor_set: TensorSet, hashing: ThreadPoolExecutor
    ) -> list[Future[dict[str, str]]]:
        assert self.transport is not None
        timeout_s = self.settings.transfer_timeout_s
        deadline = time.monotonic() + timeout_s
        progress = self._progress_for(plan.worker_id, plan.manifest.total_bytes)
        hashed = []
        for i, wave in enumerate(self._waves):
            self._faulting.wait(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransferTimeout(f"read not done within {timeout_s:g} s", plan.worker_id)
            self.transport.read(
                plan.peer, _read_ops(tensor_set, plan.manifest, wave), timeout_s=left, progress=progress
            )
            if self.settings.verify_checksums:
                hashed.append(hashing.submit(checksums, {n: tensor_set.regions[n] for n in wave}, 1))
        return hashed

    def _from_storage(self, tensor_set: TensorSet) -> dict[str, str]:
        if self.fallback is None:
            raise LoadFailed(
                f"no peer could provide {self.identity.model_name} at rank {self.rank} and no storage "
                "fallback is configured; the destination was rolled back",
                self.attempts,
                hint=self.hint,
            )
        with self._phase("storage"):
            self._faulting.join()
            try:
                copy_into(tensor_set, self.fallback())
            except BaseException:
                self._rollback(tensor_set)
                raise
        return checksums(tensor_set.regions)

    def _publish(self, tensor_set: TensorSet, sums: dict[str, str] | None) -> Publisher | None:
        with self._phase("publish"):
            try:
                return Publisher(
                    tensor_set,
                    self.identity,
                    rank=self.rank,
                    settings=self.settings,
                    worker_id=self.worker_id,
                    transport=self.transport,
                    region_checksums=sums,
                )
            except PeerloadError as exc:
                # The model is loaded and verified; failing to become a seed must not lose it.
                self.attempts.append(f"publish as a new source failed: {exc}")
                log.warning("loaded, but could not publish as a new source: %s", exc)
                return None

    # -- helpers -------------------------------------------------------------------------------

    def _settle(self, source: str) -> None:
        """Before a rollback: wait until the failed transfer can no longer write into the destination."""
        assert self.transport is not None
        bound = self.settings.settle_timeout_s
        with self._phase("settle"):
            settled = self.transport.settle(bound)
        if not settled:
            raise DestinationAbandoned(
                f"a timed-out transfer from source {source} may still write into the destination after "
                f"{bound:g} s (settle_timeout_s): it was given up, not returned; discard it",
                self.attempts,
            )

    def _rollback(self, tensor_set: TensorSet) -> None:
        self._faulting.join()  # the page-touching fallback must not race these writes
        for flat in tensor_set.regions.values():
            flat.zero_()

    def _progress_for(self, source: str, total: int) -> Callable[[int], None] | None:
        hook = self.options.progress
        if hook is None:
            return None
        done = 0

        def report(delta: int) -> None:
            nonlocal done
            done += delta
            hook(Progress(source=source, done=done, total=total))

        return report

    def _phase(self, name: str) -> PhaseTimer:
        return PhaseTimer(self.seconds, name)

    def _finish(self, keep_transport: bool) -> None:
        """Wait for the prefault thread; close what a publisher did not take over."""
        self._faulting.join()
        if not keep_transport and self.transport is not None:
            self.transport.close()
        self.transport = None
        self.client.close()


def _read_ops(tensor_set: TensorSet, manifest: Manifest, names: list[str]) -> list[ReadOp]:
    """One READ per non-empty region: the source's bytes into ours."""
    remote = manifest.region_map()
    ops = []
    for name in names:
        flat = tensor_set.regions[name]
        if flat.numel() == 0:
            continue
        r = remote[name]
        ops.append(
            ReadOp(
                remote_addr=r.addr,
                local_addr=flat.data_ptr(),
                size=r.size,
                remote_device=r.device_id,
                local_device=flat.device.index or 0,
            )
        )
    return ops


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
) -> LoadResult:
    """Fill `destination` in place from a READY peer, else from `fallback`, then publish it.

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
        progress: called with `Progress` as bytes arrive from a peer.
        worker_id: this worker's id as a source; generated when omitted.

    Raises:
        CoordinatorUnavailable: the coordinator is down and there is no fallback.
        LoadFailed: no peer and no storage produced a verified model (destination rolled back).
        ConfigError / MissingExtraError: bad destination tensors or an unavailable transport.
    """
    options = LoadOptions(rank=rank, fallback=fallback, publish=publish, progress=progress, worker_id=worker_id)
    return TargetLoad(destination, identity, settings or Settings.load(), options).run()
