"""Seed side: register tensors with a transport, serve the manifests, publish, heartbeat READY.

The heartbeat keeps a source listed through coordinator faults: refused (the coordinator lost
its state) -> publish again at once; unreachable -> keep serving, retry with jittered backoff
capped at one interval; transport broken -> heartbeat STALE and log why. Started while the
coordinator is down (`publish_later`) -> serve unpublished, publish at the first beat that reaches
it. Another process
published this worker id since (newest wins) -> WARNING, stop heartbeating, `superseded` says why.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence

import torch

from peerload import telemetry
from peerload._backoff import Backoff
from peerload._grpc_server import ServerSecurity
from peerload.advertise import advertise_host
from peerload.boxes import Layout
from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.devices import accelerator_of
from peerload.errors import CoordinatorError, CoordinatorUnavailable
from peerload.identity import SourceIdentity, new_worker_id
from peerload.manifest import Manifest, manifest_algorithm
from peerload.parts import plan_parts
from peerload.seed.availability import PartAvailability
from peerload.seed.descriptors import named_descriptors
from peerload.seed.heartbeats import HeartbeatCounter
from peerload.seed.leases import LeaseTable
from peerload.seed.manifest_server import ManifestServer
from peerload.seed.worker_service import WorkerServicer
from peerload.settings import Settings
from peerload.tensors import TensorSet, collect, part_checksums
from peerload.transport import make_transport
from peerload.transport.base import EndpointInfo, Transport
from peerload.wire import LOAD_SUMMARY_KEY, PEERLOAD_MANIFEST_KEY, TensorInfo, TensorManifest

log = logging.getLogger(__name__)

_FIRST_RETRY_FRACTION = 0.125  # first retry after an unreachable beat: this share of the interval
SUPERSEDED_CODE = "ALREADY_EXISTS"  # a heartbeat's code when another process published our worker id


class Publisher:
    """A live source: owns the transport registration, manifest server and heartbeat thread.

    Keep it alive as long as the tensors serve; `close()` marks the worker STALE, waits (bounded)
    for open read leases, and releases all. A `transport` passed in must already have
    `tensor_set.regions` registered (a target that becomes a seed hands over its endpoint); the
    Publisher owns and closes it either way. ModelExpress readers find the same worker: per-name
    descriptors from its WorkerService (P2P metadata mode) or in the record (centralized mode).
    `part_sums` = (part_bytes, one checksum per part) reuses checksums a target just verified.
    `leases` (one table for both services) caps concurrent readers; its count of open leases is
    the load each heartbeat reports. With `availability` the worker is still loading: it is listed
    INITIALIZING (readers that list only READY sources never see it) and serves only the parts
    marked there, until `ready()`; `withdraw()` takes it back without releasing the transport.
    With `publish_later`, a coordinator that cannot be reached now does not fail the Publisher: it
    serves unpublished (`published` is False) and the heartbeat publishes it once the coordinator
    answers (a process started during a coordinator outage still becomes a source).
    """

    def __init__(
        self,
        tensor_set: TensorSet,
        identity: SourceIdentity,
        *,
        rank: int,
        settings: Settings,
        worker_id: str | None = None,
        transport: Transport | None = None,
        region_checksums: Mapping[str, str] | None = None,
        part_sums: tuple[int, Sequence[str]] | None = None,
        availability: PartAvailability | None = None,
        load_summary: str = "",
        publish_later: bool = False,
    ) -> None:
        self.identity = identity
        self.load_summary = load_summary  # JSON of how this worker was loaded, for the status page
        self.rank = rank
        self.settings = settings
        self.worker_id = worker_id or new_worker_id(rank)
        self.tensor_set = tensor_set
        self.source_id = identity.source_id()
        # Which process this is, for the coordinator: a second live process of this worker id replaces
        # this one's record (newest wins), and this one's next heartbeat is refused (`superseded`).
        self.instance = uuid.uuid4().hex
        self.superseded = ""  # why another process holds this worker id now ("" while it is ours)
        self.superseded_event = threading.Event()
        register = transport is None
        self._closed = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._server: ManifestServer | None = None
        self._client = CoordinatorClient.from_settings(settings, instance=self.instance)
        self.leases = LeaseTable(settings.seed_max_readers, settings.lease_timeout_s, transport=settings.transport)
        self._beats = self._heartbeat_client()
        self._unhealthy: str | None = None  # the transport's last complaint, if any
        self._unreachable_since: float | None = None
        # Beats so far (tried, failed, published again): what to wait on instead of the clock.
        self.heartbeats = HeartbeatCounter()
        self.availability = availability
        self._loading = availability is not None
        self._owns_transport = True
        self.published = False  # the coordinator has this worker's record (False: publish_later, still down)
        try:
            self.transport = transport or make_transport(settings, self.worker_id)
            if register:
                self.transport.register(tensor_set.regions)
            self._endpoint = self.transport.endpoint_info()  # also starts serving reads
            part_bytes, sums = part_sums or (settings.chunk_bytes, [])
            if not sums:
                plan = plan_parts(((n, r.numel()) for n, r in tensor_set.regions.items()), part_bytes)
                sums = part_checksums(tensor_set.regions, plan, choice=settings.checksum)
            self.manifest: Manifest = tensor_set.manifest(
                region_checksums,
                worker_id=self.worker_id,
                source_id=self.source_id,
                worker_rank=rank,
                checksum_algorithm=manifest_algorithm(sums),
                part_bytes=part_bytes,
                part_checksums=list(sums),
            )
            self.descriptors = named_descriptors(tensor_set)
            security = ServerSecurity.from_settings(settings)
            self._server = ManifestServer(
                self.manifest,
                self.leases,
                self._worker_service(),
                host=advertise_host(settings),
                security=security,
                availability=availability,
                regions=tensor_set.regions,
            )
            self._first_publish(publish_later)
            telemetry.SEED_TRANSPORT_HEALTHY.labels(self.transport.kind).set(1)
        except BaseException:
            self._release()
            raise
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"peerload-heartbeat-{rank}", daemon=True)
        self._heartbeat.start()

    @property
    def accelerator(self) -> str:
        return accelerator_of(t.device for t in self.tensor_set.regions.values())

    @property
    def metadata_endpoint(self) -> str:
        """HOST:PORT of the NIXL listen thread ModelExpress P2P readers fetch metadata from ("" if none)."""
        port = self.transport.metadata_port
        return f"{advertise_host(self.settings)}:{port}" if port else ""

    def _worker_service(self) -> WorkerServicer:
        manifest = TensorManifest(
            tensors=self.descriptors,
            mx_source_id=self.source_id,
            worker_id=self.worker_id,
            worker_rank=self.rank,
            metadata_endpoint=self.metadata_endpoint,
            agent_name=self._endpoint.agent_name,
            accelerator=self.accelerator,
        )
        unreadable = self._unreadable_reason()
        service = WorkerServicer(manifest, self.leases, unreadable)
        if self._loading and not unreadable:
            # ModelExpress readers read whole tensors without checksums: never from a loading worker.
            service.set_unreadable("this worker is still loading; read from a READY source")
        return service

    def _unreadable_reason(self) -> str:
        """Why ModelExpress readers cannot read this worker at all ("" when they can)."""
        unreadable = ""
        if self.transport.kind != "nixl":
            unreadable = f"this seed serves over {self.transport.kind}; the modelexpress client reads NIXL seeds only"
        elif not self.metadata_endpoint:
            unreadable = "this seed's NIXL agent runs no listen thread, so its metadata cannot be fetched"
        return unreadable

    def _worker_info(self, endpoint: EndpointInfo, server_endpoint: str) -> WorkerInfo:
        """The record: P2P metadata mode (lightweight, WorkerService) or centralized (descriptors)."""
        p2p = self.settings.mx_p2p_metadata
        descriptors: list[TensorInfo] = [] if p2p else self.descriptors
        return WorkerInfo(
            rank=self.rank,
            agent_name=endpoint.agent_name,
            nixl_metadata=endpoint.nixl_metadata,
            transfer_engine_session_id=endpoint.transfer_engine_session_id,
            tensors=descriptors,
            worker_grpc_endpoint=server_endpoint if p2p else "",
            metadata_endpoint=self.metadata_endpoint if p2p else "",
            accelerator=self.accelerator,
            topology={PEERLOAD_MANIFEST_KEY: server_endpoint}
            | ({LOAD_SUMMARY_KEY: self.load_summary} if self.load_summary else {}),
        )

    def _publish(self, client: CoordinatorClient | None = None, status: SourceStatus = SourceStatus.READY) -> None:
        assert self._server is not None
        client = client or self._client
        worker = self._worker_info(self._endpoint, self._server.endpoint)
        reply = client.publish_worker(self.identity, worker, worker_id=self.worker_id)
        published_id = reply.source_id
        if reply.replaced:
            log.warning("worker id %s was in use: %s", self.worker_id, reply.replaced)
        if published_id != self.source_id:
            log.warning("coordinator computed source id %s, we computed %s", published_id, self.source_id)
            self.source_id = published_id
            if self._server.worker_service is not None:
                self._server.worker_service.set_source_id(published_id)
        client.update_status(self.source_id, self.worker_id, self.rank, status, float(self.leases.active()))
        self.published = True
        log.info(
            "published %d tensors (%.1f MiB) as %s/%s rank %d via %s (ModelExpress readers: %s)",
            len(self.manifest.tensors),
            self.manifest.total_bytes / 2**20,
            self.source_id,
            self.worker_id,
            self.rank,
            self.transport.kind,
            "p2p" if self.settings.mx_p2p_metadata else "centralized",
        )

    def _first_publish(self, publish_later: bool) -> None:
        try:
            self._publish(status=SourceStatus.INITIALIZING if self._loading else SourceStatus.READY)
        except CoordinatorUnavailable as exc:
            if not publish_later:
                raise
            self._unreachable_since = time.monotonic()  # one warning for this outage, here
            log.warning(
                "coordinator unreachable: %s serves unpublished and publishes itself as soon as the coordinator "
                "answers (retrying every %.1fs at most): %s",
                self.worker_id,
                self.settings.heartbeat_interval_s,
                exc,
            )

    def _heartbeat_client(self) -> CoordinatorClient:
        """A client for beats: one attempt within one interval, on a connection of its own."""
        interval = self.settings.heartbeat_interval_s
        return CoordinatorClient.from_settings(
            self.settings,
            timeout_s=min(self.settings.rpc_timeout_s, interval),
            retries=0,
            private_connection=True,
            instance=self.instance,
        )

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        backoff = Backoff(interval * _FIRST_RETRY_FRACTION, interval)
        delay = interval
        while not self._closed.wait(delay):
            self.heartbeats.started()
            try:
                status = self._beat()
            except CoordinatorError as exc:
                if exc.code == SUPERSEDED_CODE:
                    self._supersede(exc)
                    return
                self.heartbeats.failed()
                delay = backoff.next()
                self._beat_failed(exc, delay)
            else:
                self.heartbeats.succeeded(status)
                backoff.reset()
                delay = interval

    def _beat(self) -> SourceStatus:
        """One beat (READY, or STALE while the transport is broken); raises CoordinatorError."""
        status = self._status()
        load = float(self.leases.active())  # readers now: targets prefer idle seeds
        if not self.published:  # started while the coordinator was down: publish now
            self._publish(self._beats, status)
        elif not self._beats.update_status(self.source_id, self.worker_id, self.rank, status, load):
            log.warning(
                "coordinator %s no longer knows worker %s (restarted or lost its store): publishing again",
                self._beats.current_address,
                self.worker_id,
            )
            self._publish(self._beats, status)
            self.heartbeats.republished()
        if self._unreachable_since is not None:
            log.info(
                "coordinator %s reachable again after %.1fs; %s is %s",
                self._beats.current_address,
                time.monotonic() - self._unreachable_since,
                self.worker_id,
                status.name,
            )
            self._unreachable_since = None
        return status

    def _supersede(self, exc: CoordinatorError) -> None:
        """Another process published this worker id: it is listed now, not this one (newest wins)."""
        self.superseded = exc.details
        log.warning("%s; stopped heartbeating (this process still serves readers that hold its metadata)", exc.details)
        self.superseded_event.set()

    @property
    def republished(self) -> int:
        """How often the coordinator had forgotten this worker and it published itself again."""
        return self.heartbeats.snapshot().republished

    @property
    def loading(self) -> bool:
        return self._loading

    def ready(self, load_summary: str = "") -> None:
        """Every part is verified: heartbeat READY from now on (announced at once, best effort).

        With `load_summary` the record is published again first, carrying it (the status page's recent loads).
        """
        self._loading = False
        if self._server is not None and self._server.worker_service is not None:
            self._server.worker_service.set_unreadable(self._unreadable_reason())
        try:
            status = self._status()
            if load_summary:
                self.load_summary = load_summary
                self._publish(status=status)
                return
            self._client.update_status(self.source_id, self.worker_id, self.rank, status, float(self.leases.active()))
        except CoordinatorError as exc:
            log.warning("could not announce %s READY now (the next heartbeat will): %s", self.worker_id, exc)

    def withdraw(self) -> None:
        """A load that failed: serve no part, go STALE, stop serving; the caller keeps the transport."""
        if self.availability is not None:
            self.availability.clear()
        self._owns_transport = False
        self.close(wait_readers=False)

    def _status(self) -> SourceStatus:
        """READY (INITIALIZING while loading) if the transport can serve peers, else STALE (logged when it changes)."""
        problem = self.transport.health()
        if problem != self._unhealthy:
            if problem is not None:
                log.warning("worker %s cannot serve peers, heartbeating STALE: %s", self.worker_id, problem)
                if self._unhealthy is None:
                    telemetry.SEED_TRANSPORT_FAILURES.labels(self.transport.kind).inc()
            else:
                log.info("worker %s can serve peers again, heartbeating READY", self.worker_id)
            telemetry.SEED_TRANSPORT_HEALTHY.labels(self.transport.kind).set(0 if problem else 1)
            self._unhealthy = problem
        if problem is not None:
            return SourceStatus.STALE
        return SourceStatus.INITIALIZING if self._loading else SourceStatus.READY

    def _beat_failed(self, exc: CoordinatorError, retry_s: float) -> None:
        """Log once per outage; peers that have our metadata keep reading meanwhile."""
        if not isinstance(exc, CoordinatorUnavailable):
            log.warning("heartbeat of %s refused, retrying in %.1fs: %s", self.worker_id, retry_s, exc)
            return
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning("coordinator unreachable, still serving peers; retrying with backoff: %s", exc)
        else:
            log.debug("coordinator still unreachable, retrying in %.1fs: %s", retry_s, exc)
        # A fresh connection, so gRPC's own reconnect backoff cannot delay our return.
        self._beats.close()
        self._beats = self._heartbeat_client()

    def close(self, wait_readers: bool = True) -> None:
        """Mark the worker STALE, wait for open read leases (bounded), release transport, server, threads."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=self.settings.rpc_timeout_s)
        if self.published and not self.superseded:  # never published, or another process' record now
            try:
                self._client.update_status(self.source_id, self.worker_id, self.rank, SourceStatus.STALE)
            except CoordinatorError as exc:
                if exc.code == SUPERSEDED_CODE:
                    self._supersede(exc)
                else:
                    log.warning("could not mark %s STALE (the reaper will): %s", self.worker_id, exc)
        # Readers hold leases on our memory: refuse new ones, and deregister only when they end.
        wait_s = self.settings.lease_close_wait_s if wait_readers else 0.0
        still_open = self.leases.close(wait_s)
        if still_open:
            log.warning("closing with %d read lease(s) still open after %.1f s", still_open, wait_s)
        self._release()

    def _release(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.stop()
        if getattr(self, "transport", None) is not None and self._owns_transport:
            self.transport.close()
        self._client.close()
        self._beats.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(
    tensors: Mapping[str, torch.Tensor] | torch.nn.Module,
    identity: SourceIdentity,
    *,
    rank: int = 0,
    settings: Settings | None = None,
    worker_id: str | None = None,
    layout: Layout | None = None,
) -> Publisher:
    """Make `tensors` (a model or a name->tensor map) a READY source of `identity` at `rank`.

    Args:
        tensors: the weights in their final, post-processed layout; they must stay alive and
            unchanged while the returned Publisher is open.
        identity: what the weights are (model, revision, framework, parallelism, dtype...).
        rank: worker rank (pp_rank * tp_size + tp_rank).
        settings: configuration; defaults to `Settings.load()` (env vars).
        worker_id: a stable id for this worker; a unique one is generated when omitted.
        layout: where each tensor sits in the full checkpoint tensors (name -> boxes, see
            `peerload.boxes`; e.g. `adapters.hf.tensor_layout`); published so that targets of
            another tensor-parallel layout can reshard from this one. None: only targets of the
            same layout can read it.

    Raises:
        CoordinatorError: the coordinator rejected or could not take the publication.
        ConfigError / MissingExtraError: bad tensors or an unavailable transport.
    """
    settings = settings or Settings.load()
    started = time.perf_counter()
    pub = Publisher(collect(tensors, layout), identity, rank=rank, settings=settings, worker_id=worker_id)
    log.debug("publish took %.3fs", time.perf_counter() - started)
    return pub
