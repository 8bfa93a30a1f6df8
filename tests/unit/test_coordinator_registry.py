"""Registry rules over the in-memory store, with a hand-driven clock (no gRPC)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._grpc_edge import status_code_for
from peerload.coordinator.registry import ReapResult, Registry
from peerload.coordinator.store import MemoryStore, WorkerEntry
from peerload.errors import InvalidRequest

HB, GC = 10.0, 60.0


class Clock:
    """Settable unix-seconds clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> Registry:
    return Registry(MemoryStore(), heartbeat_timeout_s=HB, gc_timeout_s=GC, clock=clock)


def identity(model: str = "Qwen/Qwen3-0.6B", **fields) -> pb.SourceIdentity:
    return pb.SourceIdentity(
        model_name=model,
        mx_version="1",
        tensor_parallel_size=2,
        pipeline_parallel_size=1,
        expert_parallel_size=1,
        **fields,
    )


def publish(registry: Registry, worker_id: str, rank: int = 0, ident: pb.SourceIdentity | None = None, **worker) -> str:
    request = pb.PublishMetadataRequest(
        identity=ident or identity(), worker_id=worker_id, worker=pb.WorkerMetadata(worker_rank=rank, **worker)
    )
    return registry.publish(request)


def heartbeat(
    registry: Registry, sid: str, worker_id: str, rank: int = 0, status: int = pb.SOURCE_STATUS_READY, **extra
) -> pb.UpdateStatusResponse:
    return registry.update_status(
        pb.UpdateStatusRequest(mx_source_id=sid, worker_id=worker_id, worker_rank=rank, status=status, **extra)
    )


def status_of(registry: Registry, sid: str, worker_id: str) -> int:
    response = registry.get_metadata(pb.GetMetadataRequest(mx_source_id=sid, worker_id=worker_id))
    assert response.found
    return response.worker.status


def listed(registry: Registry, **filters) -> list[str]:
    return [r.worker_id for r in registry.list_sources(pb.ListSourcesRequest(**filters))]


def test_publish_stores_initializing_and_heartbeat_makes_ready(registry: Registry) -> None:
    sid = publish(registry, "w0", status=pb.SOURCE_STATUS_READY, nixl_metadata=b"x")
    assert status_of(registry, sid, "w0") == pb.SOURCE_STATUS_INITIALIZING
    assert heartbeat(registry, sid, "w0").success
    assert status_of(registry, sid, "w0") == pb.SOURCE_STATUS_READY


def test_republish_replaces_the_worker(registry: Registry) -> None:
    sid = publish(registry, "w0", agent_name="old")
    heartbeat(registry, sid, "w0")
    publish(registry, "w0", agent_name="new")
    response = registry.get_metadata(pb.GetMetadataRequest(mx_source_id=sid, worker_id="w0"))
    assert response.worker.agent_name == "new"
    assert response.worker.status == pb.SOURCE_STATUS_INITIALIZING
    assert listed(registry) == ["w0"]


def test_two_workers_of_same_identity_and_rank_are_both_listed(registry: Registry, clock: Clock) -> None:
    sid = publish(registry, "a")
    clock.now += 1
    publish(registry, "b")
    heartbeat(registry, sid, "a")
    assert listed(registry, identity=identity(), worker_rank_filter=0, status_filter=pb.SOURCE_STATUS_READY) == ["a"]
    heartbeat(registry, sid, "b")
    assert sorted(listed(registry, worker_rank_filter=0, status_filter=pb.SOURCE_STATUS_READY)) == ["a", "b"]


def test_ready_expires_then_reaper_marks_stale_then_deletes(registry: Registry, clock: Clock) -> None:
    sid = publish(registry, "w0")
    heartbeat(registry, sid, "w0")
    clock.now += HB + 0.5
    # Not READY to readers at once, before any reaper pass.
    assert listed(registry, status_filter=pb.SOURCE_STATUS_READY) == []
    assert status_of(registry, sid, "w0") == pb.SOURCE_STATUS_STALE
    result = registry.reap()
    assert (result.marked_stale, result.deleted) == (1, 0)
    assert registry.store.get(sid, "w0").status == pb.SOURCE_STATUS_STALE
    assert listed(registry, status_filter=pb.SOURCE_STATUS_STALE) == ["w0"]
    clock.now += GC
    assert registry.reap().deleted == 1
    assert not registry.get_metadata(pb.GetMetadataRequest(mx_source_id=sid, worker_id="w0")).found
    # Heartbeat of a deleted worker: success=false so the seed publishes again.
    response = heartbeat(registry, sid, "w0")
    assert not response.success and "publish" in response.message


def test_heartbeat_revives_a_stale_worker(registry: Registry, clock: Clock) -> None:
    sid = publish(registry, "w0")
    heartbeat(registry, sid, "w0")
    clock.now += HB + 1
    registry.reap()
    assert heartbeat(registry, sid, "w0").success
    assert status_of(registry, sid, "w0") == pb.SOURCE_STATUS_READY
    assert registry.reap().marked_stale == 0


def test_reaper_keeps_fresh_workers_and_deletes_silent_initializing(registry: Registry, clock: Clock) -> None:
    sid = publish(registry, "ready")
    publish(registry, "init")
    clock.now += GC + 1
    heartbeat(registry, sid, "ready")
    assert registry.reap().deleted == 1
    assert listed(registry) == ["ready"]


def test_list_filters_and_limit(registry: Registry, clock: Clock) -> None:
    other = identity("meta-llama/Llama-3.1-8B")
    s1 = publish(registry, "q0", 0)
    clock.now += 1
    publish(registry, "q1", 1)
    clock.now += 1
    s2 = publish(registry, "l0", 0, ident=other)
    assert s1 != s2
    assert listed(registry) == ["l0", "q1", "q0"]  # newest first
    assert listed(registry, identity=identity()) == ["q1", "q0"]
    assert listed(registry, identity=identity("QWEN/qwen3-0.6b")) == ["q1", "q0"]  # case-insensitive id
    assert listed(registry, model_name_filter="meta-llama/llama-3.1-8b") == ["l0"]
    assert listed(registry, worker_rank_filter=1) == ["q1"]
    assert listed(registry, worker_rank_filter=0, identity=identity()) == ["q0"]
    assert listed(registry, min_updated_at=int((clock.now - 1) * 1000)) == ["l0", "q1"]
    assert listed(registry, limit=1) == ["l0"]
    assert listed(registry, limit=0) == ["l0", "q1", "q0"]
    assert listed(registry, status_filter=pb.SOURCE_STATUS_INITIALIZING) == ["l0", "q1", "q0"]
    assert listed(registry, status_filter=pb.SOURCE_STATUS_READY) == []
    assert listed(registry, identity=identity(dtype="fp8")) == []
    assert listed(registry, min_training_step=1) == []


def test_list_carries_load_topology_and_accelerator(registry: Registry) -> None:
    sid = publish(registry, "w0", accelerator="cuda", topology={"node": "n1"})
    heartbeat(registry, sid, "w0", source_load=0.5)
    (ref,) = registry.list_sources(pb.ListSourcesRequest())
    assert (ref.accelerator, dict(ref.topology), ref.source_load) == ("cuda", {"node": "n1"}, 0.5)
    assert ref.model_name == "Qwen/Qwen3-0.6B" and ref.mx_source_id == sid
    heartbeat(registry, sid, "w0")
    (ref,) = registry.list_sources(pb.ListSourcesRequest())
    assert not ref.HasField("source_load")


def test_get_metadata_unknown_is_not_found(registry: Registry) -> None:
    response = registry.get_metadata(pb.GetMetadataRequest(mx_source_id="0" * 16, worker_id="nobody"))
    assert not response.found


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda r: r.publish(pb.PublishMetadataRequest(worker_id="w", worker=pb.WorkerMetadata())), "identity"),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(identity=identity(""), worker_id="w", worker=pb.WorkerMetadata())
            ),
            "identity.model_name",
        ),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(identity=identity("  "), worker_id="w", worker=pb.WorkerMetadata())
            ),
            "identity.model_name",
        ),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(identity=identity(), worker_id="", worker=pb.WorkerMetadata())
            ),
            "worker_id",
        ),
        (lambda r: r.publish(pb.PublishMetadataRequest(identity=identity(), worker_id="w")), "worker"),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(
                    identity=identity(backend_framework=7), worker_id="w", worker=pb.WorkerMetadata()
                )
            ),
            "identity.backend_framework",
        ),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(
                    identity=identity(mx_source_type=42), worker_id="w", worker=pb.WorkerMetadata()
                )
            ),
            "identity.mx_source_type",
        ),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(identity=identity(), worker_id="w", worker=pb.WorkerMetadata(status=9))
            ),
            "worker.status",
        ),
        (
            lambda r: r.publish(
                pb.PublishMetadataRequest(identity=identity(), worker_id="w" * 600, worker=pb.WorkerMetadata())
            ),
            "worker_id",
        ),
        (lambda r: r.list_sources(pb.ListSourcesRequest(status_filter=5)), "status_filter"),
        (lambda r: r.list_sources(pb.ListSourcesRequest(identity=pb.SourceIdentity())), "identity.model_name"),
        (lambda r: r.get_metadata(pb.GetMetadataRequest(mx_source_id="", worker_id="w")), "mx_source_id"),
        (lambda r: r.get_metadata(pb.GetMetadataRequest(mx_source_id="abc", worker_id="")), "worker_id"),
        (lambda r: r.update_status(pb.UpdateStatusRequest(mx_source_id="a", worker_id="w", status=0)), "status"),
        (lambda r: r.update_status(pb.UpdateStatusRequest(mx_source_id="a", worker_id="w", status=12)), "status"),
        (
            lambda r: r.update_status(
                pb.UpdateStatusRequest(mx_source_id="a", worker_id="w", status=2, source_load=float("nan"))
            ),
            "source_load",
        ),
        (lambda r: r.update_status(pb.UpdateStatusRequest(mx_source_id="a", worker_id="", status=2)), "worker_id"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(registry: Registry, call, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        call(registry)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert status_code_for(info.value).name == "INVALID_ARGUMENT"
    assert registry.store.entries() == []


def test_heartbeat_with_wrong_rank_is_rejected(registry: Registry) -> None:
    sid = publish(registry, "w0", rank=3)
    with pytest.raises(InvalidRequest) as info:
        heartbeat(registry, sid, "w0", rank=1)
    assert info.value.field == "worker_rank" and "3" in str(info.value)
    assert status_of(registry, sid, "w0") == pb.SOURCE_STATUS_INITIALIZING


# -- several replicas over one store: their reapers race heartbeats, re-publishes and each other ----


class Interleaved(MemoryStore):
    """A store that runs `between()` once, right after a reaper pass read its entries."""

    def __init__(self) -> None:
        super().__init__()
        self.between: Callable[[], None] | None = None

    def entries(self, mx_source_id: str | None = None, *, payload: bool = True) -> list[WorkerEntry]:
        snapshot = super().entries(mx_source_id, payload=payload)
        if mx_source_id is None and self.between is not None:
            hook, self.between = self.between, None
            hook()
        return snapshot


def replicas(skew_s: float) -> tuple[Registry, Registry, Interleaved, Clock]:
    """Replica A's clock runs `skew_s` ahead of replica B's; both use one store."""
    store, clock = Interleaved(), Clock()
    ahead = Clock()
    ahead.now = clock.now + skew_s
    a = Registry(store, heartbeat_timeout_s=HB, gc_timeout_s=GC, clock=ahead)
    b = Registry(store, heartbeat_timeout_s=HB, gc_timeout_s=GC, clock=clock)
    return a, b, store, clock


def test_a_heartbeat_between_a_reapers_read_and_delete_wins_even_in_the_same_millisecond() -> None:
    # A's clock is past the GC timeout; B's heartbeat lands in the very millisecond of the record
    # A read, so only the revision tells the two records apart.
    a, b, store, _ = replicas(skew_s=GC + 1)
    sid = publish(b, "w0")
    store.between = lambda: heartbeat(b, sid, "w0")
    assert a.reap() == ReapResult(marked_stale=0, deleted=0)
    assert status_of(b, sid, "w0") == pb.SOURCE_STATUS_READY


def test_a_republish_between_a_reapers_read_and_mark_stale_wins() -> None:
    a, b, store, _ = replicas(skew_s=HB + 1)
    sid = publish(b, "w0")
    heartbeat(b, sid, "w0")
    store.between = lambda: publish(b, "w0")
    assert a.reap().marked_stale == 0
    assert status_of(b, sid, "w0") == pb.SOURCE_STATUS_INITIALIZING


def test_two_reapers_racing_delete_once_and_write_nothing_back() -> None:
    a, b, store, clock = replicas(skew_s=0)
    sid = publish(b, "w0")
    clock.now += GC + 1
    a._clock = clock  # both replicas now agree the worker is due
    results: list[ReapResult] = []
    store.between = lambda: results.append(b.reap())  # B reaps while A holds its snapshot
    results.append(a.reap())
    assert sum(r.deleted for r in results) == 1
    assert store.entries() == [] and store.get(sid, "w0") is None


def test_two_reapers_racing_mark_stale_once() -> None:
    a, b, store, clock = replicas(skew_s=0)
    sid = publish(b, "w0")
    heartbeat(b, sid, "w0")
    clock.now += HB + 1
    a._clock = clock
    results: list[ReapResult] = []
    store.between = lambda: results.append(b.reap())
    results.append(a.reap())
    assert sum(r.marked_stale for r in results) == 1
    assert store.get(sid, "w0").status == pb.SOURCE_STATUS_STALE


def test_every_write_gives_a_new_revision() -> None:
    store = MemoryStore()
    registry = Registry(store, heartbeat_timeout_s=HB, gc_timeout_s=GC, clock=Clock())
    sid = publish(registry, "w0")
    seen = [store.get(sid, "w0").revision]
    heartbeat(registry, sid, "w0")
    seen.append(store.get(sid, "w0").revision)
    publish(registry, "w0")
    seen.append(store.get(sid, "w0").revision)
    assert store.compare_and_set_status(store.get(sid, "w0"), pb.SOURCE_STATUS_STALE)
    seen.append(store.get(sid, "w0").revision)
    assert seen == sorted(set(seen)), seen
    stale = store.get(sid, "w0")
    heartbeat(registry, sid, "w0")
    assert not store.compare_and_delete(stale) and store.get(sid, "w0") is not None
