"""One server edge for every gRPC service (`peerload._grpc_edge`): each typed error answers its status
code with its message, a bug answers INTERNAL with an incident id (the traceback stays in the
server's log), and the real coordinator and seed services answer through it.

Real gRPC servers on loopback; the seed services run in a real Publisher (NIXL agent included).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload._gen.peerload.v1 import seed_pb2, seed_pb2_grpc
from peerload._grpc import WRONG_REPLY
from peerload._grpc_edge import STATUS_CODES, service_handler
from peerload._grpc_server import OPEN, bind, new_server
from peerload.errors import (
    CheckpointError,
    ConfigError,
    InvalidRequest,
    LeaseRefused,
    LimitExceeded,
    NotFound,
    PreconditionFailed,
    SeedServiceError,
    ServerClosing,
    StoreUnavailable,
    Unsupported,
    WorkerSuperseded,
)
from peerload.identity import SourceIdentity
from peerload.seed.leases import LeaseTable
from peerload.seed.manifest_server import ManifestServer
from peerload.seed.publisher import publish
from peerload.seed.worker_service import _NO_ARTIFACTS
from peerload.settings import Settings
from peerload.worker_client import WorkerClient

SEED_SERVICE = seed_pb2.DESCRIPTOR.services_by_name["SeedService"]
WORKER_SERVICE = pb.DESCRIPTOR.services_by_name["WorkerService"]
IDENTITY = SourceIdentity(model_name="test/grpc-edge", dtype="float32")
Code = grpc.StatusCode

# Every entry of the error table, and a subclass (the most specific class wins).
CASES = [
    (InvalidRequest("worker_id", "is longer than 256 characters"), Code.INVALID_ARGUMENT),
    (NotFound("worker 'w' of source abc is not known here"), Code.NOT_FOUND),
    (LimitExceeded("max_workers_per_source", "source abc has 64 workers"), Code.RESOURCE_EXHAUSTED),
    (StoreUnavailable("redis at 127.0.0.1:1 refused the connection"), Code.UNAVAILABLE),
    (ConfigError("store 'sqlite' is not supported"), Code.FAILED_PRECONDITION),
    (CheckpointError("/models/x", "config.json is missing"), Code.FAILED_PRECONDITION),
    (Unsupported("artifact transfer is not supported"), Code.UNIMPLEMENTED),
    (PreconditionFailed("mx_source_id mismatch: this seed serves abc"), Code.FAILED_PRECONDITION),
    (ServerClosing("the seed is shutting down; read from another source"), Code.UNAVAILABLE),
    (LeaseRefused("the seed is serving its maximum of 1 readers", closing=False), Code.RESOURCE_EXHAUSTED),
    (LeaseRefused("the seed is shutting down and grants no new reads", closing=True), Code.UNAVAILABLE),
    (WorkerSuperseded("worker id 'w' of source abc was published since by another process"), Code.ALREADY_EXISTS),
]


class _Scripted:
    """SeedService whose GetManifest raises `error` (None: answers); the other methods are unsupported."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def GetManifest(self, request: seed_pb2.GetManifestRequest, context: grpc.ServicerContext) -> seed_pb2.Manifest:
        if self.error is not None:
            raise self.error
        return seed_pb2.Manifest(worker_id=request.worker_id)

    def _unsupported(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise Unsupported("not in this test")

    def __getattr__(self, method: str) -> Any:
        # Every other SeedService method, including ones added after this test was written.
        return self._unsupported


class _Edge:
    def __init__(self) -> None:
        self.servicer = _Scripted()
        self.observed: list[tuple[str, str]] = []
        self.server = new_server(OPEN, max_workers=2, options=[], thread_name_prefix="test-edge")
        handler = service_handler(
            SEED_SERVICE,
            seed_pb2,
            self.servicer,
            server="the test server",
            observe=lambda method, code, _started: self.observed.append((method, code)),
        )
        self.server.add_generic_rpc_handlers([handler])
        port = bind(self.server, "127.0.0.1", 0, OPEN, what="test server", fix="")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = seed_pb2_grpc.SeedServiceStub(self.channel)

    def fail(self, request: Any = None) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            self.stub.GetManifest(request or seed_pb2.GetManifestRequest(worker_id="w"), timeout=10)
        return info.value.code(), info.value.details()


@pytest.fixture
def edge() -> Iterator[_Edge]:
    e = _Edge()
    yield e
    e.channel.close()
    e.server.stop(0).wait()


def test_the_cases_cover_the_whole_error_table() -> None:
    assert set(STATUS_CODES) <= {type(error) for error, _ in CASES}


@pytest.mark.parametrize(("error", "code"), CASES, ids=[f"{type(e).__name__}-{c.name}" for e, c in CASES])
def test_each_typed_error_answers_its_code_with_its_message(edge: _Edge, error: Exception, code: Code) -> None:
    edge.servicer.error = error
    assert edge.fail() == (code, str(error))
    assert edge.observed == [("GetManifest", code.name)]


def test_a_bug_is_internal_with_an_incident_id_that_the_log_has(edge: _Edge, caplog: pytest.LogCaptureFixture) -> None:
    edge.servicer.error = RuntimeError("secret internals: /etc/seed/password")
    with caplog.at_level(logging.ERROR, logger="peerload._grpc_edge"):
        code, details = edge.fail()
    assert code == Code.INTERNAL
    found = re.fullmatch(r"GetManifest: internal error \(incident ([0-9a-f]{12})\); see the test server's log", details)
    assert found, details
    assert "secret" not in details and "RuntimeError" not in details
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info and "secret internals" in str(logged[0].exc_info[1])
    assert edge.observed == [("GetManifest", "INTERNAL")]
    edge.servicer.error = None  # one failing RPC does not take the server down
    assert edge.stub.GetManifest(seed_pb2.GetManifestRequest(worker_id="w"), timeout=10).worker_id == "w"
    assert edge.observed[-1] == ("GetManifest", "OK")


def test_undecodable_bytes_are_invalid_argument_not_internal(edge: _Edge) -> None:
    raw = edge.channel.unary_unary(f"/{SEED_SERVICE.full_name}/GetManifest")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert info.value.details().startswith("request: is not a valid GetManifestRequest")


def test_the_coordinator_answers_through_the_edge(coordinator: Any) -> None:
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = pb_grpc.P2pServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.PublishMetadata(pb.PublishMetadataRequest(worker_id="w"), timeout=10)
        assert (info.value.code(), info.value.details()) == (Code.INVALID_ARGUMENT, "identity: is required")
        with pytest.raises(grpc.RpcError) as info:
            stub.ListSources(pb.ListSourcesRequest(status_filter=99), timeout=10)  # type: ignore[arg-type]
        assert info.value.code() == Code.INVALID_ARGUMENT and info.value.details().startswith("status_filter")


def _tensors() -> dict[str, torch.Tensor]:
    return {"embed.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8), "bias": torch.ones(8)}


def test_the_seed_services_answer_through_the_edge(coordinator: Any) -> None:
    settings = Settings.load(env={}, coordinator=coordinator.address, seed_max_readers=1)
    with publish(_tensors(), IDENTITY, settings=settings) as pub:
        assert pub._server is not None
        with grpc.insecure_channel(pub._server.endpoint) as channel:
            seed, worker = seed_pb2_grpc.SeedServiceStub(channel), pb_grpc.WorkerServiceStub(channel)

            def fails(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
                with pytest.raises(grpc.RpcError) as info:
                    call(request, timeout=10)
                return info.value.code(), info.value.details()

            assert fails(seed.GetManifest, seed_pb2.GetManifestRequest(worker_id="other")) == (
                Code.NOT_FOUND,
                f"worker_id 'other' is not served here (this seed is {pub.worker_id!r})",
            )
            lease = seed.AcquireLease(seed_pb2.AcquireLeaseRequest(worker_id=pub.worker_id, reader="r1"), timeout=10)
            assert fails(seed.AcquireLease, seed_pb2.AcquireLeaseRequest(worker_id=pub.worker_id, reader="r2")) == (
                Code.RESOURCE_EXHAUSTED,
                "the seed is serving its maximum of 1 readers; read from another source",
            )
            assert seed.ReleaseLease(seed_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id), timeout=10).released
            assert fails(worker.PrepareTensorRead, pb.PrepareTensorReadRequest()) == (
                Code.INVALID_ARGUMENT,
                "mx_source_id: is required for tensor reads",
            )
            assert fails(worker.ReleaseTensorRead, pb.ReleaseTensorReadRequest(mx_source_id=pub.source_id)) == (
                Code.NOT_FOUND,
                "tensor read lease not found or expired: ''",
            )
            code, details = fails(worker.GetArtifactManifestChunks, pb.GetArtifactManifestChunksRequest())
            assert (code, details) == (Code.UNIMPLEMENTED, _NO_ARTIFACTS.format(rpc="GetArtifactManifestChunks"))


class _BrokenLeases(LeaseTable):
    def acquire(self, reader: str) -> Any:
        raise KeyError("secret lease internals")


def test_a_bug_in_a_seed_service_is_an_incident_of_the_seed(coordinator: Any) -> None:
    settings = Settings.load(env={}, coordinator=coordinator.address)
    with publish(_tensors(), IDENTITY, settings=settings) as pub:
        server = ManifestServer(pub.manifest, _BrokenLeases(0, 5.0))
        try:
            with grpc.insecure_channel(server.endpoint) as channel:
                with pytest.raises(grpc.RpcError) as info:
                    seed_pb2_grpc.SeedServiceStub(channel).AcquireLease(seed_pb2.AcquireLeaseRequest(), timeout=10)
        finally:
            server.stop(0)
    assert info.value.code() == Code.INTERNAL
    assert re.fullmatch(
        r"AcquireLease: internal error \(incident [0-9a-f]{12}\); see the seed's log", info.value.details()
    )


class _OtherSource(pb_grpc.WorkerServiceServicer):
    """A WorkerService that answers for another source than the one asked for."""

    def GetTensorManifest(self, request: Any, context: grpc.ServicerContext) -> pb.GetTensorManifestResponse:
        return pb.GetTensorManifestResponse(mx_source_id="ffffffffffffffff", worker_id=request.worker_id)


def test_a_reply_for_another_source_is_a_wrong_reply_not_ok() -> None:
    server = new_server(OPEN, max_workers=2, options=[], thread_name_prefix="test-edge")
    server.add_generic_rpc_handlers([service_handler(WORKER_SERVICE, pb, _OtherSource(), server="the test server")])
    port = bind(server, "127.0.0.1", 0, OPEN, what="test server", fix="")
    server.start()
    try:
        with WorkerClient(f"127.0.0.1:{port}", "0123456789abcdef", "w", 10) as client:
            with pytest.raises(SeedServiceError) as info:
                client.manifest()
        assert info.value.code == WRONG_REPLY and info.value.rpc == "GetTensorManifest"
        assert "answered for source ffffffffffffffff, not 0123456789abcdef" in info.value.details
    finally:
        server.stop(0).wait()


def test_no_servicer_aborts_by_hand() -> None:
    """Servicers raise typed errors; only the edge (and the token check before it) calls abort,
    so every service answers through the one table."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "peerload"
    edge = {src / "_grpc_edge.py", src / "_grpc_server.py"}
    aborting = sorted(
        str(p.relative_to(src)) for p in src.rglob("*.py") if p not in edge and ".abort(" in p.read_text()
    )
    assert aborting == []
