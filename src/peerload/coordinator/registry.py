"""The registry's rules, over the wire messages but without gRPC.

- Publish validates, then stores the worker INITIALIZING (replacing one with the same id).
- One worker id, two live processes: the newest publish wins. Each peerload publisher sends a
  random instance id (header `peerload-instance`) with its publishes and heartbeats; a publish
  that replaces a live record of another instance is logged as a WARNING here and told to the
  publisher; the replaced process' next heartbeat is refused (ALREADY_EXISTS), so it learns it is
  no longer listed instead of keeping the other's record alive. A restarted process simply takes
  its record back. Clients that send no instance (the official one) keep the old behaviour.
- UpdateStatus is the heartbeat and the only way to READY.
- A READY worker silent for longer than the heartbeat timeout reads as STALE at once; the
  reaper writes STALE, and deletes non-READY workers silent for longer than the GC timeout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.coordinator.store import Beat, Heartbeat, Store, WorkerEntry
from peerload.errors import InvalidRequest, LimitExceeded, WorkerSuperseded
from peerload.identity import OPTIONAL_HASHED_FIELDS, compute_source_id
from peerload.wire import PEERLOAD_MANIFEST_KEY, REPLACED_PREFIX, SourceStatus, status_to_proto

logger = logging.getLogger(__name__)

# Bounds on free-form strings: generous for real names, small enough to keep records cheap.
MAX_ID_CHARS = 512
MAX_NAME_CHARS = 1024

READY = SourceStatus.READY
STALE = SourceStatus.STALE
INITIALIZING = SourceStatus.INITIALIZING
_SETTABLE_STATUSES = (INITIALIZING, READY, STALE)


@dataclass(frozen=True)
class Publication:
    """What one publish did: the source id, and which live record of another process it replaced ("" if none)."""

    source_id: str
    replaced: str = ""

    @property
    def message(self) -> str:
        """PublishMetadataResponse.message: "published", or the replacement (wire.REPLACED_PREFIX)."""
        return f"{REPLACED_PREFIX}{self.replaced}" if self.replaced else "published"


@dataclass(frozen=True)
class ReapResult:
    """What one reaper pass changed."""

    marked_stale: int
    deleted: int


def source_id_of(identity: pb.SourceIdentity) -> str:
    """mx_source_id of a wire identity.

    The wire message has the dataclass' attribute names, so the one canonical-JSON hash in
    peerload.identity applies to it as is (and accepts sizes of 0, which foreign clients may send).
    """
    return compute_source_id(identity)


class Registry:
    """Publish / list / get / heartbeat over a Store; `clock` returns unix seconds.

    `max_workers_per_source` and `max_tensors_per_worker` bound what one source can make the
    store hold (settings of the same names).
    """

    def __init__(
        self,
        store: Store,
        heartbeat_timeout_s: float,
        gc_timeout_s: float,
        clock: Callable[[], float] = time.time,
        *,
        max_workers_per_source: int = 4096,
        max_tensors_per_worker: int = 262144,
    ) -> None:
        self.store = store
        self.heartbeat_timeout_ms = int(heartbeat_timeout_s * 1000)
        self.gc_timeout_ms = int(gc_timeout_s * 1000)
        self.max_workers_per_source = max_workers_per_source
        self.max_tensors_per_worker = max_tensors_per_worker
        self._clock = clock

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def effective_status(self, entry: WorkerEntry, now_ms: int) -> int:
        """The status a reader sees: READY expires to STALE after the heartbeat timeout."""
        if entry.status == READY and now_ms - entry.updated_at_ms > self.heartbeat_timeout_ms:
            return STALE
        return entry.status

    # -- RPCs ---------------------------------------------------------------------------------
    def publish(self, request: pb.PublishMetadataRequest, instance: str = "") -> str:
        """Store the worker INITIALIZING; returns its mx_source_id."""
        return self.publish_as(request, instance).source_id

    def publish_as(self, request: pb.PublishMetadataRequest, instance: str = "") -> Publication:
        """Store the worker INITIALIZING for the process `instance` ("" = unknown); newest wins."""
        if not request.HasField("identity"):
            raise InvalidRequest("identity", "is required")
        _check_identity(request.identity, "identity")
        worker_id = _check_id(request.worker_id, "worker_id")
        if not request.HasField("worker"):
            raise InvalidRequest("worker", "is required")
        _check_enum(pb.SourceStatus, request.worker.status, "worker.status")
        self._check_descriptors(request.worker)
        sid = source_id_of(request.identity)
        previous = self.store.get(sid, worker_id)
        self._check_room(sid, worker_id, previous)
        replaced = self._replaced(previous, instance)
        stored = pb.PublishMetadataRequest()
        stored.CopyFrom(request)
        stored.worker.status = status_to_proto(INITIALIZING)
        now = self.now_ms()
        stored.worker.updated_at = now
        model_name = request.identity.model_name.lower()
        self.store.put(
            WorkerEntry(
                mx_source_id=sid,
                worker_id=worker_id,
                worker_rank=request.worker.worker_rank,
                model_name=model_name,
                status=INITIALIZING,
                updated_at_ms=now,
                source_load=None,
                payload=stored.SerializeToString(),
                listing=_static_ref(stored, sid, worker_id, model_name).SerializeToString(),
                instance=instance,
            )
        )
        if replaced:
            logger.warning("worker id %r of %s published by a second process: %s", worker_id, sid, replaced)
        logger.info(
            "published worker %s rank %d of %s (%s)",
            worker_id,
            request.worker.worker_rank,
            request.identity.model_name,
            sid,
        )
        return Publication(sid, replaced)

    def _replaced(self, previous: WorkerEntry | None, instance: str) -> str:
        """Whose live record a publish by `instance` replaces ("" for none, the same process, or two unknowns)."""
        if previous is None or previous.instance == instance:
            return ""
        now = self.now_ms()
        status = self.effective_status(previous, now)
        age_ms = now - previous.updated_at_ms
        if status == STALE or age_ms > self.heartbeat_timeout_ms:
            return ""  # nobody beats for it any more: a restart taking its id back
        return (
            f"the live record of worker {previous.worker_id!r} ({SourceStatus(status).name}, last heartbeat "
            f"{age_ms / 1000:.1f}s ago, at {_endpoint_of(previous)}) was another process'; this publish replaced it "
            "(newest wins) and that process is refused at its next heartbeat. If it was this worker before a "
            "restart, nothing is wrong; otherwise give every process its own worker id"
        )

    def _check_descriptors(self, worker: pb.WorkerMetadata) -> None:
        limit = self.max_tensors_per_worker
        for field, tensors in (
            ("worker.tensors", worker.tensors),
            ("worker.tensor_source.tensors", worker.tensor_source.tensors),
        ):
            if len(tensors) > limit:
                raise InvalidRequest(
                    field, f"has {len(tensors)} descriptors; the limit is {limit} (setting max_tensors_per_worker)"
                )

    def _check_room(self, sid: str, worker_id: str, previous: WorkerEntry | None) -> None:
        """A new worker must fit under max_workers_per_source (re-publishing one always does)."""
        if previous is not None:
            return
        count = self.store.count(sid)
        if count >= self.max_workers_per_source:
            raise LimitExceeded(
                "max_workers_per_source",
                f"source {sid} already has {count} workers; wait for stale ones to be reaped or raise the limit",
            )

    def list_sources(self, request: pb.ListSourcesRequest) -> list[pb.SourceInstanceRef]:
        """Matching workers, newest first."""
        return list(self.list_sources_reply(request).instances)

    def list_sources_reply(self, request: pb.ListSourcesRequest) -> pb.ListSourcesResponse:
        """The ListSources reply: matching workers, newest first.

        With an identity, the store reads only that source's workers and the fields listed (the
        static part of each reference was encoded once, at publish); time and load are its own.
        """
        sid = None
        if request.HasField("identity"):
            _check_identity(request.identity, "identity")
            sid = source_id_of(request.identity)
        if request.HasField("status_filter"):
            _check_enum(pb.SourceStatus, request.status_filter, "status_filter")
        # The filters the request sets (None: not set); a worker is listed when it passes all.
        wanted_status = request.status_filter if request.HasField("status_filter") else None
        model = request.model_name_filter.lower() if request.HasField("model_name_filter") else None
        rank = request.worker_rank_filter if request.HasField("worker_rank_filter") else None
        min_updated = request.min_updated_at if request.HasField("min_updated_at") else None
        # Training steps are never published through this protocol version, so any positive
        # minimum excludes every worker rather than being silently ignored.
        if request.HasField("min_training_step") and request.min_training_step > 0:
            return pb.ListSourcesResponse()
        now = self.now_ms()
        matches: list[WorkerEntry] = []
        for entry in self.store.entries() if sid is None else self.store.listed(sid):
            if wanted_status is not None and self.effective_status(entry, now) != wanted_status:
                continue
            if model is not None and entry.model_name != model:
                continue
            if rank is not None and entry.worker_rank != rank:
                continue
            if min_updated is not None and entry.updated_at_ms < min_updated:
                continue
            matches.append(entry)
        matches.sort(key=lambda e: (-e.updated_at_ms, e.mx_source_id, e.worker_id))
        if request.HasField("limit") and request.limit > 0:  # limit 0 means "no limit"
            matches = matches[: request.limit]
        reply = pb.ListSourcesResponse()
        for entry in matches:
            _fill_ref(reply.instances.add(), entry)
        return reply

    def get_metadata(self, request: pb.GetMetadataRequest) -> pb.GetMetadataResponse:
        """found=false for an unknown worker; otherwise its metadata with the effective status."""
        sid = _check_id(request.mx_source_id, "mx_source_id")
        wid = _check_id(request.worker_id, "worker_id")
        entry = self.store.get(sid, wid)
        if entry is None:
            return pb.GetMetadataResponse(found=False, mx_source_id=sid, worker_id=wid)
        published = _published(entry)
        worker = published.worker
        worker.status = status_to_proto(self.effective_status(entry, self.now_ms()))
        worker.updated_at = entry.updated_at_ms
        return pb.GetMetadataResponse(
            found=True, worker=worker, mx_source_id=sid, worker_id=wid, identity=published.identity
        )

    def update_status(self, request: pb.UpdateStatusRequest, instance: str = "") -> pb.UpdateStatusResponse:
        """Heartbeat; success=false (not an error) for an unknown worker, so clients re-publish.

        Raises:
            WorkerSuperseded: the record is another process' now (`instance` differs from the one
                that published it last).
        """
        sid = _check_id(request.mx_source_id, "mx_source_id")
        wid = _check_id(request.worker_id, "worker_id")
        _check_enum(pb.SourceStatus, request.status, "status")
        if int(request.status) not in _SETTABLE_STATUSES:
            raise InvalidRequest("status", "must be INITIALIZING, READY or STALE")
        load = request.source_load if request.HasField("source_load") else None
        if load is not None and (not math.isfinite(load) or load < 0):
            raise InvalidRequest("source_load", f"must be a finite number >= 0, got {load}")
        outcome = self.store.heartbeat(
            Beat(sid, wid, request.worker_rank, request.status, self.now_ms(), load, instance=instance)
        )
        if outcome is Heartbeat.MISSING:
            return pb.UpdateStatusResponse(
                success=False, message=f"unknown worker {wid!r} of source {sid}: publish it first"
            )
        if outcome is Heartbeat.SUPERSEDED:
            entry = self.store.get(sid, wid)
            where = _endpoint_of(entry) if entry else "another address"
            raise WorkerSuperseded(
                f"worker id {wid!r} of source {sid} was published since by another process (at {where}; newest "
                "wins): this process is no longer listed; give every process its own worker id"
            )
        if outcome is Heartbeat.RANK_MISMATCH:
            entry = self.store.get(sid, wid)
            published = entry.worker_rank if entry else "another rank"
            raise InvalidRequest(
                "worker_rank", f"{request.worker_rank} does not match the published rank {published} of worker {wid!r}"
            )
        return pb.UpdateStatusResponse(success=True, message="")

    # -- reaper -------------------------------------------------------------------------------
    def reap(self) -> ReapResult:
        """Write STALE for expired READY workers; delete non-READY ones past the GC timeout.

        Safe with several coordinators reaping one store: each write is conditional on the
        revision this pass read, so a heartbeat, a re-publish or another reaper in between wins.
        """
        now = self.now_ms()
        stale = deleted = 0
        for entry in self.store.reap_candidates(now, self.heartbeat_timeout_ms, self.gc_timeout_ms):
            status = self.effective_status(entry, now)
            age = now - entry.updated_at_ms
            if status != READY and age > self.gc_timeout_ms:
                if self.store.compare_and_delete(entry):
                    deleted += 1
                    logger.info(
                        "deleted worker %s of %s (silent %.1fs)", entry.worker_id, entry.mx_source_id, age / 1000
                    )
            elif status == STALE and entry.status != STALE:
                if self.store.compare_and_set_status(entry, STALE):
                    stale += 1
                    logger.info(
                        "worker %s of %s is STALE (no heartbeat for %.1fs)",
                        entry.worker_id,
                        entry.mx_source_id,
                        age / 1000,
                    )
        return ReapResult(marked_stale=stale, deleted=deleted)


def _endpoint_of(entry: WorkerEntry) -> str:
    """Where a record says its worker serves: its manifest server, else its WorkerService, else its session."""
    worker = _published(entry).worker
    return (
        worker.topology.get(PEERLOAD_MANIFEST_KEY)
        or worker.worker_grpc_endpoint
        or worker.transfer_engine_session_id
        or "an unknown address"
    )


def _published(entry: WorkerEntry) -> pb.PublishMetadataRequest:
    message = pb.PublishMetadataRequest()
    try:
        message.ParseFromString(entry.payload)
    except DecodeError:  # only a foreign writer could do this; show the worker without details
        logger.warning("corrupt record for worker %s of %s", entry.worker_id, entry.mx_source_id)
    return message


def _static_ref(
    published: pb.PublishMetadataRequest, sid: str, worker_id: str, model_name: str
) -> pb.SourceInstanceRef:
    """What ListSources shows of a worker that only a publish changes (not its time or load)."""
    return pb.SourceInstanceRef(
        mx_source_id=sid,
        worker_id=worker_id,
        model_name=published.identity.model_name or model_name,
        worker_rank=published.worker.worker_rank,
        accelerator=published.worker.accelerator,
        topology=dict(published.worker.topology),
    )


def _fill_ref(ref: pb.SourceInstanceRef, entry: WorkerEntry) -> None:
    """`ref` (empty) set to the entry's reference: its encoded listing, else from its payload."""
    try:
        ref.MergeFromString(entry.listing)
    except DecodeError:  # only a foreign writer could do this; fall back to the payload
        logger.warning("corrupt listing for worker %s of %s", entry.worker_id, entry.mx_source_id)
        ref.Clear()
    if not ref.mx_source_id:  # a record written by a peerload that kept no listing
        published = _published(entry)
        published.worker.worker_rank = entry.worker_rank
        ref.CopyFrom(_static_ref(published, entry.mx_source_id, entry.worker_id, entry.model_name))
    ref.updated_at = entry.updated_at_ms
    if entry.source_load is not None:
        ref.source_load = entry.source_load


def _check_id(value: str, field: str) -> str:
    if not value or not value.strip():
        raise InvalidRequest(field, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest(field, f"is {len(value)} characters long; the limit is {MAX_ID_CHARS}")
    return value


def _check_enum(enum: object, value: int, field: str) -> None:
    if value not in enum.values():  # type: ignore[attr-defined]
        names = ", ".join(enum.keys())  # type: ignore[attr-defined]
        raise InvalidRequest(field, f"unknown enum value {value}; expected one of {names}")


def _check_identity(identity: pb.SourceIdentity, prefix: str) -> None:
    if not identity.model_name.strip():
        raise InvalidRequest(f"{prefix}.model_name", "is required")
    for name in ("model_name", "mx_version", "dtype", "quantization", "revision", *OPTIONAL_HASHED_FIELDS):
        if len(getattr(identity, name)) > MAX_NAME_CHARS:
            raise InvalidRequest(f"{prefix}.{name}", f"is longer than {MAX_NAME_CHARS} characters")
    _check_enum(pb.MxSourceType, identity.mx_source_type, f"{prefix}.mx_source_type")
    _check_enum(pb.BackendFramework, identity.backend_framework, f"{prefix}.backend_framework")
