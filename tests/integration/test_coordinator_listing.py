"""ListSources of one identity over the Redis store, as two coordinators over one real redis-server
see it: every write through one replica is in the other's very next listing (the store keeps no
reply cached), the references built from the listing encoded at publish are those built from the
published record, and records of a peerload that kept no listing or beats index are listed and reaped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from manual_clock import ManualClock, wait_until

from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.identity import SourceIdentity

pytestmark = pytest.mark.redis

IDENTITY = SourceIdentity(model_name="Test/Listing-Model", dtype="bfloat16")
OTHER = SourceIdentity(model_name="test/other-model", dtype="bfloat16")
HB_S, GC_S = 10.0, 60.0
HANG_S = 60.0  # bound on waiting for a reaper on a loaded machine; never reached when things work


def ready(client: CoordinatorClient, identity: SourceIdentity = IDENTITY) -> dict[str, Any]:
    return {r.worker_id: r for r in client.list_sources(identity, status=SourceStatus.READY)}


def worker(node: str, accelerator: str = "cpu") -> WorkerInfo:
    return WorkerInfo(rank=0, nixl_metadata=b"meta-" + node.encode(), accelerator=accelerator, topology={"node": node})


def test_a_write_through_one_replica_is_in_the_next_listing_of_the_other(
    coordinator_factory: Callable[..., Any],
) -> None:
    clock = ManualClock()
    settings = {"heartbeat_timeout_s": HB_S, "gc_timeout_s": GC_S, "clock": clock, "reap_interval_s": 0.05}
    a, b = (coordinator_factory("redis", **settings) for _ in range(2))
    with CoordinatorClient(a.address, retries=0) as via_a, CoordinatorClient(b.address, retries=0) as via_b:
        sid = via_a.publish(IDENTITY, worker("n1"), "w0")
        via_a.publish(OTHER, worker("n9"), "w9")
        (listed,) = via_b.list_sources(IDENTITY)  # INITIALIZING, and only this identity's worker
        assert (listed.worker_id, listed.model_name, listed.topology) == ("w0", "Test/Listing-Model", {"node": "n1"})
        assert ready(via_b) == {}

        clock.advance(0.01)
        assert via_a.update_status(sid, "w0", 0, SourceStatus.READY, source_load=0.5)
        (ref,) = ready(via_b).values()
        record = via_a.get_metadata(sid, "w0")
        assert (ref.updated_at_ms, ref.source_load, ref.accelerator) == (record.updated_at_ms, 0.5, "cpu")
        # The listing of one identity (from the encoded listing) is the listing of all (from the record).
        assert via_b.list_sources(model_name=IDENTITY.model_name) == [ref]

        clock.advance(0.01)
        assert via_b.update_status(sid, "w0", 0, SourceStatus.READY, source_load=0.75)
        assert ready(via_a)["w0"].source_load == 0.75
        assert ready(via_a)["w0"].updated_at_ms > ref.updated_at_ms

        # A re-publish through A (new topology and accelerator) is INITIALIZING again on B at once.
        via_a.publish(IDENTITY, worker("n2", accelerator="cuda"), "w0")
        assert ready(via_b) == {}
        (listed,) = via_b.list_sources(IDENTITY)
        assert (listed.topology, listed.accelerator, listed.source_load) == ({"node": "n2"}, "cuda", None)
        assert via_a.update_status(sid, "w0", 0, SourceStatus.READY)
        assert ready(via_b)["w0"].topology == {"node": "n2"}

        # STALE through A: gone from B's READY list at once.
        assert via_a.update_status(sid, "w0", 0, SourceStatus.STALE)
        assert ready(via_b) == {}
        assert [r.worker_id for r in via_b.list_sources(IDENTITY, status=SourceStatus.STALE)] == ["w0"]

        # READY again, then silent past the heartbeat timeout: no READY listing anywhere, before
        # and after the reapers write STALE; then past the GC timeout: deleted, listed nowhere.
        assert via_b.update_status(sid, "w0", 0, SourceStatus.READY)
        assert set(ready(via_a)) == {"w0"}
        clock.advance(HB_S + 0.001)
        assert ready(via_a) == {} and ready(via_b) == {}
        wait_until(lambda: a.store.get(sid, "w0").status == SourceStatus.STALE, "a reaper wrote STALE", HANG_S)
        assert ready(via_b) == {}
        clock.advance(GC_S)
        wait_until(lambda: via_b.get_metadata(sid, "w0") is None, "a reaper deleted the worker", HANG_S)
        assert via_a.list_sources(IDENTITY) == [] and via_b.list_sources(IDENTITY) == []


def test_records_without_listing_or_beats_index_are_listed_and_reaped(
    coordinator_factory: Callable[..., Any], redis_url: str
) -> None:
    import redis

    clock = ManualClock()
    settings = {"heartbeat_timeout_s": HB_S, "gc_timeout_s": GC_S, "clock": clock, "reap_interval_s": 0.05}
    a = coordinator_factory("redis", **settings)
    with CoordinatorClient(a.address, retries=0) as client:
        sids = [client.publish(IDENTITY, worker(f"n{i}"), f"w{i}") for i in range(3)]
        for i, sid in enumerate(sids):
            assert client.update_status(sid, f"w{i}", 0, SourceStatus.READY, source_load=0.25 * i)
        before = client.list_sources(IDENTITY, status=SourceStatus.READY)
    # What a peerload that kept neither wrote: no listing field in the records, no beats index.
    r = redis.Redis.from_url(redis_url)
    try:
        for i, sid in enumerate(sids):
            assert r.hdel(f"peerload:w:{sid}:w{i}", "listing") == 1
        assert r.delete("peerload:beats") == 1
        b = coordinator_factory("redis", **settings)  # its first reaper pass reads every record
        with CoordinatorClient(b.address, retries=0) as client:
            assert client.list_sources(IDENTITY, status=SourceStatus.READY) == before  # built from the payloads
            wait_until(lambda: r.zcard("peerload:beats") == 3, "the first reaper pass to index the records", HANG_S)
            a.stop()  # b alone reaps now, from its index
            clock.advance(HB_S + GC_S + 0.001)
            wait_until(lambda: client.list_sources(IDENTITY) == [], "b's reaper to delete the records", HANG_S)
        assert sorted(k.decode() for k in r.scan_iter("peerload:*")) == ["peerload:rev"]
    finally:
        r.close()
