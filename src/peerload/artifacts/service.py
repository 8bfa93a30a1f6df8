"""An artifact source's `model_express.p2p.WorkerService`: the manifest in pages and chunk leases.

What an official ModelExpress reader calls: `GetArtifactManifestHeader` (files with checksums),
`GetArtifactManifestChunks` (the chunk table in pages), then per chunk `PrepareArtifactChunk`
(a lease, where the chunk's bytes lie in registered memory, and the NIXL agent's metadata to
read them with) and `ReleaseArtifactChunk`. The bytes stay registered for the source's lifetime;
a lease says a reader is on them, so closing waits for open ones (bounded) before deregistering.
Methods raise typed errors; `peerload._grpc_edge` answers them with status codes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

import grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.errors import InvalidRequest, NotFound, PreconditionFailed
from peerload.seed.leases import LeaseTable

log = logging.getLogger(__name__)

CHUNK_PAGE = 1024  # chunk records per GetArtifactManifestChunks reply (as the official source pages)


class ArtifactServicer(pb_grpc.WorkerServiceServicer):
    """Serves one artifact of one worker.

    Args:
        source_id / worker_rank / agent_name / metadata_endpoint: the worker, as published.
        manifest: the artifact's manifest (`artifact_id` is its hash).
        chunk_addresses: per chunk, the address of its first byte in registered memory.
        agent_metadata: the NIXL agent's metadata blob (returned with every chunk lease).
        leases: the chunk leases (cap, timeout, closing).
    """

    def __init__(
        self,
        manifest: pb.ArtifactManifest,
        artifact_id: str,
        chunk_addresses: Sequence[int],
        agent_metadata: Callable[[], bytes],
        leases: LeaseTable,
        *,
        worker_rank: int = 0,
        agent_name: str = "",
        metadata_endpoint: str = "",
    ) -> None:
        self._manifest = manifest
        self._artifact_id = artifact_id
        self._addresses = list(chunk_addresses)
        self._agent_metadata = agent_metadata
        self._leases = leases
        self._lease_chunks: dict[str, int] = {}
        self._lock = threading.Lock()
        self.source_id = ""
        self._worker_rank = worker_rank
        self._agent_name = agent_name
        self._metadata_endpoint = metadata_endpoint

    def GetArtifactManifestHeader(
        self, request: pb.GetArtifactManifestHeaderRequest, context: grpc.ServicerContext
    ) -> pb.GetArtifactManifestHeaderResponse:
        self._check(request.mx_source_id, request.artifact_id)
        m = self._manifest
        return pb.GetArtifactManifestHeaderResponse(
            mx_source_id=self.source_id,
            artifact_id=self._artifact_id,
            manifest_version=m.manifest_version,
            mx_source_type=m.mx_source_type,
            total_size=sum(f.size for f in m.files),
            file_count=len(m.files),
            chunk_count=len(m.chunks),
            chunk_size=m.chunk_size,
            metadata_endpoint=self._metadata_endpoint,
            agent_name=self._agent_name,
            worker_rank=self._worker_rank,
            files=m.files,
        )

    def GetArtifactManifestChunks(
        self, request: pb.GetArtifactManifestChunksRequest, context: grpc.ServicerContext
    ) -> pb.GetArtifactManifestChunksResponse:
        self._check(request.mx_source_id, request.artifact_id)
        count = len(self._manifest.chunks)
        start = request.start_chunk_index
        if start > count:
            raise InvalidRequest("start_chunk_index", f"{start} exceeds chunk_count {count}")
        end = min(start + min(request.max_chunks or CHUNK_PAGE, CHUNK_PAGE), count)
        return pb.GetArtifactManifestChunksResponse(
            mx_source_id=self.source_id,
            artifact_id=self._artifact_id,
            start_chunk_index=start,
            chunks=self._manifest.chunks[start:end],
            next_page_token=str(end) if end < count else "",
        )

    def PrepareArtifactChunk(
        self, request: pb.PrepareArtifactChunkRequest, context: grpc.ServicerContext
    ) -> pb.PrepareArtifactChunkResponse:
        self._check(request.mx_source_id, request.artifact_id)
        index = request.chunk_index
        if index >= len(self._manifest.chunks):
            raise InvalidRequest("chunk_index", f"{index} exceeds chunk_count {len(self._manifest.chunks)}")
        lease = self._leases.acquire(context.peer())  # LeaseRefused: RESOURCE_EXHAUSTED or UNAVAILABLE
        with self._lock:
            self._lease_chunks[lease.lease_id] = index
        chunk = self._manifest.chunks[index]
        return pb.PrepareArtifactChunkResponse(
            mx_source_id=self.source_id,
            artifact_id=self._artifact_id,
            lease_id=lease.lease_id,
            chunk=chunk,
            source=pb.ArtifactChunkTransferDescriptor(addr=self._addresses[index], length=chunk.length, device_id=0),
            source_metadata=self._agent_metadata(),
        )

    def ReleaseArtifactChunk(
        self, request: pb.ReleaseArtifactChunkRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseArtifactChunkResponse:
        self._check(request.mx_source_id, request.artifact_id)
        with self._lock:
            index = self._lease_chunks.pop(request.lease_id, None)
        if not self._leases.release(request.lease_id) or index is None:
            raise NotFound(f"artifact chunk lease not found or expired: {request.lease_id!r}")
        return pb.ReleaseArtifactChunkResponse(
            mx_source_id=self.source_id, artifact_id=self._artifact_id, chunk=self._manifest.chunks[index]
        )

    def _check(self, source_id: str, artifact_id: str) -> None:
        """Refuse requests for another source or artifact (empty means "the one served here")."""
        if source_id and source_id != self.source_id:
            raise PreconditionFailed(f"mx_source_id mismatch: this worker serves {self.source_id}, got {source_id}")
        if artifact_id and artifact_id != self._artifact_id:
            raise NotFound(f"artifact {artifact_id} is not served here (this worker serves {self._artifact_id})")

    # -- tensors: an artifact worker has none -------------------------------------------------

    def _no_tensors(self) -> NoReturn:
        raise PreconditionFailed(
            "this worker is an artifact source (a cache directory), not a tensor source; "
            "list sources of the weights' identity instead"
        )

    def GetTensorManifest(self, request: pb.GetTensorManifestRequest, context: grpc.ServicerContext) -> NoReturn:
        self._no_tensors()

    def PrepareTensorRead(self, request: pb.PrepareTensorReadRequest, context: grpc.ServicerContext) -> NoReturn:
        self._no_tensors()

    def ReleaseTensorRead(self, request: pb.ReleaseTensorReadRequest, context: grpc.ServicerContext) -> NoReturn:
        self._no_tensors()
