"""ArtifactClient: typed calls to an artifact source's `model_express.p2p.WorkerService`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload._grpc import PLAINTEXT, Caller, ChannelClient, ChannelSecurity, open_channel
from peerload.errors import ArtifactRejected, SeedServiceError
from peerload.limits import MANIFEST_MAX_BYTES


class ArtifactClient(ChannelClient):
    """One channel to the artifact source at `endpoint` serving `artifact_id` of `source_id`.

    Every method raises SeedServiceError when the source cannot be reached or refuses
    (RESOURCE_EXHAUSTED: all its chunk leases are taken; UNAVAILABLE: it is closing).
    """

    def __init__(
        self, endpoint: str, source_id: str, artifact_id: str, timeout_s: float, security: ChannelSecurity = PLAINTEXT
    ) -> None:
        self.endpoint = endpoint
        self.source_id = source_id
        self.artifact_id = artifact_id
        self._call = Caller(endpoint, timeout_s=timeout_s, retries=0, error=SeedServiceError)
        self._channel = open_channel(endpoint, MANIFEST_MAX_BYTES, security)
        self._stub = pb_grpc.WorkerServiceStub(self._channel)

    def header(self) -> pb.GetArtifactManifestHeaderResponse:
        request = pb.GetArtifactManifestHeaderRequest(mx_source_id=self.source_id, artifact_id=self.artifact_id)
        return self._call("GetArtifactManifestHeader", self._stub.GetArtifactManifestHeader, request)

    def chunks(self, expected: int) -> list[pb.ArtifactManifestChunk]:
        """The whole chunk table, page by page; refuses pages that do not advance or overshoot."""
        out: list[pb.ArtifactManifestChunk] = []
        start = 0
        while expected:
            request = pb.GetArtifactManifestChunksRequest(
                mx_source_id=self.source_id, artifact_id=self.artifact_id, start_chunk_index=start
            )
            page = self._call("GetArtifactManifestChunks", self._stub.GetArtifactManifestChunks, request)
            out.extend(page.chunks)
            if len(out) > expected:
                raise ArtifactRejected(self.artifact_id[:12], f"serves more than the {expected} chunks announced")
            if not page.next_page_token:
                break
            try:
                following = int(page.next_page_token)
            except ValueError:
                raise ArtifactRejected(self.artifact_id[:12], f"bad page token {page.next_page_token!r}") from None
            if following <= start:
                raise ArtifactRejected(self.artifact_id[:12], "chunk pages do not advance")
            start = following
        return out

    def prepare(self, chunk_index: int) -> pb.PrepareArtifactChunkResponse:
        """A lease on one chunk: where its bytes lie and the agent metadata to read them with."""
        request = pb.PrepareArtifactChunkRequest(
            mx_source_id=self.source_id, artifact_id=self.artifact_id, chunk_index=chunk_index
        )
        return self._call("PrepareArtifactChunk", self._stub.PrepareArtifactChunk, request)

    def prepare_async(self, chunk_index: int) -> Callable[[], pb.PrepareArtifactChunkResponse]:
        """Send `prepare` now; the returned call waits for its answer (errors as `prepare`'s).

        Several leases in flight at once cost one round trip, not one each.
        """
        request = pb.PrepareArtifactChunkRequest(
            mx_source_id=self.source_id, artifact_id=self.artifact_id, chunk_index=chunk_index
        )
        return self._send("PrepareArtifactChunk", self._stub.PrepareArtifactChunk, request)

    def release(self, lease_id: str) -> None:
        self.release_async(lease_id)()

    def release_async(self, lease_id: str) -> Callable[[], pb.ReleaseArtifactChunkResponse]:
        """Send `release` now; the returned call waits for its answer (errors as `release`'s)."""
        request = pb.ReleaseArtifactChunkRequest(
            mx_source_id=self.source_id, artifact_id=self.artifact_id, lease_id=lease_id
        )
        return self._send("ReleaseArtifactChunk", self._stub.ReleaseArtifactChunk, request)

    def _send(self, rpc: str, method: Any, request: Any) -> Callable[[], Any]:
        future = method.future(request, timeout=self._call.timeout_s)
        # The Caller turns the RpcError that `result()` raises into the typed error (no retries here).
        return lambda: self._call(rpc, lambda _request, timeout: future.result(), request)
