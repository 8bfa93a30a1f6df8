"""SeedClient: typed calls to a seed's own `peerload.v1.SeedService` (manifest, read leases)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc import PLAINTEXT, Caller, ChannelClient, ChannelSecurity, open_channel
from peerload.errors import InvalidManifest, LeaseRefused, SeedServiceError
from peerload.limits import MANIFEST_MAX_BYTES
from peerload.manifest import Manifest, manifest_problem
from peerload.parts import decode_held
from peerload.wire import manifest_from_proto


@dataclass(frozen=True)
class Holdings:
    """What a source holds: `parts` verified (None: every part), `pending` being read by it now."""

    version: int
    parts: set[int] | None
    pending: set[int] = field(default_factory=set)


# A seed at its reader cap answers RESOURCE_EXHAUSTED; one shutting down answers UNAVAILABLE.
_REFUSED = {"RESOURCE_EXHAUSTED": False, "UNAVAILABLE": True}


class SeedClient(ChannelClient):
    """One channel (TLS / token per `security`) to the seed at `endpoint` serving `worker_id`; `close()` it."""

    def __init__(self, endpoint: str, worker_id: str, timeout_s: float, security: ChannelSecurity = PLAINTEXT) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self._call = Caller(endpoint, timeout_s=timeout_s, retries=0, error=SeedServiceError)
        self._channel = open_channel(endpoint, MANIFEST_MAX_BYTES, security)
        self._stub = seed_pb2_grpc.SeedServiceStub(self._channel)

    def manifest(self) -> Manifest:
        """The seed's manifest.

        Raises:
            SeedServiceError: the seed cannot be reached, serves another worker, or is not a
                peerload seed (UNIMPLEMENTED).
            InvalidManifest: the manifest is malformed (names the first bad field).
        """
        request = seed_pb2.GetManifestRequest(worker_id=self.worker_id)
        manifest = manifest_from_proto(self._call("GetManifest", self._stub.GetManifest, request))
        problem = manifest_problem(manifest)
        if problem is None and manifest.worker_id != self.worker_id:
            problem = ("worker_id", f"is {manifest.worker_id!r}; asked for {self.worker_id!r}")
        if problem is not None:
            raise InvalidManifest(*problem, address=self.endpoint)
        return manifest

    def acquire_lease(self, reader: str) -> str | None:
        """A read lease id, or None when the seed grants no leases (an older seed: read anyway).

        Raises:
            LeaseRefused: the seed is at its reader cap, or shutting down.
            SeedServiceError: any other failure.
        """
        request = seed_pb2.AcquireLeaseRequest(worker_id=self.worker_id, reader=reader)
        try:
            return self._call("AcquireLease", self._stub.AcquireLease, request).lease_id
        except SeedServiceError as exc:
            if exc.code == "UNIMPLEMENTED":
                return None
            if exc.code in _REFUSED:
                raise LeaseRefused(f"seed {self.worker_id}: {exc.details}", closing=_REFUSED[exc.code]) from None
            raise

    def availability(self, part_count: int) -> Holdings:
        """The verified parts of a worker still loading (`parts` None when it holds them all).

        An older seed (UNIMPLEMENTED) is complete: only loaded workers served then.

        Raises:
            SeedServiceError: the seed cannot be reached, or its plan has another part count.
        """
        request = seed_pb2.GetAvailabilityRequest(worker_id=self.worker_id)
        try:
            reply = self._call("GetAvailability", self._stub.GetAvailability, request)
        except SeedServiceError as exc:
            if exc.code == "UNIMPLEMENTED":
                return Holdings(0, None)
            raise
        if reply.complete:
            return Holdings(reply.version, None)
        if reply.part_count != part_count:
            problem = f"reports {reply.part_count} parts, the plan has {part_count}"
            raise SeedServiceError("GetAvailability", "FAILED_PRECONDITION", problem, self.endpoint)
        return Holdings(reply.version, decode_held(reply.bitmap, part_count), decode_held(reply.pending, part_count))

    def digest_ranges(
        self, ranges: Sequence[tuple[str, int, int]], check_parts: bool = True, lease: str | None = None
    ) -> str:
        """The seed's xxh3_64 hex of these (region, offset, size) ranges' bytes, in order.

        Raises:
            SeedServiceError: the seed cannot be reached, serves no digests (UNIMPLEMENTED: an
                older seed), or a part the ranges touch no longer matches its checksum
                (FAILED_PRECONDITION).
        """
        request = seed_pb2.DigestRangesRequest(worker_id=self.worker_id, check_parts=check_parts, lease_id=lease or "")
        group: seed_pb2.RegionRanges | None = None
        for region, offset, size in ranges:
            if group is None or group.region != region:
                group = request.ranges.add(region=region)
            group.offsets.append(offset)
            group.sizes.append(size)
        return self._call("DigestRanges", self._stub.DigestRanges, request).digest

    def release_lease(self, lease_id: str, bytes_read: int = 0, parts_read: int = 0) -> bool:
        """End a lease, telling the seed what was read under it; False if the seed no longer knew it.

        Raises:
            SeedServiceError: the seed cannot be reached.
        """
        request = seed_pb2.ReleaseLeaseRequest(lease_id=lease_id, bytes_read=bytes_read, parts_read=parts_read)
        return self._call("ReleaseLease", self._stub.ReleaseLease, request).released


def fetch_manifest(endpoint: str, worker_id: str, timeout_s: float, security: ChannelSecurity = PLAINTEXT) -> Manifest:
    """Ask the seed at `endpoint` for worker `worker_id`'s manifest (over TLS / with a token per `security`).

    Raises:
        SeedServiceError, InvalidManifest: see `SeedClient.manifest`.
    """
    with SeedClient(endpoint, worker_id, timeout_s, security) as seed:
        return seed.manifest()
