"""WorkerClient: typed calls to a ModelExpress seed's `model_express.p2p.WorkerService`.

What a peerload target calls on an official seed in P2P metadata mode: its per-name tensor
descriptors and a read lease held for the length of the read.
"""

from __future__ import annotations

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload._grpc import PLAINTEXT, Caller, ChannelClient, ChannelSecurity, open_channel
from peerload.errors import SeedServiceError
from peerload.limits import MANIFEST_MAX_BYTES
from peerload.wire import TensorManifest, tensor_manifest_from_proto


class WorkerClient(ChannelClient):
    """One channel to the WorkerService at `endpoint` for worker `worker_id` of `source_id` (TLS and
    a bearer token per `security`).

    Every method raises SeedServiceError when the seed cannot be reached, refuses (e.g.
    UNAVAILABLE while it shuts down, RESOURCE_EXHAUSTED at its reader cap), or answers for
    another source or worker.
    """

    def __init__(
        self, endpoint: str, source_id: str, worker_id: str, timeout_s: float, security: ChannelSecurity = PLAINTEXT
    ) -> None:
        self.endpoint = endpoint
        self.source_id = source_id
        self.worker_id = worker_id
        self._call = Caller(endpoint, timeout_s=timeout_s, retries=0, error=SeedServiceError)
        self._channel = open_channel(endpoint, MANIFEST_MAX_BYTES, security)
        self._stub = pb_grpc.WorkerServiceStub(self._channel)

    def manifest(self) -> TensorManifest:
        """The seed's descriptors, without a lease."""
        request = pb.GetTensorManifestRequest(mx_source_id=self.source_id, worker_id=self.worker_id)
        return self._checked(
            "GetTensorManifest", self._call("GetTensorManifest", self._stub.GetTensorManifest, request)
        )

    def prepare_read(self) -> tuple[str, TensorManifest]:
        """A read lease and the descriptors it covers; `release_read` it when the read ends."""
        request = pb.PrepareTensorReadRequest(mx_source_id=self.source_id, worker_id=self.worker_id)
        reply = self._call("PrepareTensorRead", self._stub.PrepareTensorRead, request)
        try:
            return reply.lease_id, self._checked("PrepareTensorRead", reply.manifest)
        except SeedServiceError:
            self.release_read(reply.lease_id)
            raise

    def release_read(self, lease_id: str) -> None:
        """End a lease (NOT_FOUND: it had lapsed already)."""
        request = pb.ReleaseTensorReadRequest(mx_source_id=self.source_id, worker_id=self.worker_id, lease_id=lease_id)
        self._call("ReleaseTensorRead", self._stub.ReleaseTensorRead, request)

    def _checked(self, rpc: str, reply: pb.GetTensorManifestResponse) -> TensorManifest:
        manifest = tensor_manifest_from_proto(reply)
        if manifest.mx_source_id != self.source_id:
            raise self._call.wrong_reply(rpc, f"answered for source {manifest.mx_source_id}, not {self.source_id}")
        if manifest.worker_id and manifest.worker_id != self.worker_id:
            raise self._call.wrong_reply(rpc, f"answered for worker {manifest.worker_id!r}, not {self.worker_id!r}")
        return manifest
