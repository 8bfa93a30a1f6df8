"""Bad input on every service over real gRPC: fuzzed messages (small runs; `peerload chaos` sends
10,000 per service), receive limits, per-source limits. No server breaks, no stored record changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import torch

from peerload.chaos.fuzz import (
    ALLOWED_CODES,
    WORKER_ALLOWED_CODES,
    fuzz_coordinator,
    fuzz_leases,
    fuzz_manifests,
    fuzz_seed,
    fuzz_worker,
)
from peerload.client import CoordinatorClient, TensorInfo, WorkerInfo
from peerload.errors import CoordinatorError
from peerload.identity import SourceIdentity
from peerload.limits import COORDINATOR_MAX_MESSAGE_BYTES, SEED_MAX_REQUEST_BYTES
from peerload.seed.publisher import publish
from peerload.settings import Settings

MESSAGES = 300
IDENTITY = SourceIdentity(model_name="test/bad-input", dtype="float32")


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest, coordinator_factory: Callable[..., Any]) -> Callable[..., Any]:
    """make(**settings) -> running coordinator on the parametrised store; GC outlasts the test."""
    return lambda **kw: coordinator_factory(request.param, gc_timeout_s=600, heartbeat_timeout_s=300, **kw)


@pytest.fixture
def seed(coordinator: Any):
    pub = publish(
        {"w": torch.arange(1000, dtype=torch.float32)},
        IDENTITY,
        settings=Settings.load(env={}, coordinator=coordinator.address),
    )
    yield pub
    pub.close()


def test_fuzzed_requests_never_break_the_coordinator(make):
    server = make()
    report = fuzz_coordinator(server.address, MESSAGES, seed=1)
    assert report.ok, report.unexpected
    assert report.messages == MESSAGES
    assert set(report.codes) <= ALLOWED_CODES and report.codes.get("INVALID_ARGUMENT") and report.codes.get("OK")


def test_fuzzed_requests_never_break_a_seed(seed):
    report = fuzz_seed(seed._server.endpoint, seed.worker_id, MESSAGES, seed=2)
    assert report.ok, report.unexpected
    assert report.messages == MESSAGES and report.codes.get("INVALID_ARGUMENT") and report.codes.get("NOT_FOUND")


def test_fuzzed_lease_requests_stay_under_the_cap_and_leave_no_lease_open(seed):
    """Fuzzing takes real leases (the real worker id is drawn often) but never more than the cap;
    afterwards a real reader gets a lease and the seed's table is empty again."""
    cap = seed.leases.max_readers
    report = fuzz_leases(seed._server.endpoint, seed.worker_id, MESSAGES, seed=4, max_readers=cap,
                         active=seed.leases.active)  # fmt: skip
    assert report.ok, report.unexpected
    assert set(report.codes) <= ALLOWED_CODES and report.codes.get("OK") and report.codes.get("INVALID_ARGUMENT")
    assert report.codes.get("RESOURCE_EXHAUSTED") or report.codes.get("NOT_FOUND"), report.codes
    assert seed.leases.active() == 0


def test_fuzzed_worker_service_requests_never_break_a_seed(seed):
    report = fuzz_worker(seed._server.endpoint, seed.source_id, seed.worker_id, MESSAGES, seed=5,
                         max_readers=seed.leases.max_readers, active=seed.leases.active)  # fmt: skip
    assert report.ok, report.unexpected
    assert set(report.codes) <= WORKER_ALLOWED_CODES
    # real leases granted, requests for other sources refused, artifacts not served, garbage refused
    for code in ("OK", "FAILED_PRECONDITION", "UNIMPLEMENTED", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
        assert report.codes.get(code), report.codes  # RESOURCE_EXHAUSTED: fuzzing reached the reader cap
    assert seed.leases.active() == 0


def test_fuzzed_manifests_are_accepted_or_refused_naming_the_field():
    report = fuzz_manifests(MESSAGES, seed=3)
    assert report.ok, report.unexpected
    refused = {k for k in report.codes if k.startswith("InvalidManifest:")}
    assert len(refused) >= 4, report.codes  # several distinct fields named
    # part plans whose checksums do not fit are among them (the fuzzer draws part fields too)
    assert any("part_" in k for k in refused), report.codes


def raw_call(address: str, path: str, data: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", len(data) + 1024)]) as channel:
        try:
            channel.unary_unary(path)(data, timeout=30)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def test_oversized_requests_get_resource_exhausted_on_every_server(coordinator, seed):
    """The default receive limits of the coordinator and of a seed, one byte over each."""
    with CoordinatorClient(coordinator.address) as client:
        before = client.get_metadata(seed.source_id, seed.worker_id)
    big = b"\x00" * (COORDINATOR_MAX_MESSAGE_BYTES + 1)
    code = raw_call(coordinator.address, "/model_express.p2p.P2pService/PublishMetadata", big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code = raw_call(
        seed._server.endpoint, "/peerload.v1.SeedService/GetManifest", b"\x00" * (SEED_MAX_REQUEST_BYTES + 1)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with CoordinatorClient(coordinator.address) as client:
        assert client.get_metadata(seed.source_id, seed.worker_id) == before
        assert client.health_check()


def test_per_source_limits_name_the_setting_and_change_nothing(make):
    server = make(max_workers_per_source=3, max_tensors_per_worker=4)
    tensors = [TensorInfo(f"t{i}", 0x1000 * (i + 1), 16, 0, "torch.uint8") for i in range(4)]
    with CoordinatorClient(server.address, timeout_s=5) as client:
        for i in range(3):
            client.publish(IDENTITY, WorkerInfo(rank=0, tensors=tensors), f"w{i}")
        before = {r.worker_id: r for r in client.list_sources()}
        with pytest.raises(CoordinatorError) as info:
            client.publish(IDENTITY, WorkerInfo(rank=0), "w3")
        assert info.value.code == "RESOURCE_EXHAUSTED" and "max_workers_per_source" in info.value.details
        with pytest.raises(CoordinatorError) as info:
            client.publish(IDENTITY, WorkerInfo(rank=0, tensors=[*tensors, tensors[0]]), "w0")
        assert info.value.code == "INVALID_ARGUMENT"
        assert "max_tensors_per_worker" in info.value.details and "tensors: has 5" in info.value.details
        assert {r.worker_id: r for r in client.list_sources()} == before
        client.publish(IDENTITY, WorkerInfo(rank=0, tensors=tensors[:1]), "w0")  # re-publishing always fits
        record = client.get_metadata(before["w0"].mx_source_id, "w0")
        assert record is not None and len(record.tensors) == 1
