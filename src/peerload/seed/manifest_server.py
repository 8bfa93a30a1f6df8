"""A seed's small gRPC server answering `peerload.v1.SeedService/GetManifest`."""

from __future__ import annotations

import grpc

from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc_server import OPEN, ServerSecurity, bind, new_server
from peerload.manifest import Manifest
from peerload.wire import MAX_MANIFEST_BYTES, manifest_to_proto


class _Servicer(seed_pb2_grpc.SeedServiceServicer):
    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._reply = manifest_to_proto(manifest)

    def GetManifest(self, request: seed_pb2.GetManifestRequest, context: grpc.ServicerContext) -> seed_pb2.Manifest:
        if request.worker_id and request.worker_id != self._manifest.worker_id:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"worker_id {request.worker_id!r} is not served here (this seed is {self._manifest.worker_id!r})",
            )
        return self._reply


class ManifestServer:
    """Serves one manifest on HOST:<free port>; `endpoint` is what goes into WorkerMetadata.

    Raises:
        ConfigError: HOST cannot be bound (see the advertise_host setting).
    """

    def __init__(
        self, manifest: Manifest, host: str = "127.0.0.1", port: int = 0, security: ServerSecurity = OPEN
    ) -> None:
        options = [("grpc.max_send_message_length", MAX_MANIFEST_BYTES), ("grpc.max_receive_message_length", 1 << 20)]
        self._server = new_server(security, max_workers=2, options=options, thread_name_prefix="peerload-seed-rpc")
        seed_pb2_grpc.add_SeedServiceServicer_to_server(_Servicer(manifest), self._server)
        bound = bind(self._server, host, port, security, what="seed", fix="check the advertise_host setting")
        self.endpoint = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()
