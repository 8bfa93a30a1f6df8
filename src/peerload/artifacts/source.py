"""Publishing a cache directory as a ModelExpress artifact source.

The directory is packed once into one tar (`artifact.tar`) held in memory registered with the
transport; its manifest (per-file and per-chunk CRC32C) is computed from those very bytes, so
what is served is what was checksummed even if the directory changes afterwards. The worker is
published with `artifact_source` under an identity of the artifact's kind carrying the
environment stamp, served by its own WorkerService, and heartbeated READY until `close()`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
import torch

from peerload._address import host_port
from peerload._gen.model_express import p2p_pb2
from peerload._grpc_edge import service_handler
from peerload._grpc_server import ServerSecurity, bind, new_server
from peerload.advertise import advertise_host
from peerload.artifacts import archive
from peerload.artifacts.kinds import kind_name, kind_value
from peerload.artifacts.manifest import DEFAULT_CHUNK_BYTES, artifact_id, build_manifest, source_metadata
from peerload.artifacts.service import ArtifactServicer
from peerload.artifacts.stamp import environment_stamp, stamped
from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.errors import ConfigError, CoordinatorError
from peerload.identity import SourceIdentity, new_worker_id
from peerload.limits import SEED_MAX_REQUEST_BYTES
from peerload.seed.leases import LeaseTable
from peerload.settings import Settings
from peerload.transport import make_transport
from peerload.wire import ArtifactInfo

log = logging.getLogger(__name__)

BUNDLE_FILE = "/peerload/artifact/artifact.tar"  # the one file's name; readers use its base name only
_WORKER_SERVICE = p2p_pb2.DESCRIPTOR.services_by_name["WorkerService"]
_MAX_CHUNK_LEASES = 64


def artifact_identity(identity: SourceIdentity, kind: str, stamp: dict[str, str] | None = None) -> SourceIdentity:
    """The identity of `kind`'s artifact of the model `identity` names, stamped with this environment."""
    from dataclasses import replace

    return stamped(replace(identity, mx_source_type=kind_value(kind)), stamp or environment_stamp())


class ArtifactSource:
    """A live artifact source; `close()` marks it STALE, waits (bounded) for chunk leases, releases all.

    Args:
        directory: the cache directory to publish (its files and subdirectories; links are left out).
        identity: the artifact's identity (see `artifact_identity`): its `mx_source_type` is the kind.
        settings: coordinator, transport, TLS and tokens, lease timeout, heartbeat interval.
        chunk_bytes: bytes per chunk (ModelExpress' default: 64 MiB).

    Raises:
        ConfigError: `directory` is not a directory, or the identity is not an artifact kind.
        CoordinatorError: the coordinator refused or could not take the publication.
    """

    def __init__(
        self,
        directory: str | Path,
        identity: SourceIdentity,
        *,
        settings: Settings,
        worker_id: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError(f"artifact directory {root} is not a directory; pass the cache directory to publish")
        self.kind = kind_name(identity.mx_source_type)
        kind_value(self.kind)  # refuses weights and other non-cache types
        self.directory = root
        self.identity = identity
        self.settings = settings
        self.worker_id = worker_id or new_worker_id(0)
        self.source_id = identity.source_id()
        started = time.perf_counter()
        bundle = archive.pack(root)
        self._bytes = torch.frombuffer(bytearray(bundle), dtype=torch.uint8) if bundle else torch.empty(0)
        self.manifest = build_manifest([(BUNDLE_FILE, bundle)], identity.mx_source_type, chunk_bytes)
        self.artifact_id = artifact_id(self.manifest)
        self.total_bytes = len(bundle)
        self.leases = LeaseTable(_MAX_CHUNK_LEASES, settings.lease_timeout_s)
        self._closed = threading.Event()
        self._client = CoordinatorClient.from_settings(settings)
        self._server = None
        self.transport = make_transport(settings, f"peerload-artifact-{self.worker_id}")
        try:
            region = self.transport.register({"artifact": self._bytes})[0]
            endpoint = self.transport.endpoint_info()
            port = self.transport.metadata_port
            self.metadata_endpoint = f"{advertise_host(settings)}:{port}" if port else ""
            self.agent_name = endpoint.agent_name
            self.servicer = ArtifactServicer(
                self.manifest,
                self.artifact_id,
                [region.addr + c.file_offset for c in self.manifest.chunks],
                lambda: self.transport.endpoint_info().nixl_metadata or b"",
                self.leases,
                agent_name=endpoint.agent_name,
                metadata_endpoint=self.metadata_endpoint,
            )
            self.servicer.source_id = self.source_id
            self._server, self.endpoint = self._serve()
            self._publish()
        except BaseException:
            self._release()
            raise
        log.info(
            "published %s artifact %s of %s (%d bytes, %d chunks) as %s/%s in %.2fs",
            self.kind,
            self.artifact_id[:12],
            root,
            self.total_bytes,
            len(self.manifest.chunks),
            self.source_id,
            self.worker_id,
            time.perf_counter() - started,
        )
        self._heartbeat = threading.Thread(target=self._beat_loop, name="peerload-artifact-heartbeat", daemon=True)
        self._heartbeat.start()

    def _serve(self) -> tuple[grpc.Server, str]:
        security = ServerSecurity.from_settings(self.settings)
        options = [("grpc.max_receive_message_length", SEED_MAX_REQUEST_BYTES)]
        server = new_server(security, max_workers=4, options=options, thread_name_prefix="peerload-artifact-rpc")
        server.add_generic_rpc_handlers(
            [service_handler(_WORKER_SERVICE, p2p_pb2, self.servicer, server="the artifact source")]
        )
        host = advertise_host(self.settings)
        port = bind(server, host, 0, security, what="artifact source", fix="check the advertise_host setting")
        server.start()
        return server, host_port(host, port)

    def _worker(self) -> WorkerInfo:
        info = source_metadata(self.manifest)
        return WorkerInfo(
            rank=0,
            agent_name=self.agent_name,
            worker_grpc_endpoint=self.endpoint,
            metadata_endpoint=self.metadata_endpoint,
            accelerator="cuda" if torch.cuda.is_available() else "cpu",
            artifact=ArtifactInfo(info.artifact_id, info.total_size, info.file_count, info.chunk_count, info.node_rank),
        )

    def _publish(self) -> None:
        published = self._client.publish(self.identity, self._worker(), worker_id=self.worker_id)
        if published != self.source_id:
            log.warning("coordinator computed source id %s, we computed %s", published, self.source_id)
            self.source_id = self.servicer.source_id = published
        self._client.update_status(self.source_id, self.worker_id, 0, SourceStatus.READY, 0.0)

    def _beat_loop(self) -> None:
        while not self._closed.wait(self.settings.heartbeat_interval_s):
            try:
                load = float(self.leases.active())
                if not self._client.update_status(self.source_id, self.worker_id, 0, SourceStatus.READY, load):
                    log.warning("coordinator forgot artifact source %s: publishing again", self.worker_id)
                    self._publish()
            except CoordinatorError as exc:
                log.warning("artifact source heartbeat failed (still serving; retrying): %s", exc)

    def close(self) -> None:
        """STALE, then wait for open chunk leases (up to `lease_close_wait_s`), then release everything."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._heartbeat.join(timeout=self.settings.rpc_timeout_s)
        try:
            self._client.update_status(self.source_id, self.worker_id, 0, SourceStatus.STALE)
        except CoordinatorError as exc:
            log.warning("could not mark artifact source %s STALE (the reaper will): %s", self.worker_id, exc)
        still_open = self.leases.close(self.settings.lease_close_wait_s)
        if still_open:
            log.warning("closing artifact source with %d chunk lease(s) still open", still_open)
        self._release()

    def _release(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.stop(0.5).wait()
        self.transport.close()
        self._client.close()

    def __enter__(self) -> ArtifactSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
