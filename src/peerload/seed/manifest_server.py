"""The seed's gRPC server: `peerload.v1.SeedService` (the manifest with checksums) and, on the
same server and port, `model_express.p2p.WorkerService` (what official ModelExpress readers call)."""

from __future__ import annotations

import grpc

from peerload._gen.model_express import p2p_pb2_grpc
from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc_server import OPEN, ServerSecurity, bind, new_server
from peerload.manifest import Manifest
from peerload.seed.worker_service import WorkerServicer
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
    """Serves one worker's manifests on HOST:<free port>; `endpoint` is what goes into WorkerMetadata.

    One server, so the same TLS and bearer-token check (`security`) cover both services.

    Args:
        manifest: the peerload manifest (SeedService).
        worker_service: the ModelExpress WorkerService of the same worker, or None.

    Raises:
        ConfigError: HOST cannot be bound (see the advertise_host setting).
    """

    def __init__(
        self,
        manifest: Manifest,
        worker_service: WorkerServicer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        security: ServerSecurity = OPEN,
    ) -> None:
        options = [("grpc.max_send_message_length", MAX_MANIFEST_BYTES), ("grpc.max_receive_message_length", 1 << 20)]
        self.worker_service = worker_service
        self._server = new_server(security, max_workers=4, options=options, thread_name_prefix="peerload-seed-rpc")
        seed_pb2_grpc.add_SeedServiceServicer_to_server(_Servicer(manifest), self._server)
        if worker_service is not None:
            p2p_pb2_grpc.add_WorkerServiceServicer_to_server(worker_service, self._server)
        bound = bind(self._server, host, port, security, what="seed", fix="check the advertise_host setting")
        self.endpoint = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()
