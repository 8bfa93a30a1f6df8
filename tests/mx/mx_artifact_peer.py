"""The official modelexpress 0.7.0 artifact code as a publisher or a reader, on CPU (NIXL DRAM).

Usage: python mx_artifact_peer.py publish|install ARGS.json OUT.json
  ARGS: {"coordinator", "identity": SourceIdentity fields, "bundle_root",
         "source_root" (publish) | "target_root" (install)}
  publish: torch_compile_cache_artifact_transfer -> prepare_source (tar + manifest) ->
           WorkerGrpcServer + publish_artifact_source; writes OUT once READY, serves until stdin closes.
  install: discover_and_transfer (MxClient -> READY artifact worker -> chunk leases -> NIXL reads,
           CRC32C checked) -> install (tar members validated, extracted); writes OUT.
Runs in its own process: modelexpress' p2p_pb2 and peerload's stubs cannot share one process.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("MX_HEARTBEAT_INTERVAL_SECS", "1")
os.environ.setdefault("MX_WORKER_HOST", "127.0.0.1")

from modelexpress import p2p_pb2  # noqa: E402
from modelexpress.client import MxClient  # noqa: E402
from modelexpress.metadata.artifact_transfer import (  # noqa: E402
    publish_artifact_source,
    torch_compile_cache_artifact_transfer,
)
from modelexpress.metadata.worker_server import WorkerGrpcServer  # noqa: E402
from modelexpress.nixl_transfer import NixlTransferManager  # noqa: E402

from peerload._process import free_port, write_ready_file  # noqa: E402
from peerload.bench.cases import CpuBackend  # noqa: E402


def manager(role: str, listen: bool) -> NixlTransferManager:
    name = f"mx-artifact-{role}-{uuid.uuid4().hex[:8]}"
    nixl = NixlTransferManager(name, 0, listen_port=free_port() if listen else None, accelerator_backend=CpuBackend())
    nixl.initialize()
    return nixl


def publish(args: dict, out: Path) -> None:
    transfer = torch_compile_cache_artifact_transfer(args["source_root"], args["source_root"], args["bundle_root"])
    bundle = transfer.prepare_source()
    nixl = manager("source", listen=True)
    server = WorkerGrpcServer([], None, agent_name=nixl.agent_name, accelerator="cpu")
    server.start()
    client = MxClient(server_url=args["coordinator"])
    identity = p2p_pb2.SourceIdentity(**args["identity"])
    worker_id = f"mx-artifact-{uuid.uuid4().hex[:8]}"
    published = publish_artifact_source(
        client,
        transfer,
        bundle,
        identity,
        nixl,
        worker_id,
        worker_grpc_server=server,
        host="127.0.0.1",
        accelerator="cpu",
    )
    deadline = time.monotonic() + 60
    while not [
        r for r in client.list_sources(identity=identity, status_filter=2).instances if r.worker_id == worker_id
    ]:
        if time.monotonic() > deadline:
            raise SystemExit("the official artifact source never became READY")
        time.sleep(0.2)
    write_ready_file(
        out,
        {"worker_id": worker_id, "artifact_id": bundle.artifact_id, "mx_source_id": published.endpoint.mx_source_id},
    )
    sys.stdin.read()
    published.stop()
    server.stop(0.5)
    nixl.shutdown()


def install(args: dict, out: Path) -> None:
    unused_source = Path(args["bundle_root"]).parent / "unused-source"
    transfer = torch_compile_cache_artifact_transfer(unused_source, args["target_root"], args["bundle_root"])
    nixl = manager("reader", listen=False)
    client = MxClient(server_url=args["coordinator"])
    identity = p2p_pb2.SourceIdentity(**args["identity"])
    header = transfer.discover_and_transfer(client, identity, nixl, accelerator="cpu", timeout=60)
    transfer.install(header)
    nixl.shutdown()
    client.close()
    write_ready_file(out, {"artifact_id": header.artifact_id, "chunks": header.chunk_count, "bytes": header.total_size})


if __name__ == "__main__":
    command, args_path, out_path = sys.argv[1:]
    {"publish": publish, "install": install}[command](json.loads(Path(args_path).read_text()), Path(out_path))
