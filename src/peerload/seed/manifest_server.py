"""A seed's small gRPC server answering `peerload.v1.SeedService/GetManifest`."""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from peerload._gen.peerload.v1 import seed_pb2
from peerload._grpc_server import OPEN, ServerSecurity, bind, new_server
from peerload.limits import MANIFEST_MAX_BYTES, SEED_MAX_REQUEST_BYTES
from peerload.manifest import Manifest
from peerload.wire import manifest_to_proto

SERVICE = seed_pb2.DESCRIPTOR.services_by_name["SeedService"].full_name


class _Servicer:
    """GetManifest over raw bytes: undecodable requests get INVALID_ARGUMENT, not INTERNAL."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._reply = manifest_to_proto(manifest).SerializeToString()

    def get_manifest(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        request = seed_pb2.GetManifestRequest()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid GetManifestRequest: {exc}")
        if request.worker_id and request.worker_id != self._manifest.worker_id:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"worker_id {request.worker_id!r} is not served here (this seed is {self._manifest.worker_id!r})",
            )
        return self._reply

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.get_manifest)  # bytes in, bytes out
        return grpc.method_handlers_generic_handler(SERVICE, {"GetManifest": method})


class ManifestServer:
    """Serves one manifest on HOST:<free port>; `endpoint` is what goes into WorkerMetadata.

    Raises:
        ConfigError: HOST cannot be bound (see the advertise_host setting).
    """

    def __init__(
        self, manifest: Manifest, host: str = "127.0.0.1", port: int = 0, security: ServerSecurity = OPEN
    ) -> None:
        # Larger requests are refused with RESOURCE_EXHAUSTED by gRPC itself, before any parsing.
        options = [
            ("grpc.max_send_message_length", MANIFEST_MAX_BYTES),
            ("grpc.max_receive_message_length", SEED_MAX_REQUEST_BYTES),
        ]
        self._server = new_server(security, max_workers=2, options=options, thread_name_prefix="peerload-seed-rpc")
        self._server.add_generic_rpc_handlers((_Servicer(manifest).handler(),))
        bound = bind(self._server, host, port, security, what="seed", fix="check the advertise_host setting")
        self.endpoint = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()
