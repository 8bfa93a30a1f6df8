"""The coordinator over real loopback gRPC, against the memory and the Redis store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from manual_clock import ManualClock, wait_until

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.client import CoordinatorClient, SourceStatus, TensorInfo, WorkerInfo
from peerload.coordinator.server import serve
from peerload.coordinator.store import MemoryStore
from peerload.errors import CoordinatorError, CoordinatorUnavailable
from peerload.identity import BackendFramework, SourceIdentity
from peerload.settings import Settings

QWEN = SourceIdentity(
    model_name="Qwen/Qwen3-0.6B", backend_framework=BackendFramework.VLLM, tensor_parallel_size=2, dtype="bfloat16"
)
LLAMA = SourceIdentity(model_name="meta-llama/Llama-3.1-8B", dtype="bfloat16")
TENSORS = [
    TensorInfo("embed.weight", 0x1000, 4096, 0, "torch.bfloat16"),
    TensorInfo("lm_head.weight", 0x3000, 8192, 0, "torch.bfloat16"),
]


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest, coordinator_factory: Callable[..., Any]) -> Callable[..., Any]:
    """make(**settings) -> running coordinator on the parametrised store."""
    return lambda **kw: coordinator_factory(request.param, **kw)


# Only a bound on waits for a state that must come, so that a broken build fails instead of
# hanging; no assertion here is about how long something took.
HANG_S = 30.0


def test_publish_list_get_update(make: Callable[..., Any]) -> None:
    server = make()
    with CoordinatorClient(server.address, timeout_s=5) as client:
        assert client.health_check()
        worker = WorkerInfo(
            rank=1,
            agent_name="agent-1",
            nixl_metadata=b"\x00nixl\xff",
            tensors=TENSORS,
            worker_grpc_endpoint="127.0.0.1:9001",
            accelerator="cpu",
            topology={"node": "a"},
        )
        sid = client.publish(QWEN, worker, "w1")
        assert sid == QWEN.source_id()
        (ref,) = client.list_sources()
        assert (ref.mx_source_id, ref.worker_id, ref.worker_rank, ref.model_name) == (sid, "w1", 1, QWEN.model_name)
        assert ref.topology == {"node": "a"} and ref.accelerator == "cpu" and ref.source_load is None
        record = client.get_metadata(sid, "w1")
        assert record is not None and record.status is SourceStatus.INITIALIZING
        assert client.list_sources(status=SourceStatus.READY) == []
        assert client.update_status(sid, "w1", 1, SourceStatus.READY, source_load=0.25)
        record = client.get_metadata(sid, "w1")
        assert record.status is SourceStatus.READY and record.transport == "nixl"
        assert record.nixl_metadata == b"\x00nixl\xff" and record.tensors == TENSORS
        assert (record.agent_name, record.worker_grpc_endpoint, record.identity) == ("agent-1", "127.0.0.1:9001", QWEN)
        (ready,) = client.list_sources(QWEN, status=SourceStatus.READY, worker_rank=1)
        assert ready.source_load == pytest.approx(0.25)
        assert client.get_metadata(sid, "nobody") is None
        assert not client.update_status(sid, "nobody", 0, SourceStatus.READY)


def test_filters_and_same_rank_workers(make: Callable[..., Any]) -> None:
    clock = ManualClock()  # every write a millisecond after the one before
    server = make(clock=clock)
    with CoordinatorClient(server.address, timeout_s=5) as client:
        q = client.publish(QWEN, WorkerInfo(rank=0, transfer_engine_session_id="h:1"), "q-a")
        clock.advance(0.001)
        client.publish(QWEN, WorkerInfo(rank=0, transfer_engine_session_id="h:2"), "q-b")
        clock.advance(0.001)
        client.publish(QWEN, WorkerInfo(rank=1), "q-c")
        clock.advance(0.001)
        client.publish(LLAMA, WorkerInfo(rank=0), "l-a")
        clock.advance(0.001)
        for wid, rank in (("q-a", 0), ("q-b", 0)):
            client.update_status(q, wid, rank, SourceStatus.READY)
        ids = lambda refs: sorted(r.worker_id for r in refs)  # noqa: E731
        assert ids(client.list_sources(QWEN, status=SourceStatus.READY, worker_rank=0)) == ["q-a", "q-b"]
        assert ids(client.list_sources(QWEN)) == ["q-a", "q-b", "q-c"]
        assert ids(client.list_sources(model_name="META-LLAMA/Llama-3.1-8B")) == ["l-a"]
        assert ids(client.list_sources(worker_rank=1)) == ["q-c"]
        assert ids(client.list_sources(status=SourceStatus.INITIALIZING)) == ["l-a", "q-c"]
        assert len(client.list_sources(limit=2)) == 2
        newest = client.list_sources(limit=1)[0]
        assert newest.worker_id in ("q-a", "q-b")  # the latest heartbeat
        recent = ids(client.list_sources(min_updated_at=newest.updated_at_ms))
        assert newest.worker_id in recent and "q-c" not in recent
        assert client.get_metadata(q, "q-b").transport == "transfer_engine"


def test_heartbeat_expiry_reaper_stale_then_gc(make: Callable[..., Any]) -> None:
    clock = ManualClock()
    server = make(heartbeat_timeout_s=0.5, gc_timeout_s=1.2, clock=clock)
    with CoordinatorClient(server.address, timeout_s=5) as client:
        sid = client.publish(QWEN, WorkerInfo(rank=0), "w0")
        client.update_status(sid, "w0", 0, SourceStatus.READY)
        clock.advance(0.5)  # exactly at the timeout: still fresh
        assert len(client.list_sources(status=SourceStatus.READY)) == 1
        assert server.store.get(sid, "w0").status == SourceStatus.READY
        clock.advance(0.1)
        # Readers stop seeing READY as soon as the heartbeat is late...
        assert client.list_sources(status=SourceStatus.READY) == []
        assert client.get_metadata(sid, "w0").status is SourceStatus.STALE
        # ...the reaper then writes STALE into the store...
        wait_until(lambda: server.store.get(sid, "w0").status == SourceStatus.STALE, "the reaper wrote STALE", HANG_S)
        assert [r.worker_id for r in client.list_sources(status=SourceStatus.STALE)] == ["w0"]
        # ...and deletes the worker after the GC timeout, not before.
        clock.advance(0.6)  # 1.2 s since the heartbeat: at the GC timeout
        assert server.registry.reap().deleted == 0  # a pass at exactly the GC timeout keeps it
        assert client.get_metadata(sid, "w0") is not None
        clock.advance(0.1)
        wait_until(lambda: client.get_metadata(sid, "w0") is None, "the reaper deleted the worker", HANG_S)
        assert client.list_sources() == []


def test_bad_input_status_codes_name_the_field(make: Callable[..., Any]) -> None:
    server = make()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.P2pServiceStub(channel)
        cases = [
            (
                stub.PublishMetadata,
                pb.PublishMetadataRequest(identity=pb.SourceIdentity(), worker_id="w", worker=pb.WorkerMetadata()),
                "identity.model_name",
            ),
            (
                stub.PublishMetadata,
                pb.PublishMetadataRequest(identity=pb.SourceIdentity(model_name="m"), worker=pb.WorkerMetadata()),
                "worker_id",
            ),
            (
                stub.PublishMetadata,
                pb.PublishMetadataRequest(
                    identity=pb.SourceIdentity(model_name="m", backend_framework=99),
                    worker_id="w",
                    worker=pb.WorkerMetadata(),
                ),
                "identity.backend_framework",
            ),
            (stub.ListSources, pb.ListSourcesRequest(status_filter=17), "status_filter"),
            (stub.UpdateStatus, pb.UpdateStatusRequest(mx_source_id="x", worker_id="w", status=8), "status"),
            (stub.GetMetadata, pb.GetMetadataRequest(worker_id="w"), "mx_source_id"),
        ]
        for method, request, field in cases:
            with pytest.raises(grpc.RpcError) as info:
                method(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert info.value.details().startswith(f"{field}:"), info.value.details()
        garbage = channel.unary_unary("/model_express.p2p.P2pService/PublishMetadata")
        with pytest.raises(grpc.RpcError) as info:
            garbage(b"\xff\xff\xff\xff", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PublishMetadataRequest" in info.value.details()
        assert not stub.GetMetadata(pb.GetMetadataRequest(mx_source_id="f" * 16, worker_id="w"), timeout=5).found
        assert stub.ListSources(pb.ListSourcesRequest(), timeout=5).instances == []  # nothing was written


def test_oversized_message_is_refused_and_server_lives(coordinator_factory: Callable[..., Any]) -> None:
    server = coordinator_factory(max_message_bytes=1 << 20)
    with CoordinatorClient(server.address, timeout_s=5) as client:
        with pytest.raises(CoordinatorError) as info:
            client.publish(QWEN, WorkerInfo(rank=0, nixl_metadata=b"x" * (2 << 20)), "big")
        assert info.value.code == "RESOURCE_EXHAUSTED" and info.value.rpc == "PublishMetadata"
        assert client.list_sources() == []
        client.publish(QWEN, WorkerInfo(rank=0, nixl_metadata=b"x" * 1000), "small")
        assert [r.worker_id for r in client.list_sources()] == ["small"]


def test_client_errors_name_rpc_code_details_and_address(coordinator: Any, free_port: Callable[[], int]) -> None:
    with CoordinatorClient(coordinator.address, timeout_s=5) as client:
        with pytest.raises(CoordinatorError) as info:
            client.publish(QWEN, WorkerInfo(rank=0), "")
    error = info.value
    assert (error.rpc, error.code, error.address) == ("PublishMetadata", "INVALID_ARGUMENT", coordinator.address)
    assert "worker_id" in error.details and "worker_id" in str(error) and coordinator.address in str(error)

    dead = f"127.0.0.1:{free_port()}"
    with CoordinatorClient(dead, timeout_s=2, retries=1) as client:
        with pytest.raises(CoordinatorUnavailable) as info:
            client.list_sources()
        assert (info.value.rpc, info.value.code) == ("ListSources", "UNAVAILABLE")
        assert dead in str(info.value) and "after 2 attempts" in str(info.value)
        with pytest.raises(CoordinatorUnavailable):
            client.health_check()


def test_client_retries_until_the_server_comes_up(
    coordinator_factory: Callable[..., Any], free_port: Callable[[], int]
) -> None:
    port = free_port()
    retried = threading.Event()

    class FirstRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "unavailable (attempt 1), retrying" in record.getMessage():
                retried.set()

    watcher = FirstRetry()
    logger = logging.getLogger("peerload._grpc")
    level = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    listed: list[Any] = []
    try:
        with CoordinatorClient(f"127.0.0.1:{port}", timeout_s=5, retries=8) as client:
            caller = threading.Thread(target=lambda: listed.append(client.list_sources()))
            caller.start()
            # The server starts only after the client's first attempt found nobody there.
            assert retried.wait(HANG_S), "the client never retried"
            coordinator_factory(port=port)
            caller.join(HANG_S)
            assert not caller.is_alive()
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(level)
    assert listed == [[]]


def test_store_outage_is_unavailable_and_not_serving(
    coordinator_factory: Callable[..., Any], free_port: Callable[[], int]
) -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = coordinator_factory("redis", redis_url=url, heartbeat_timeout_s=0.4, reap_interval_s=0.05)
    with CoordinatorClient(server.address, timeout_s=5, retries=0) as client:
        with pytest.raises(CoordinatorUnavailable) as info:
            client.publish(QWEN, WorkerInfo(rank=0), "w")
        assert url in info.value.details
        wait_until(lambda: client.health_check() is False, "health NOT_SERVING", HANG_S)


class _BrokenStore(MemoryStore):
    """A store with a bug: listing raises an unexpected exception whose text must stay private."""

    def entries(self, mx_source_id: str | None = None, *, payload: bool = True) -> list:
        raise RuntimeError("secret internals: /etc/coordinator/password")


def test_internal_errors_give_an_incident_id_not_the_exception_text() -> None:
    server = serve(Settings.load(env={}, host="127.0.0.1"), port=0, store=_BrokenStore())
    try:
        with CoordinatorClient(server.address, timeout_s=5, retries=0) as client:
            with pytest.raises(CoordinatorError) as info:
                client.list_sources()
            assert info.value.code == "INTERNAL" and "incident" in info.value.details
            assert "secret" not in info.value.details and "RuntimeError" not in info.value.details
            assert client.health_check()  # one failing RPC does not take the server down
    finally:
        server.stop(grace_s=0)
