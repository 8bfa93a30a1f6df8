"""SeedClient: typed calls to a seed's own `peerload.v1.SeedService` (its manifest)."""

from __future__ import annotations

from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc import Caller, open_channel
from peerload.errors import SeedServiceError
from peerload.limits import MANIFEST_MAX_BYTES
from peerload.manifest import Manifest
from peerload.wire import manifest_from_proto


def fetch_manifest(endpoint: str, worker_id: str, timeout_s: float) -> Manifest:
    """Ask the seed at `endpoint` for worker `worker_id`'s manifest.

    Raises:
        SeedServiceError: the seed cannot be reached, serves another worker, or is not a peerload
            seed (UNIMPLEMENTED).
    """
    call = Caller(endpoint, timeout_s=timeout_s, retries=0, error=SeedServiceError)
    with open_channel(endpoint, MANIFEST_MAX_BYTES) as channel:
        stub = seed_pb2_grpc.SeedServiceStub(channel)
        reply = call("GetManifest", stub.GetManifest, seed_pb2.GetManifestRequest(worker_id=worker_id))
    return manifest_from_proto(reply)
