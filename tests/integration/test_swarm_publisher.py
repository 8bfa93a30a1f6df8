"""A loading worker's side of fan-out: INITIALIZING with its verified parts, READY without
re-publishing, withdrawn before a rollback; `peerload sources` shows how much it holds.

Real coordinator, real Publisher (NIXL agent), real gRPC on loopback.
"""

from __future__ import annotations

import grpc
import torch

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.cli.sources import collect as collect_rows
from peerload.client import CoordinatorClient, SourceStatus
from peerload.identity import SourceIdentity
from peerload.seed.availability import PartAvailability
from peerload.seed.publisher import Publisher
from peerload.seed_client import SeedClient
from peerload.settings import Settings
from peerload.tensors import collect

IDENTITY = SourceIdentity(model_name="test/swarm-publisher", dtype="float32")
PART = 4096


def loading_publisher(coordinator) -> tuple[Publisher, PartAvailability, int]:
    tensors = collect({f"w{i}": torch.full((1024,), float(i)) for i in range(6)})  # 6 parts of 4 KiB
    settings = Settings.load(env={}, coordinator=coordinator.address, chunk_bytes=PART, heartbeat_interval_s=0.2)
    availability = PartAvailability(6)
    sums = ["0" * 16] * 6  # what a loading target copies from its source (not checked by the publisher)
    pub = Publisher(tensors, IDENTITY, rank=0, settings=settings, part_sums=(PART, sums), availability=availability)
    return pub, availability, 6


def status_of(client: CoordinatorClient, pub: Publisher) -> SourceStatus | None:
    record = client.get_metadata(pub.source_id, pub.worker_id)
    return None if record is None else record.status


def test_a_loading_worker_is_initializing_serves_only_marked_parts_then_turns_ready(coordinator):
    pub, availability, count = loading_publisher(coordinator)
    with CoordinatorClient(coordinator.address) as client:
        try:
            assert status_of(client, pub) == SourceStatus.INITIALIZING
            assert client.list_sources(IDENTITY, status=SourceStatus.READY) == []
            endpoint = client.get_metadata(pub.source_id, pub.worker_id).manifest_endpoint
            with SeedClient(endpoint, pub.worker_id, timeout_s=10) as seed:
                assert seed.availability(count).parts == set()
                availability.mark(4)
                availability.mark(1)
                held = seed.availability(count)
                assert held.parts == {1, 4} and held.version == 2
                rows = collect_rows(client, model=IDENTITY.model_name)
                assert [(r["status"], r["parts"]) for r in rows] == [("INITIALIZING", "2/6")]
                # ModelExpress readers (whole tensors, no checksums) are refused while it loads
                channel = grpc.insecure_channel(endpoint)
                try:
                    call = channel.unary_unary(
                        "/model_express.p2p.WorkerService/PrepareTensorRead",
                        request_serializer=pb.PrepareTensorReadRequest.SerializeToString,
                        response_deserializer=pb.PrepareTensorReadResponse.FromString,
                    )
                    try:
                        call(pb.PrepareTensorReadRequest(mx_source_id=pub.source_id), timeout=10)
                        raise AssertionError("a loading worker granted a ModelExpress read")
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "still loading" in exc.details()
                finally:
                    channel.close()
                for i in range(count):
                    availability.mark(i)
                pub.ready()
                assert status_of(client, pub) == SourceStatus.READY
                assert seed.availability(count).parts is None  # complete
                assert [r["parts"] for r in collect_rows(client, model=IDENTITY.model_name)] == [None]
        finally:
            pub.close()


def test_a_withdrawn_loading_worker_serves_nothing_and_keeps_the_transport(coordinator):
    pub, availability, count = loading_publisher(coordinator)
    availability.mark(0)
    transport = pub.transport
    pub.withdraw()
    assert availability.held() == 0
    with CoordinatorClient(coordinator.address) as client:
        assert status_of(client, pub) == SourceStatus.STALE
    assert transport.health() is None  # still usable by the load that owns it
    transport.close()
