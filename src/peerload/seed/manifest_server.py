"""A seed's small gRPC server answering `peerload.v1.SeedService/GetManifest`."""

from __future__ import annotations

from concurrent import futures

import grpc

from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload.errors import PeerloadError
from peerload.manifest import Manifest, RegionEntry, TensorEntry

# Manifests of large models (thousands of tensors) exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 << 20


def manifest_to_proto(m: Manifest) -> seed_pb2.Manifest:
    return seed_pb2.Manifest(
        worker_id=m.worker_id,
        mx_source_id=m.source_id,
        worker_rank=m.worker_rank,
        checksum_algorithm=m.checksum_algorithm,
        tensors=[
            seed_pb2.TensorEntry(name=t.name, shape=t.shape, stride=t.stride, dtype=t.dtype,
                                 nbytes=t.nbytes, storage_offset=t.storage_offset, region=t.region)
            for t in m.tensors
        ],
        regions=[
            seed_pb2.RegionEntry(name=r.name, size=r.size, addr=r.addr, device_id=r.device_id,
                                 checksum=r.checksum)
            for r in m.regions
        ],
    )


def manifest_from_proto(p: seed_pb2.Manifest) -> Manifest:
    return Manifest(
        worker_id=p.worker_id,
        source_id=p.mx_source_id,
        worker_rank=p.worker_rank,
        checksum_algorithm=p.checksum_algorithm,
        tensors=[
            TensorEntry(name=t.name, shape=tuple(t.shape), stride=tuple(t.stride), dtype=t.dtype,
                        nbytes=t.nbytes, storage_offset=t.storage_offset, region=t.region)
            for t in p.tensors
        ],
        regions=[RegionEntry(name=r.name, size=r.size, addr=r.addr, device_id=r.device_id,
                             checksum=r.checksum) for r in p.regions],
    )


class _Servicer(seed_pb2_grpc.SeedServiceServicer):
    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._reply = manifest_to_proto(manifest)

    def GetManifest(self, request: seed_pb2.GetManifestRequest, context: grpc.ServicerContext
                    ) -> seed_pb2.Manifest:
        if request.worker_id and request.worker_id != self._manifest.worker_id:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"worker_id {request.worker_id!r} is not served here "
                          f"(this seed is {self._manifest.worker_id!r})")
        return self._reply


class ManifestServer:
    """Serves one manifest on HOST:<free port>; `endpoint` is what goes into WorkerMetadata."""

    def __init__(self, manifest: Manifest, host: str = "127.0.0.1", port: int = 0) -> None:
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", 1 << 20)]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        seed_pb2_grpc.add_SeedServiceServicer_to_server(_Servicer(manifest), self._server)
        bound = self._server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise PeerloadError(f"manifest server could not bind {host}:{port}")
        self.endpoint = f"{host}:{bound}"
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()


def fetch_manifest(endpoint: str, worker_id: str, timeout_s: float) -> Manifest:
    """Ask a seed for its manifest; raises grpc.RpcError on failure (the loader wraps it)."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(endpoint, options=options) as channel:
        stub = seed_pb2_grpc.SeedServiceStub(channel)
        reply = stub.GetManifest(seed_pb2.GetManifestRequest(worker_id=worker_id), timeout=timeout_s)
    return manifest_from_proto(reply)
