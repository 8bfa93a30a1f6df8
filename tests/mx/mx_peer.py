"""The official modelexpress 0.7.0 client as a seed or a target, on CPU (the bench's DRAM backend).

Usage: python mx_peer.py seed|target ARGS.json OUT.json
  ARGS: {"coordinator", "model_dir", "identity": SourceIdentity fields, "mode": "p2p"|"centralized"
         (seed), "hold": FILE (target: write OUT with "leased" and wait for FILE before reading)}
  seed:   load the checkpoint, register it with NixlTransferManager, publish_metadata_and_ready;
          writes OUT once published, serves until stdin closes.
  target: MxClient -> the READY worker -> WorkerService (prepare_tensor_read) or the record ->
          NixlTransferManager.fetch_remote_and_wait / receive_from_source; writes sha256 per tensor.
Runs in its own process: modelexpress' p2p_pb2 and peerload's stubs cannot share one process.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import grpc
from modelexpress import p2p_pb2, p2p_pb2_grpc
from modelexpress.client import MxClient
from modelexpress.metadata.payload import worker_tensor_descriptors
from modelexpress.metadata.publish import publish_metadata_and_ready
from modelexpress.metadata.worker_server import fetch_tensor_manifest, prepare_tensor_read
from modelexpress.nixl_transfer import NixlTransferManager
from modelexpress.types import TensorDescriptor

from peerload._process import free_port, write_ready_file
from peerload.adapters import hf
from peerload.bench.cases import CpuBackend
from peerload.tensors import module_tensors, sha256_of


def manager(role: str, listen: bool) -> NixlTransferManager:
    name = f"mx-{role}-{uuid.uuid4().hex[:8]}"
    nixl = NixlTransferManager(name, 0, listen_port=free_port() if listen else None, accelerator_backend=CpuBackend())
    nixl.initialize()
    return nixl


def unique_storage(tensors: dict) -> dict:
    """One name per storage (tied weights once): what the official client registers with NIXL."""
    seen, out = set(), {}
    for name, t in tensors.items():
        if t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[name] = t
    return out


def release_again(endpoint: str, ref: p2p_pb2.SourceInstanceRef, lease_id: str) -> str:
    """The status of releasing a lease a second time: NOT_FOUND once the seed has ended it."""
    request = p2p_pb2.ReleaseTensorReadRequest(
        mx_source_id=ref.mx_source_id, worker_id=ref.worker_id, lease_id=lease_id
    )
    with grpc.insecure_channel(endpoint) as channel:
        try:
            p2p_pb2_grpc.WorkerServiceStub(channel).ReleaseTensorRead(request, timeout=10)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def seed(args: dict, out: Path) -> None:
    os.environ.update(
        MX_P2P_METADATA="1" if args["mode"] == "p2p" else "0",
        MX_WORKER_HOST="127.0.0.1",
        MX_WORKER_GRPC_PORT=str(free_port()),
        MX_HEARTBEAT_INTERVAL_SECS="1",
    )
    model = hf.load_model(args["model_dir"])
    tensors = module_tensors(model)
    nixl = manager("seed", listen=args["mode"] == "p2p")
    nixl.register_tensors(unique_storage(tensors))
    client = MxClient(server_url=args["coordinator"])
    worker_id = f"mx-seed-{uuid.uuid4().hex[:8]}"
    identity = p2p_pb2.SourceIdentity(**args["identity"])
    publish_metadata_and_ready(client, nixl, tensors, 0, 0, identity, worker_id, accelerator="cpu")
    deadline = time.monotonic() + 60
    while not [
        r for r in client.list_sources(identity=identity, status_filter=2).instances if r.worker_id == worker_id
    ]:
        if time.monotonic() > deadline:
            raise SystemExit("the official seed never became READY")
        time.sleep(0.2)
    write_ready_file(out, {"worker_id": worker_id, "pid": os.getpid()})
    sys.stdin.read()


def target(args: dict, out: Path) -> None:
    """Load once; a refused RPC is reported as {"refused": code, "by": "coordinator" | "seed"}."""
    client = MxClient(server_url=args["coordinator"])
    identity = p2p_pb2.SourceIdentity(**args["identity"])
    try:
        refs = client.list_sources(identity=identity, status_filter=p2p_pb2.SOURCE_STATUS_READY).instances
    except grpc.RpcError as exc:
        write_ready_file(out, {"refused": exc.code().name, "by": "coordinator"})
        return
    if len(refs) != 1:
        raise SystemExit(f"expected one READY worker, found {[r.worker_id for r in refs]}")
    ref = refs[0]
    worker = client.get_metadata(ref.mx_source_id, ref.worker_id).worker
    if worker.worker_grpc_endpoint:
        try:
            fetch_tensor_manifest(worker.worker_grpc_endpoint, ref.mx_source_id, worker_id=ref.worker_id)
        except grpc.RpcError as exc:
            write_ready_file(out, {"refused": exc.code().name, "by": "seed"})
            return
    destination, _ = hf.target_tensors(args["model_dir"], quantize=None, tp_size=1, tp_rank=0)
    tensors = module_tensors(destination)
    nixl = manager("target", listen=True)
    registered = unique_storage(tensors)
    nixl.register_tensors(registered)
    report: dict = {
        "worker_id": ref.worker_id,
        "mode": "p2p" if worker.worker_grpc_endpoint else "centralized",
        "registered": len(registered),
    }
    if worker.worker_grpc_endpoint:
        endpoint = worker.worker_grpc_endpoint
        listed, _ = fetch_tensor_manifest(endpoint, ref.mx_source_id, worker_id=ref.worker_id)
        lease, _ = prepare_tensor_read(endpoint, ref.mx_source_id, worker_id=ref.worker_id)
        manifest = lease.manifest
        report["listed"] = len(listed)
        host, port = manifest.metadata_endpoint.rsplit(":", 1)
        nixl.fetch_remote_and_wait(manifest.agent_name, host, int(port))
        if args.get("hold"):  # leased and connected: the test closes the seed now
            write_ready_file(out.with_suffix(".leased"), {"lease": True})
            while not Path(args["hold"]).exists():
                time.sleep(0.05)
        descriptors = [TensorDescriptor(t.name, t.addr, t.size, t.device_id, t.dtype) for t in manifest.tensors]
        moved, matched, _ = nixl.receive_from_source(
            b"", descriptors, timeout_seconds=60, remote_agent_name=manifest.agent_name
        )
        nixl.remove_remote_agent(manifest.agent_name)
        lease.close()  # ReleaseTensorRead
        report["second_release"] = release_again(endpoint, ref, lease._lease_id)
    else:
        descriptors = [
            TensorDescriptor(t.name, t.addr, t.size, t.device_id, t.dtype) for t in worker_tensor_descriptors(worker)
        ]
        moved, matched, _ = nixl.receive_from_source(worker.nixl_metadata, descriptors, timeout_seconds=60)
    report.update(bytes=moved, matched=matched, sha256={n: sha256_of(t) for n, t in tensors.items()})
    nixl.shutdown()
    client.close()
    write_ready_file(out, report)


if __name__ == "__main__":
    command, args_path, out_path = sys.argv[1:]
    {"seed": seed, "target": target}[command](json.loads(Path(args_path).read_text()), Path(out_path))
