"""One worker id, two processes: the newest publish wins, both sides are told (registry rules, no gRPC).

Runs the rules over the memory store and over a real redis-server (the Lua heartbeat compares the
publishing process' instance id too).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._grpc_edge import status_code_for
from peerload.coordinator.registry import Registry
from peerload.coordinator.store import MemoryStore, Store
from peerload.errors import WorkerSuperseded
from peerload.wire import PEERLOAD_MANIFEST_KEY, REPLACED_PREFIX

HB, GC = 10.0, 60.0
READY = pb.SOURCE_STATUS_READY


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    from peerload.coordinator.store.redis import RedisStore

    redis_store = RedisStore(request.getfixturevalue("redis_url"))
    yield redis_store
    redis_store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(store: Store, clock: Clock) -> Registry:
    return Registry(store, heartbeat_timeout_s=HB, gc_timeout_s=GC, clock=clock)


def publish(registry: Registry, instance: str, endpoint: str, worker_id: str = "seed-a") -> tuple[str, str]:
    request = pb.PublishMetadataRequest(
        identity=pb.SourceIdentity(model_name="org/model", mx_version="1"),
        worker_id=worker_id,
        worker=pb.WorkerMetadata(worker_rank=0, topology={PEERLOAD_MANIFEST_KEY: endpoint}),
    )
    done = registry.publish_as(request, instance)
    return done.source_id, done.replaced


def beat(registry: Registry, sid: str, instance: str, worker_id: str = "seed-a") -> bool:
    request = pb.UpdateStatusRequest(mx_source_id=sid, worker_id=worker_id, worker_rank=0, status=READY)
    return registry.update_status(request, instance).success


def endpoint_of(registry: Registry, sid: str) -> str:
    reply = registry.get_metadata(pb.GetMetadataRequest(mx_source_id=sid, worker_id="seed-a"))
    return reply.worker.topology[PEERLOAD_MANIFEST_KEY]


def test_a_second_live_process_replaces_the_first_and_both_are_told(registry: Registry, clock: Clock) -> None:
    sid, replaced = publish(registry, "process-1", "10.0.0.1:5000")
    assert replaced == ""
    assert beat(registry, sid, "process-1")
    clock.now += 1.5
    _, replaced = publish(registry, "process-2", "10.0.0.2:5000")
    # The newer one hears whose live record it took, where that process serves, and how fresh it was.
    assert "the live record of worker 'seed-a' (READY, last heartbeat 1.5s ago, at 10.0.0.1:5000)" in replaced
    assert "newest wins" in replaced and "give every process its own worker id" in replaced
    # The older one is refused at its next heartbeat, with a code of its own, naming the new holder.
    with pytest.raises(WorkerSuperseded, match=r"published since by another process \(at 10.0.0.2:5000") as info:
        beat(registry, sid, "process-1")
    assert status_code_for(info.value).name == "ALREADY_EXISTS"
    assert beat(registry, sid, "process-2")
    assert endpoint_of(registry, sid) == "10.0.0.2:5000", "the refused beat must not touch the newer record"
    # Nor can the older one's goodbye (STALE on close) take the newer one off the list.
    with pytest.raises(WorkerSuperseded):
        registry.update_status(
            pb.UpdateStatusRequest(mx_source_id=sid, worker_id="seed-a", worker_rank=0, status=pb.SOURCE_STATUS_STALE),
            "process-1",
        )
    [ref] = registry.list_sources(pb.ListSourcesRequest(status_filter=READY))
    assert ref.worker_id == "seed-a" and ref.topology[PEERLOAD_MANIFEST_KEY] == "10.0.0.2:5000"


def test_a_restarted_process_takes_its_id_back_without_a_warning(registry: Registry, clock: Clock) -> None:
    sid, _ = publish(registry, "before-restart", "10.0.0.1:5000")
    beat(registry, sid, "before-restart")
    clock.now += HB + 1  # it died: no heartbeat for longer than the timeout
    assert publish(registry, "after-restart", "10.0.0.1:5001") == (sid, "")
    assert beat(registry, sid, "after-restart")


def test_the_same_process_publishing_again_is_no_clash(registry: Registry, clock: Clock) -> None:
    sid, _ = publish(registry, "process-1", "10.0.0.1:5000")
    beat(registry, sid, "process-1")
    assert publish(registry, "process-1", "10.0.0.1:5000") == (sid, "")
    assert beat(registry, sid, "process-1")


def test_clients_that_send_no_instance_keep_the_old_rule(registry: Registry) -> None:
    """The official client sends no instance: its re-publish is no clash, its beats are accepted."""
    sid, _ = publish(registry, "", "10.0.0.1:5000")
    assert beat(registry, sid, "")
    assert publish(registry, "", "10.0.0.2:5000") == (sid, "")
    assert beat(registry, sid, "")
    assert beat(registry, sid, "process-9"), "a record of unknown origin is not refused to anyone"


def test_the_publish_reply_says_replaced_only_when_it_did(registry: Registry) -> None:
    request = pb.PublishMetadataRequest(
        identity=pb.SourceIdentity(model_name="org/model"), worker_id="w", worker=pb.WorkerMetadata()
    )
    first = registry.publish_as(request, "p1")
    assert first.message == "published"
    beat(registry, first.source_id, "p1", worker_id="w")
    assert registry.publish_as(request, "p2").message.startswith(REPLACED_PREFIX)
