"""A peerload seed's one gRPC server: ModelExpress WorkerService beside SeedService, read leases,
descriptors per parameter name, and the record it publishes in P2P and centralized mode.

Real coordinator, real Publisher (NIXL agent with its listen thread), real gRPC on loopback.
"""

from __future__ import annotations

import threading

import grpc
import pytest
import torch

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.client import CoordinatorClient
from peerload.errors import SeedServiceError
from peerload.identity import SourceIdentity
from peerload.seed.publisher import Publisher, publish
from peerload.seed_client import fetch_manifest
from peerload.settings import Settings
from peerload.tensors import collect
from peerload.wire import PEERLOAD_MANIFEST_KEY
from peerload.worker_client import WorkerClient

IDENTITY = SourceIdentity(model_name="test/worker-service", dtype="float32")
# Only a bound on waits for a state that must come (a broken build fails instead of hanging).
HANG_S = 60.0


def model_tensors() -> dict[str, torch.Tensor]:
    """Tied weights, a contiguous view into a bigger storage, an empty and a transposed tensor."""
    embed = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    packed = torch.arange(32, dtype=torch.bfloat16)
    return {
        "embed.weight": embed,
        "lm_head.weight": embed,  # tied
        "q.weight": packed[:16].view(4, 4),
        "k.weight": packed[16:].view(4, 4),  # a view 32 bytes into packed's storage
        "empty.bias": torch.empty(0),
        "t.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # not contiguous
        "mask": torch.tensor([True, False, True]),
    }


def settings_for(coordinator, **more) -> Settings:
    return Settings.load(env={}, coordinator=coordinator.address, **more)


def stub(endpoint: str) -> tuple[grpc.Channel, pb_grpc.WorkerServiceStub]:
    channel = grpc.insecure_channel(endpoint)
    return channel, pb_grpc.WorkerServiceStub(channel)


def code_of(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


@pytest.mark.timeout(60)
def test_descriptors_per_name_and_p2p_record(coordinator):
    tensors = model_tensors()
    with publish(tensors, IDENTITY, settings=settings_for(coordinator)) as pub:
        with CoordinatorClient(coordinator.address) as client:
            record = client.get_metadata(pub.source_id, pub.worker_id)
        assert record is not None and record.kind == "peerload" and record.mode == "p2p"
        endpoint = record.worker_grpc_endpoint
        assert record.manifest_endpoint == endpoint and record.topology[PEERLOAD_MANIFEST_KEY] == endpoint
        assert record.metadata_endpoint == f"127.0.0.1:{pub.transport.metadata_port}"
        assert record.tensors == [] and record.nixl_metadata  # lightweight, like official P2P seeds
        # Both services answer on that one port.
        assert fetch_manifest(endpoint, pub.worker_id, 10).worker_id == pub.worker_id
        with WorkerClient(endpoint, pub.source_id, pub.worker_id, 10) as worker:
            manifest = worker.manifest()
        assert (manifest.agent_name, manifest.accelerator) == (pub.transport.name, "cpu")
        assert manifest.metadata_endpoint == record.metadata_endpoint and manifest.worker_id == pub.worker_id
        got = {t.name: t for t in manifest.tensors}
        # Every name but the empty and the transposed tensor; dtypes as str(tensor.dtype).
        assert set(got) == {"embed.weight", "lm_head.weight", "q.weight", "k.weight", "mask"}
        assert got["embed.weight"].addr == got["lm_head.weight"].addr == tensors["embed.weight"].data_ptr()
        assert got["k.weight"].addr == got["q.weight"].addr + 32 and got["k.weight"].size == 32
        assert {n: t.dtype for n, t in got.items()} == {n: str(tensors[n].dtype) for n in got}
        assert got["mask"].size == 3
        # Each descriptor lies inside memory the seed registered (one region per storage).
        regions = [(r.addr, r.addr + r.size) for r in pub.manifest.regions]
        assert all(any(a <= t.addr and t.addr + t.size <= b for a, b in regions) for t in got.values())


@pytest.mark.timeout(60)
def test_centralized_record_carries_metadata_and_descriptors(coordinator):
    settings = settings_for(coordinator, mx_p2p_metadata=False)
    with publish(model_tensors(), IDENTITY, settings=settings) as pub:
        with CoordinatorClient(coordinator.address) as client:
            record = client.get_metadata(pub.source_id, pub.worker_id)
        assert record is not None and record.kind == "peerload" and record.mode == "centralized"
        assert record.worker_grpc_endpoint == "" and record.metadata_endpoint == ""
        assert record.nixl_metadata and record.agent_name == pub.transport.name
        assert {t.name for t in record.tensors} == {d.name for d in pub.descriptors}
        # peerload readers still find the peerload manifest through the topology key.
        assert fetch_manifest(record.manifest_endpoint, pub.worker_id, 10).worker_id == pub.worker_id


@pytest.mark.timeout(60)
def test_leases_bounded_and_requests_checked(coordinator):
    settings = settings_for(coordinator, seed_max_readers=1)
    with publish(model_tensors(), IDENTITY, settings=settings) as pub:
        endpoint = pub._server.endpoint if pub._server else ""
        with WorkerClient(endpoint, pub.source_id, pub.worker_id, 10) as worker:
            lease, manifest = worker.prepare_read()
            assert lease and len(manifest.tensors) == 5 and pub.leases.active() == 1
            with pytest.raises(SeedServiceError) as full:
                worker.prepare_read()
            assert full.value.code == "RESOURCE_EXHAUSTED" and "maximum of 1" in full.value.details
            worker.release_read(lease)
            assert pub.leases.active() == 0
            with pytest.raises(SeedServiceError) as gone:
                worker.release_read(lease)
            assert gone.value.code == "NOT_FOUND"
        with WorkerClient(endpoint, "0123456789abcdef", pub.worker_id, 10) as other:
            with pytest.raises(SeedServiceError, match="mx_source_id mismatch") as wrong:
                other.manifest()
            assert wrong.value.code == "FAILED_PRECONDITION"
        with WorkerClient(endpoint, pub.source_id, "someone-else", 10) as other:
            with pytest.raises(SeedServiceError, match="worker_id mismatch"):
                other.prepare_read()
        channel, worker_stub = stub(endpoint)
        with channel:
            code, _ = code_of(worker_stub.GetTensorManifest, pb.GetTensorManifestRequest())
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            code, details = code_of(worker_stub.GetArtifactManifestHeader, pb.GetArtifactManifestHeaderRequest())
            assert code == grpc.StatusCode.UNIMPLEMENTED and "artifact-source workers" in details
            code, _ = code_of(worker_stub.PrepareArtifactChunk, pb.PrepareArtifactChunkRequest())
            assert code == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.timeout(120)
def test_closing_seed_refuses_new_leases_and_waits_for_open_ones(coordinator, caplog):
    settings = settings_for(coordinator, lease_close_wait_s=3600)
    pub = Publisher(collect(model_tensors()), IDENTITY, rank=0, settings=settings)
    endpoint = pub._server.endpoint if pub._server else ""
    worker = WorkerClient(endpoint, pub.source_id, pub.worker_id, 10)
    lease, _ = worker.prepare_read()
    closer = threading.Thread(target=pub.close)
    closer.start()
    # close() is asleep waiting for our lease (it would not wake before an hour without it).
    assert pub.leases.wait_draining(HANG_S), "the closing seed never waited for the open lease"
    for call in (worker.prepare_read, worker.manifest):
        with pytest.raises(SeedServiceError) as refused:
            call()
        assert refused.value.code == "UNAVAILABLE" and "shutting down" in refused.value.details
    assert closer.is_alive() and not pub.transport._closed  # memory stays registered for the reader
    worker.release_read(lease)
    closer.join(HANG_S)
    assert not closer.is_alive() and pub.transport._closed
    # Released, not timed out: close() reported no lease still open.
    assert not [r for r in caplog.records if "still open" in r.getMessage()]
    worker.close()


@pytest.mark.timeout(60)
def test_closing_seed_stops_waiting_at_its_bound(coordinator, caplog):
    settings = settings_for(coordinator, lease_close_wait_s=0.5)
    pub = Publisher(collect(model_tensors()), IDENTITY, rank=0, settings=settings)
    assert pub.leases.timeout_s >= 60  # the lease would lapse long after the bound: the bound ends the wait
    endpoint = pub._server.endpoint if pub._server else ""
    with WorkerClient(endpoint, pub.source_id, pub.worker_id, 10) as worker:
        worker.prepare_read()  # never released: a reader that died
        pub.close()
    assert pub.transport._closed and pub.leases.close_waits >= 1  # it waited, then gave up
    gave_up = [r.getMessage() for r in caplog.records if "still open" in r.getMessage()]
    assert gave_up == ["closing with 1 read lease(s) still open after 0.5 s"]


@pytest.mark.timeout(60)
def test_mooncake_seed_tells_modelexpress_readers_why_not(coordinator):
    pytest.importorskip("mooncake.engine")
    settings = settings_for(coordinator, transport="transfer_engine")
    with publish(model_tensors(), IDENTITY, settings=settings) as pub:
        endpoint = pub._server.endpoint if pub._server else ""
        with WorkerClient(endpoint, pub.source_id, pub.worker_id, 10) as worker:
            with pytest.raises(SeedServiceError, match="reads NIXL seeds only") as refused:
                worker.prepare_read()
        assert refused.value.code == "FAILED_PRECONDITION"
