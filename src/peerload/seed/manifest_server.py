"""The seed's gRPC server: `peerload.v1.SeedService` (the manifest with checksums, read leases)
and, on the same server and port, `model_express.p2p.WorkerService` (what official ModelExpress
readers call). Both grant leases from the Publisher's one LeaseTable."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc
import torch

from peerload._address import host_port
from peerload._gen.model_express import p2p_pb2
from peerload._gen.peerload.v1 import seed_pb2
from peerload._grpc_edge import service_handler
from peerload._grpc_server import OPEN, ServerSecurity, bind, new_server
from peerload.errors import InvalidRequest, NotFound, PreconditionFailed, Unsupported
from peerload.limits import MANIFEST_MAX_BYTES, SEED_MAX_REQUEST_BYTES
from peerload.manifest import Manifest
from peerload.seed.availability import PartAvailability
from peerload.seed.leases import LeaseTable
from peerload.seed.range_digests import RangeDigests
from peerload.seed.worker_service import WorkerServicer
from peerload.wire import manifest_to_proto

log = logging.getLogger(__name__)
_SEED_SERVICE = seed_pb2.DESCRIPTOR.services_by_name["SeedService"]
_WORKER_SERVICE = p2p_pb2.DESCRIPTOR.services_by_name["WorkerService"]


class _Servicer:
    """SeedService: the manifest and read leases of one worker."""

    def __init__(
        self,
        manifest: Manifest,
        leases: LeaseTable,
        availability: PartAvailability | None,
        digests: RangeDigests | None = None,
    ) -> None:
        self._manifest = manifest
        self._digests = digests
        self._reply = manifest_to_proto(manifest)
        self._leases = leases
        self._availability = availability
        self._part_count = len(manifest.parts())

    def _check_worker(self, worker_id: str) -> None:
        if worker_id and worker_id != self._manifest.worker_id:
            raise NotFound(f"worker_id {worker_id!r} is not served here (this seed is {self._manifest.worker_id!r})")

    def GetManifest(self, request: seed_pb2.GetManifestRequest, context: grpc.ServicerContext) -> seed_pb2.Manifest:
        self._check_worker(request.worker_id)
        return self._reply

    def AcquireLease(
        self, request: seed_pb2.AcquireLeaseRequest, context: grpc.ServicerContext
    ) -> seed_pb2.AcquireLeaseResponse:
        self._check_worker(request.worker_id)
        lease = self._leases.acquire(request.reader)  # LeaseRefused: RESOURCE_EXHAUSTED or UNAVAILABLE
        log.debug("lease %s granted to %s", lease.lease_id, request.reader)
        return seed_pb2.AcquireLeaseResponse(lease_id=lease.lease_id, ttl_ms=int(self._leases.timeout_s * 1000))

    def GetAvailability(
        self, request: seed_pb2.GetAvailabilityRequest, context: grpc.ServicerContext
    ) -> seed_pb2.Availability:
        self._check_worker(request.worker_id)
        if self._availability is None:  # a complete seed
            return seed_pb2.Availability(part_count=self._part_count, complete=True)
        snap = self._availability.snapshot()
        return seed_pb2.Availability(
            version=snap.version,
            bitmap=snap.bitmap,
            part_count=snap.part_count,
            complete=snap.complete,
            pending=snap.pending,
        )

    def DigestRanges(
        self, request: seed_pb2.DigestRangesRequest, context: grpc.ServicerContext
    ) -> seed_pb2.DigestRangesResponse:
        self._check_worker(request.worker_id)
        if self._digests is None:
            raise Unsupported("this worker serves no range digests")
        if self._availability is not None and not self._availability.snapshot().complete:
            raise PreconditionFailed("this worker is still loading: resharding readers read complete sources only")
        ranges: list[tuple[str, int, int]] = []
        for i, group in enumerate(request.ranges):
            if len(group.offsets) != len(group.sizes):
                raise InvalidRequest(f"ranges[{i}]", f"{len(group.offsets)} offsets for {len(group.sizes)} sizes")
            ranges.extend((group.region, o, n) for o, n in zip(group.offsets, group.sizes, strict=True))
        digest, checked = self._digests.digest(ranges, request.check_parts, request.lease_id)
        return seed_pb2.DigestRangesResponse(digest=digest, parts_checked=checked)

    def ReleaseLease(
        self, request: seed_pb2.ReleaseLeaseRequest, context: grpc.ServicerContext
    ) -> seed_pb2.ReleaseLeaseResponse:
        released = self._leases.release(request.lease_id, request.bytes_read, request.parts_read)
        return seed_pb2.ReleaseLeaseResponse(released=released)


class ManifestServer:
    """Serves one worker's manifests on HOST:<free port>; `endpoint` is what goes into WorkerMetadata.

    One server, so the same TLS and bearer-token check (`security`) cover both services.

    Args:
        manifest: the peerload manifest (SeedService).
        leases: the worker's read leases (SeedService.AcquireLease/ReleaseLease).
        worker_service: the ModelExpress WorkerService of the same worker, or None.
        availability: the verified parts of a worker still loading; None: a complete seed.
        regions: the worker's region bytes, for the digests resharding readers ask (None: none served).

    Raises:
        ConfigError: HOST cannot be bound (see the advertise_host setting).
    """

    def __init__(
        self,
        manifest: Manifest,
        leases: LeaseTable,
        worker_service: WorkerServicer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        security: ServerSecurity = OPEN,
        availability: PartAvailability | None = None,
        regions: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        # Larger requests are refused with RESOURCE_EXHAUSTED by gRPC itself, before any parsing.
        options = [
            ("grpc.max_send_message_length", MANIFEST_MAX_BYTES),
            ("grpc.max_receive_message_length", SEED_MAX_REQUEST_BYTES),
        ]
        self.worker_service = worker_service
        self._server = new_server(security, max_workers=4, options=options, thread_name_prefix="peerload-seed-rpc")
        digests = RangeDigests(regions, manifest) if regions is not None else None
        servicer = _Servicer(manifest, leases, availability, digests)
        handlers = [service_handler(_SEED_SERVICE, seed_pb2, servicer, server="the seed")]
        if worker_service is not None:
            handlers.append(service_handler(_WORKER_SERVICE, p2p_pb2, worker_service, server="the seed"))
        self._server.add_generic_rpc_handlers(handlers)
        bound = bind(self._server, host, port, security, what="seed", fix="check the advertise_host setting")
        self.endpoint = host_port(host, bound)
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()
