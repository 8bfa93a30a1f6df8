"""CoordinatorClient against a scripted in-process server (grpc_testing): requests, retries, errors.

The server side of each RPC is played by the test, so every reply and status code is chosen here;
the real coordinator is tested over loopback in tests/integration/test_coordinator.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import grpc_testing
import pytest
from grpc_health.v1 import health_pb2

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.errors import CoordinatorError, CoordinatorUnavailable
from peerload.identity import SourceIdentity

P2P = pb.DESCRIPTOR.services_by_name["P2pService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
IDENTITY = SourceIdentity(model_name="org/model", dtype="bfloat16", tensor_parallel_size=2)


class Scripted:
    """A client on a grpc_testing channel; `serve(method, replies)` answers its calls in order."""

    def __init__(self, retries: int = 2) -> None:
        self.channel = grpc_testing.channel([P2P, HEALTH], grpc_testing.strict_real_time())
        self.client = CoordinatorClient("test:1", timeout_s=5, retries=retries, channel=self.channel)
        self.requests: list[Any] = []

    def call(
        self, fn: Callable[[CoordinatorClient], Any], method: Any, replies: list[tuple[Any, grpc.StatusCode, str]]
    ) -> Any:
        """Run `fn(client)` in a thread while this thread answers `method` with `replies`."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = fn(self.client)
            except BaseException as exc:  # handed back to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        for response, code, details in replies:
            _, request, rpc = self.channel.take_unary_unary(method)
            self.requests.append(request)
            rpc.terminate(response, (), code, details)
        thread.join(10)
        assert not thread.is_alive(), "the client is still waiting for a reply"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


OK = grpc.StatusCode.OK


def test_publish_sends_the_identity_and_worker_and_returns_the_source_id():
    s = Scripted()
    worker = WorkerInfo(
        rank=1,
        agent_name="agent",
        nixl_metadata=b"md",
        tensors=[("w", 4096, 64, 0, "torch.uint8")],
        worker_grpc_endpoint="10.0.0.1:5000",
    )
    sid = s.call(
        lambda c: c.publish(IDENTITY, worker, worker_id="w-1"),
        P2P.methods_by_name["PublishMetadata"],
        [(pb.PublishMetadataResponse(success=True, mx_source_id="abcd", worker_id="w-1"), OK, "")],
    )
    assert sid == "abcd"
    request = s.requests[0]
    assert request.worker_id == "w-1" and request.identity.model_name == "org/model"
    assert request.identity.tensor_parallel_size == 2 and request.identity.dtype == "bfloat16"
    assert request.worker.worker_rank == 1 and request.worker.nixl_metadata == b"md"
    assert [(t.name, t.addr, t.size) for t in request.worker.tensor_source.tensors] == [("w", 4096, 64)]


def test_a_rejected_publish_is_an_error_naming_the_reason():
    s = Scripted()
    with pytest.raises(CoordinatorError, match="PublishMetadata failed with REJECTED: quota") as info:
        s.call(
            lambda c: c.publish(IDENTITY, WorkerInfo(rank=0), worker_id="w"),
            P2P.methods_by_name["PublishMetadata"],
            [(pb.PublishMetadataResponse(success=False, message="quota"), OK, "")],
        )
    # The RPC itself succeeded; the error still says what kind of failure it is, never "OK".
    assert info.value.code == "REJECTED" and info.value.rpc == "PublishMetadata"


def test_unavailable_is_retried_then_succeeds():
    s = Scripted(retries=2)
    method = P2P.methods_by_name["ListSources"]
    ref = pb.SourceInstanceRef(
        mx_source_id="abcd", worker_id="w", model_name="org/model", worker_rank=0, updated_at=1, source_load=0.5
    )
    refs = s.call(
        lambda c: c.list_sources(IDENTITY, status=SourceStatus.READY, worker_rank=0),
        method,
        [(None, grpc.StatusCode.UNAVAILABLE, "down"), (pb.ListSourcesResponse(instances=[ref]), OK, "")],
    )
    assert [(r.worker_id, r.source_load, r.training_step) for r in refs] == [("w", 0.5, None)]
    assert len(s.requests) == 2 and s.requests[1].status_filter == SourceStatus.READY
    assert s.requests[1].worker_rank_filter == 0


def test_unavailable_after_every_retry_is_coordinator_unavailable():
    s = Scripted(retries=1)
    with pytest.raises(CoordinatorUnavailable, match="after 2 attempts") as err:
        s.call(
            lambda c: c.health_check(),
            HEALTH.methods_by_name["Check"],
            [(None, grpc.StatusCode.UNAVAILABLE, "down")] * 2,
        )
    assert err.value.rpc == "Check" and err.value.address == "test:1"


def test_other_codes_are_not_retried_and_keep_their_details():
    s = Scripted(retries=3)
    with pytest.raises(CoordinatorError) as err:
        s.call(
            lambda c: c.get_metadata("abcd", "w"),
            P2P.methods_by_name["GetMetadata"],
            [(None, grpc.StatusCode.INVALID_ARGUMENT, "worker_id: must not be empty")],
        )
    assert not isinstance(err.value, CoordinatorUnavailable)
    assert (err.value.code, err.value.details) == ("INVALID_ARGUMENT", "worker_id: must not be empty")
    assert len(s.requests) == 1


def test_get_metadata_reads_the_record_and_a_miss_is_none():
    s = Scripted()
    method = P2P.methods_by_name["GetMetadata"]
    worker = pb.WorkerMetadata(
        worker_rank=3,
        status=pb.SOURCE_STATUS_READY,
        transfer_engine_session_id="h:1",
        tensor_source=pb.TensorSourceMetadata(tensors=[pb.TensorDescriptor(name="a", size=8)]),
    )
    found = pb.GetMetadataResponse(
        found=True,
        worker=worker,
        mx_source_id="abcd",
        worker_id="w",
        identity=pb.SourceIdentity(
            model_name="org/model", tensor_parallel_size=1, pipeline_parallel_size=1, expert_parallel_size=1
        ),
    )
    record = s.call(lambda c: c.get_metadata("abcd", "w"), method, [(found, OK, "")])
    assert (record.rank, record.status, record.transport) == (3, SourceStatus.READY, "transfer_engine")
    assert [t.name for t in record.tensors] == ["a"] and record.identity.model_name == "org/model"
    assert (
        s.call(lambda c: c.get_metadata("abcd", "gone"), method, [(pb.GetMetadataResponse(found=False), OK, "")])
        is None
    )


def test_a_refused_heartbeat_returns_false():
    s = Scripted()
    ok = s.call(
        lambda c: c.update_status("abcd", "w", 0, SourceStatus.READY, source_load=2.0),
        P2P.methods_by_name["UpdateStatus"],
        [(pb.UpdateStatusResponse(success=False, message="unknown worker"), OK, "")],
    )
    assert ok is False and s.requests[0].source_load == 2.0 and s.requests[0].status == SourceStatus.READY
