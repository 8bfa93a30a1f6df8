"""Target side: health-check, prepare, discover, transfer, verify, fall back, then publish.

The whole sequence lives in `TargetLoad.run`; every failure of one source rolls the destination
back before the next source (or storage) is tried, so a half-loaded model is never returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import torch

from peerload.client import CoordinatorClient, SourceStatus
from peerload.errors import (
    ChecksumMismatch,
    ConfigError,
    CoordinatorError,
    LayoutMismatch,
    LoadFailed,
    NoSourceAvailable,
    PeerloadError,
    TransferTimeout,
    TransportError,
)
from peerload.identity import SourceIdentity
from peerload.manifest import Manifest, TensorSet, check_layout, checksums, collect
from peerload.seed.manifest_server import fetch_manifest
from peerload.seed.publisher import Publisher, make_transport, new_worker_id
from peerload.settings import Settings
from peerload.target.selection import order_sources
from peerload.transport import prefault
from peerload.transport.base import EndpointInfo, ReadOp, Transport

log = logging.getLogger(__name__)

PHASES = ("health", "prepare", "discover", "handshake", "transfer", "verify", "storage", "publish")
Fallback = Callable[[], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Progress:
    """Bytes moved so far from `source` out of `total`."""

    source: str
    done: int
    total: int


ProgressHook = Callable[[Progress], None]


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
        moving = self.seconds.get("transfer", 0.0) if self.source != "storage" else \
            self.seconds.get("storage", 0.0)
        return self.bytes / moving / 1e9 if moving > 0 else 0.0

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


class TargetLoad:
    """One load of `destination` for `identity`/`rank`; `run()` does it once."""

    def __init__(self, destination: Mapping[str, torch.Tensor] | torch.nn.Module,
                 identity: SourceIdentity, *, rank: int, settings: Settings,
                 fallback: Fallback | None, publish: bool, progress: ProgressHook | None,
                 worker_id: str | None) -> None:
        self.destination = destination
        self.identity = identity
        self.rank = rank
        self.settings = settings
        self.fallback = fallback if settings.storage_fallback else None
        self.publish = publish
        self.progress = progress
        self.worker_id = worker_id or new_worker_id(rank)
        self.seconds: dict[str, float] = {}
        self.attempts: list[str] = []
        self.client = CoordinatorClient(settings.coordinator, timeout_s=settings.rpc_timeout_s,
                                        retries=settings.rpc_retries)
        self.transport: Transport | None = None
        self._waves: list[list[str]] = []
        self._faulting = _Faulting([])

    # -- the sequence --------------------------------------------------------------------------

    def run(self) -> LoadResult:
        started = time.perf_counter()
        try:
            coordinator_up = self._health()
            tensor_set = self._prepare()
            source, sums = None, None
            if coordinator_up:
                source, sums = self._from_peers(tensor_set)
            if source is None:
                sums = self._from_storage(tensor_set)
                source = "storage"
            publisher = self._publish(tensor_set, sums) if self.publish and coordinator_up else None
        except BaseException:
            self._faulting.join()
            self._close_transport()
            self.client.close()
            raise
        self._faulting.join()
        if publisher is None:
            self._close_transport()
        self.client.close()
        self.seconds["total"] = time.perf_counter() - started
        return LoadResult(source=source, bytes=tensor_set.total_bytes, seconds=self.seconds,
                          attempts=self.attempts, worker_id=self.worker_id, publisher=publisher,
                          tensor_set=tensor_set)

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
            # Faulting in the destination pages dominates a cold load far more than the wire
            # does: it runs in the background, wave by wave, overlapping agent creation, the
            # handshake and the transfer of the waves already faulted.
            self._waves = _waves(tensor_set)
            self._faulting = _Faulting([[tensor_set.regions[n] for n in wave] for wave in self._waves])
            self.transport = make_transport(self.settings, self.worker_id)
            self.transport.register(tensor_set.regions)
        return tensor_set

    def _from_peers(self, tensor_set: TensorSet) -> tuple[str | None, dict[str, str] | None]:
        with self._phase("discover"):
            try:
                refs = self.client.list_sources(self.identity, status=SourceStatus.READY, worker_rank=self.rank)
            except CoordinatorError as exc:
                if self.fallback is None:
                    raise
                self.attempts.append(f"discovery failed: {exc}")
                return None, None
            candidates = order_sources(refs, exclude={self.worker_id})
        if not candidates:
            reason = (f"no READY source of {self.identity.model_name} "
                      f"(id {self.identity.source_id()}) at rank {self.rank}")
            self.attempts.append(reason)
            log.info("%s; loading from storage", reason)
            return None, None
        for ref in candidates[: self.settings.max_source_attempts]:
            try:
                sums = self._from_peer(ref.mx_source_id, ref.worker_id, tensor_set)
                return ref.worker_id, sums
            except (TransportError, LayoutMismatch, ChecksumMismatch, CoordinatorError,
                    NoSourceAvailable, grpc.RpcError) as exc:
                message = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                self.attempts.append(f"source {ref.worker_id}: {type(exc).__name__}: {message}")
                log.warning("source %s failed (%s: %s); rolling back", ref.worker_id,
                            type(exc).__name__, message)
                self._rollback(tensor_set)
        return None, None

    def _from_peer(self, source_id: str, worker_id: str, tensor_set: TensorSet) -> dict[str, str]:
        assert self.transport is not None
        with self._phase("handshake"):
            record = self.client.get_metadata(source_id, worker_id)
            if record is None:
                raise NoSourceAvailable(f"source {worker_id} vanished before the transfer")
            if not record.worker_grpc_endpoint:
                raise NoSourceAvailable(f"source {worker_id} serves no manifest endpoint "
                                        "(not a peerload seed?)")
            manifest = fetch_manifest(record.worker_grpc_endpoint, worker_id, self.settings.rpc_timeout_s)
            check_layout(tensor_set, manifest, source=worker_id)
            peer = EndpointInfo(agent_name=record.agent_name, nixl_metadata=record.nixl_metadata,
                                transfer_engine_session_id=record.transfer_engine_session_id)
            if peer.transport != self.transport.kind:
                raise LayoutMismatch([f"source uses transport {peer.transport}, we use "
                                      f"{self.transport.kind}"], source=worker_id)
        expected = {r.name: r.checksum for r in manifest.regions}
        verify = self.settings.verify_checksums
        if verify and (manifest.checksum_algorithm != "xxh3_64" or any(not v for v in expected.values())):
            raise ChecksumMismatch(["(source published no usable checksums)"], source=worker_id)
        # Wave i is read once faulted in, and hashed while wave i+1 is read.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="peerload-verify") as hashing:
            hashed = []
            with self._phase("transfer"):
                deadline = time.monotonic() + self.settings.transfer_timeout_s
                progress = self._progress_for(worker_id, manifest.total_bytes)
                for i, wave in enumerate(self._waves):
                    self._faulting.wait(i)
                    ops = self._read_ops(tensor_set, manifest, wave)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TransferTimeout(f"read not done within {self.settings.transfer_timeout_s:g} s",
                                              worker_id)
                    self.transport.read(peer, ops, timeout_s=left, progress=progress)
                    if verify:
                        regions = {n: tensor_set.regions[n] for n in wave}
                        hashed.append(hashing.submit(checksums, regions, 1))
            with self._phase("verify"):
                if not verify:
                    return expected
                actual = {name: digest for f in hashed for name, digest in f.result().items()}
        bad = sorted(n for n in expected if actual.get(n) != expected[n])
        if bad:
            raise ChecksumMismatch(bad, source=worker_id)
        return actual

    def _read_ops(self, tensor_set: TensorSet, manifest: Manifest, names: list[str]) -> list[ReadOp]:
        remote = manifest.region_map()
        ops = []
        for name in names:
            flat = tensor_set.regions[name]
            if flat.numel() == 0:
                continue
            r = remote[name]
            ops.append(ReadOp(remote_addr=r.addr, local_addr=flat.data_ptr(), size=r.size,
                              remote_device=r.device_id, local_device=flat.device.index or 0))
        return ops

    def _from_storage(self, tensor_set: TensorSet) -> dict[str, str]:
        if self.fallback is None:
            raise LoadFailed(
                f"no peer could provide {self.identity.model_name} at rank {self.rank} and no storage "
                "fallback is configured; the destination was rolled back", self.attempts)
        with self._phase("storage"):
            self._faulting.join()
            try:
                loaded = self.fallback()
                copy_into(tensor_set, loaded)
            except BaseException:
                self._rollback(tensor_set)
                raise
        return checksums(tensor_set.regions)

    def _publish(self, tensor_set: TensorSet, sums: dict[str, str] | None) -> Publisher | None:
        with self._phase("publish"):
            try:
                return Publisher(tensor_set, self.identity, rank=self.rank, settings=self.settings,
                                 worker_id=self.worker_id, transport=self.transport,
                                 region_checksums=sums)
            except PeerloadError as exc:
                # The model is loaded and verified; failing to become a seed must not lose it.
                self.attempts.append(f"publish as a new source failed: {exc}")
                log.warning("loaded, but could not publish as a new source: %s", exc)
                return None

    # -- helpers -------------------------------------------------------------------------------

    def _rollback(self, tensor_set: TensorSet) -> None:
        self._faulting.join()  # the page-touching fallback must not race these writes
        for flat in tensor_set.regions.values():
            flat.zero_()

    def _progress_for(self, source: str, total: int) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        hook, done = self.progress, [0]

        def report(delta: int) -> None:
            done[0] += delta
            hook(Progress(source=source, done=done[0], total=total))
        return report

    def _phase(self, name: str) -> _PhaseTimer:
        return _PhaseTimer(self.seconds, name)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


# Regions are faulted in, read and hashed in waves of about this size so the three overlap;
# every wave is one read (one seed round trip), so waves stay large.
_WAVE_BYTES = 512 << 20


def _waves(tensor_set: TensorSet, wave_bytes: int = _WAVE_BYTES) -> list[list[str]]:
    """Region names in read order, cut into consecutive groups of about `wave_bytes`."""
    waves: list[list[str]] = [[]]
    size = 0
    for name, flat in tensor_set.regions.items():
        if size >= wave_bytes:
            waves.append([])
            size = 0
        waves[-1].append(name)
        size += flat.numel()
    return waves


class _Faulting:
    """Faults the waves in, in order, on a background thread; `wait(i)` before writing wave i."""

    def __init__(self, waves: list[list[torch.Tensor]]) -> None:
        self._done = [threading.Event() for _ in waves]
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(waves,), name="peerload-prefault",
                                        daemon=True)
        self._thread.start()

    def _run(self, waves: list[list[torch.Tensor]]) -> None:
        try:
            for i, wave in enumerate(waves):
                prefault(wave)
                self._done[i].set()
        except BaseException as exc:  # re-raised in wait(); a failed prefault is a bug, not a fallback
            self._error = exc
        finally:
            for done in self._done:
                done.set()

    def wait(self, i: int) -> None:
        self._done[i].wait()
        if self._error is not None:
            raise self._error

    def join(self) -> None:
        self._thread.join()


class _PhaseTimer:
    def __init__(self, seconds: dict[str, float], name: str) -> None:
        self.seconds, self.name = seconds, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - self.started


def copy_into(tensor_set: TensorSet, loaded: Mapping[str, torch.Tensor]) -> None:
    """Copy storage-loaded tensors into the destination, checking names, shapes and dtypes."""
    problems = []
    missing = sorted(set(tensor_set.tensors) - set(loaded))
    if missing:
        problems.append(f"storage lacks {len(missing)} tensor(s): {', '.join(missing[:5])}")
    for name, dst in tensor_set.tensors.items():
        src = loaded.get(name)
        if src is None:
            continue
        if tuple(src.shape) != tuple(dst.shape) or src.dtype != dst.dtype:
            problems.append(f"{name}: storage has {tuple(src.shape)} {src.dtype}, "
                            f"model expects {tuple(dst.shape)} {dst.dtype}")
    if problems:
        raise LayoutMismatch(problems, source="storage")
    with torch.no_grad():
        for name, dst in tensor_set.tensors.items():
            dst.copy_(loaded[name])


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
    settings = settings or Settings.load()
    if rank < 0:
        raise ConfigError(f"rank must be >= 0, got {rank}")
    load = TargetLoad(destination, identity, rank=rank, settings=settings, fallback=fallback,
                      publish=publish, progress=progress, worker_id=worker_id)
    return load.run()
