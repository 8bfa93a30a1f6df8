"""SeedClient: typed calls to a seed's own `peerload.v1.SeedService` (its manifest)."""

from __future__ import annotations

from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc import PLAINTEXT, Caller, ChannelSecurity, open_channel
from peerload.errors import InvalidManifest, SeedServiceError
from peerload.limits import MANIFEST_MAX_BYTES
from peerload.manifest import Manifest, manifest_problem
from peerload.wire import manifest_from_proto


def fetch_manifest(endpoint: str, worker_id: str, timeout_s: float, security: ChannelSecurity = PLAINTEXT) -> Manifest:
    """Ask the seed at `endpoint` for worker `worker_id`'s manifest (over TLS / with a token per `security`).

    Raises:
        SeedServiceError: the seed cannot be reached, serves another worker, or is not a peerload
            seed (UNIMPLEMENTED).
        InvalidManifest: the manifest is malformed (names the first bad field).
    """
    call = Caller(endpoint, timeout_s=timeout_s, retries=0, error=SeedServiceError)
    with open_channel(endpoint, MANIFEST_MAX_BYTES, security) as channel:
        stub = seed_pb2_grpc.SeedServiceStub(channel)
        reply = call("GetManifest", stub.GetManifest, seed_pb2.GetManifestRequest(worker_id=worker_id))
    manifest = manifest_from_proto(reply)
    problem = manifest_problem(manifest)
    if problem is None and manifest.worker_id != worker_id:
        problem = ("worker_id", f"is {manifest.worker_id!r}; asked for {worker_id!r}")
    if problem is not None:
        raise InvalidManifest(*problem, address=endpoint)
    return manifest
