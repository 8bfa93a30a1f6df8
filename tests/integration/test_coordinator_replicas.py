"""Several `peerload serve --store redis` processes over one real redis-server: one registry, and
reapers that race heartbeats, re-publishes and each other without losing or resurrecting a record."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.identity import SourceIdentity

pytestmark = pytest.mark.redis

IDENTITY = SourceIdentity(model_name="test/replicas", dtype="bfloat16")
# READY never expires within a test; anything else is deleted 50 ms after its last write, and each
# replica reaps every 50 ms: three reapers race over every record that is not READY.
REAPING = ("--heartbeat-timeout", "3600", "--gc-timeout", "0.05")
WAIT_S = 60  # bound on waiting for a reaper (a loaded machine); never reached when things work


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def missing(client: CoordinatorClient, sid: str, worker_id: str) -> bool:
    return client.get_metadata(sid, worker_id) is None


def deleted_lines(servers: list[Any]) -> int:
    return sum(s.log.read_text(errors="replace").count("deleted worker") for s in servers)


def test_reapers_of_three_replicas_race_heartbeats_and_each_other(
    redis_url: str, serve_process: Callable[..., Any]
) -> None:
    import redis

    servers = [serve_process("--store", "redis", "--redis-url", redis_url, *REAPING) for _ in range(3)]
    addresses = [s.address for s in servers]
    deletions = [0]  # records the reapers removed, as the clients saw them go
    lock = threading.Lock()
    failures: list[str] = []

    def publish(via: CoordinatorClient, worker_id: str) -> str:
        return via.publish(IDENTITY, WorkerInfo(rank=0, nixl_metadata=b"meta"), worker_id)

    def gone(via: CoordinatorClient, sid: str, worker_id: str) -> None:
        """The reapers deleted the worker: count it once, and check nothing wrote it back."""
        with lock:
            deletions[0] += 1
        if via.get_metadata(sid, worker_id) is not None:
            failures.append(f"{worker_id}: resurrected after its delete")

    def drive(thread: int, rounds: int) -> None:
        rng = random.Random(thread)
        clients = [CoordinatorClient(a, timeout_s=10, retries=2) for a in addresses]
        try:
            for n in range(rounds):
                worker_id = f"w{thread}-{n % 2}"
                via = rng.sample(clients, 3)  # publish, heartbeat and read through different replicas
                sid = publish(via[0], worker_id)
                # Around the 50 ms GC timeout: the READY beat races the reapers' delete.
                time.sleep(rng.uniform(0, 0.1))
                if not via[1].update_status(sid, worker_id, 0, SourceStatus.READY):
                    gone(via[2], sid, worker_id)  # the reapers won, and the refused beat wrote nothing
                    continue
                record = via[2].get_metadata(sid, worker_id)
                if record is None or record.status is not SourceStatus.READY:
                    failures.append(f"{worker_id}: READY beat accepted, then {record and record.status}")
                via[1].update_status(sid, worker_id, 0, SourceStatus.STALE)  # now the reapers may delete it
                wait_for(partial(missing, via[2], sid, worker_id), f"{worker_id} to be reaped")
                if via[0].update_status(sid, worker_id, 0, SourceStatus.READY):
                    failures.append(f"{worker_id}: a beat after the delete was accepted")
                gone(via[2], sid, worker_id)
            for i in range(2):  # leave each worker READY
                worker_id = f"w{thread}-{i}"
                sid = publish(clients[0], worker_id)
                while not clients[1].update_status(sid, worker_id, 0, SourceStatus.READY):
                    gone(clients[2], sid, worker_id)
                    sid = publish(clients[0], worker_id)
        except Exception as exc:  # handed to the test thread
            failures.append(f"thread {thread}: {exc!r}")
        finally:
            for c in clients:
                c.close()

    threads = [threading.Thread(target=drive, args=(t, 16)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert deletions[0] >= 4 * 16, "every round ends with a reaper's delete"
    expected = {f"w{t}-{i}" for t in range(4) for i in range(2)}
    for address in addresses:
        with CoordinatorClient(address, timeout_s=10) as client:
            assert {r.worker_id for r in client.list_sources(IDENTITY, status=SourceStatus.READY)} == expected
    # Each delete is logged by the one reaper whose conditional delete won: never twice.
    wait_for(lambda: deleted_lines(servers) >= deletions[0], "the reapers' log lines")
    assert deleted_lines(servers) == deletions[0]

    # Every record is whole (no hash re-created by a late conditional write), and the indexes agree.
    r = redis.Redis.from_url(redis_url)
    try:
        hashes = sorted(k.decode() for k in r.scan_iter("peerload:w:*"))
        assert len(hashes) == len(expected)
        for key in hashes:
            assert set(r.hkeys(key)) >= {b"payload", b"worker_rank", b"status", b"updated_at_ms", b"rev"}, key
        members = {m.decode() for m in r.smembers("peerload:workers")}
        assert {f"peerload:w:{m}" for m in members} == set(hashes)
        # All go STALE: the reapers delete every record, and nothing is left behind.
        with CoordinatorClient(addresses[0], timeout_s=10) as client:
            for ref in client.list_sources(IDENTITY):
                assert client.update_status(ref.mx_source_id, ref.worker_id, 0, SourceStatus.STALE)
            wait_for(lambda: client.list_sources(IDENTITY) == [], "the last records to be reaped")
        assert sorted(k.decode() for k in r.scan_iter("peerload:*")) == ["peerload:rev"]
    finally:
        r.close()
    for s in servers:
        assert s.stop() == 0
