"""Seeds through coordinator faults and broken transports: real coordinators (memory and Redis
stores) restarted on the same port, real redis-servers flushed and replaced, real NIXL and
Mooncake endpoints. Seeds and targets-turned-sources run in this process (real agents)."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from peerload._process import free_port
from peerload.chaos.cluster import RedisProcess
from peerload.client import CoordinatorClient, SourceStatus
from peerload.errors import CoordinatorError
from peerload.identity import SourceIdentity
from peerload.loader import load_into
from peerload.seed.heartbeats import HeartbeatCounts
from peerload.seed.publisher import Publisher, publish
from peerload.settings import Settings
from peerload.tensors import collect
from peerload.transport import create_transport
from peerload.transport.base import EndpointInfo, ReadOp

INTERVAL_S = 1.0
# Only a bound on a wait for a state that must come (a hung test fails instead of hanging); no
# assertion here is about time. Beats are counted instead: the seed waits at most one interval
# between beats (the backoff's unit test), so "at the next beat" means "within one interval".
HANG_S = 60.0
IDENTITY = SourceIdentity(model_name="test/faults", dtype="float32")


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(256, 64, generator=g) for i in range(4)}


def settings_for(address: str, **more: Any) -> Settings:
    return Settings.load(
        env={}, coordinator=address, heartbeat_interval_s=INTERVAL_S, heartbeat_timeout_s=4 * INTERVAL_S, **more
    )


def ready_ids(address: str) -> set[str]:
    with CoordinatorClient(address, timeout_s=2, retries=0) as client:
        return {r.worker_id for r in client.list_sources(IDENTITY, status=SourceStatus.READY)}


def reachable(address: str) -> bool:
    try:
        with CoordinatorClient(address, timeout_s=2, retries=0) as client:
            return client.health_check()
    except CoordinatorError:
        return False


def status_of(address: str, pub: Publisher) -> SourceStatus | None:
    with CoordinatorClient(address, timeout_s=2, retries=0) as client:
        record = client.get_metadata(pub.source_id, pub.worker_id)
    return None if record is None else record.status


def wait_beats(pub: Publisher, what: str, predicate: Callable[[HeartbeatCounts], bool]) -> HeartbeatCounts:
    """The publisher's beat counts once `predicate` holds for them."""
    counts = pub.heartbeats.wait_for(predicate, HANG_S)
    assert counts is not None, f"no heartbeat {what} within {HANG_S:g} s: {pub.heartbeats.snapshot()}"
    return counts


def assert_republished_at_next_beat(address: str, pub: Publisher, back: HeartbeatCounts) -> None:
    """`back` was taken as soon as the coordinator (or its store) was back, and the seed had not
    published again before the fault: the first beat that started after `back` (or one already
    under way) published it again; no beat failed on the way (e.g. behind a reconnect backoff)."""
    after = wait_beats(pub, "published again", lambda c: c.republished > 0)
    assert after.republished == 1
    assert after.republished_at <= back.attempts + 1, f"published again only at beat {after.republished_at}: {after}"
    assert pub.worker_id in ready_ids(address)


def assert_status_at_next_beat(address: str, pub: Publisher, before: HeartbeatCounts, status: SourceStatus) -> None:
    """The first beat that started after `before` (or one already under way) reported `status`."""
    after = wait_beats(pub, f"reporting {status.name}", lambda c: c.last_status == status)
    assert after.status_since <= before.attempts + 1, f"{status.name} only from beat {after.status_since}: {after}"
    assert status_of(address, pub) == status


@pytest.fixture
def sources(request: pytest.FixtureRequest) -> Iterator[Callable[..., Publisher]]:
    """start(kind, address) -> a READY Publisher, as a seed ("seed") or a target turned source ("target")."""
    started: list[Any] = []

    def start(kind: str, address: str, **more: Any) -> Publisher:
        settings = settings_for(address, **more)
        if kind == "seed":
            pub = publish(tensors(), IDENTITY, settings=settings)
            started.append(pub)
            return pub
        destination = {n: torch.empty_like(t) for n, t in tensors().items()}
        result = load_into(destination, IDENTITY, settings=settings, fallback=tensors)
        started.append(result)
        assert result.source == "storage" and result.publisher is not None, result.attempts
        return result.publisher

    yield start
    for item in started:
        item.close()


def restart(make: Callable[..., Any], server: Any, store: str, **kw: Any) -> Any:
    """Stop `server`, start a new one on its port; returns it (serving)."""
    port = server.port
    server.stop(grace_s=0)
    return make(store, port=port, heartbeat_timeout_s=4 * INTERVAL_S, **kw)


@pytest.mark.parametrize("kind", ["seed", "target"])
def test_memory_coordinator_restart_republishes_at_the_next_beat(coordinator_factory, sources, kind):
    server = coordinator_factory(heartbeat_timeout_s=4 * INTERVAL_S)
    pub = sources(kind, server.address)
    assert pub.worker_id in ready_ids(server.address)
    server = restart(coordinator_factory, server, "memory")
    back = pub.heartbeats.snapshot()
    # The new coordinator starts empty: it lists the worker only once a beat published it again.
    assert pub.worker_id not in ready_ids(server.address) or pub.republished == 1
    assert_republished_at_next_beat(server.address, pub, back)
    assert pub.republished == 1


def test_a_target_loaded_while_the_coordinator_was_down_publishes_itself_once_it_is_back(coordinator_factory):
    """Coordinator down at start: the target loads from storage and serves unpublished; the first
    beat that reaches the coordinator, started on that address afterwards, publishes it READY, and
    a second target then reads every byte from it."""
    port = free_port()
    address = f"127.0.0.1:{port}"  # nothing listens here yet
    settings = settings_for(address)
    weights = tensors(7)
    destination = {n: torch.empty_like(t) for n, t in weights.items()}
    result = load_into(destination, IDENTITY, settings=settings, fallback=lambda: weights)
    try:
        pub = result.publisher
        assert result.source == "storage" and pub is not None, result.attempts
        assert not pub.published
        wait_beats(pub, "failed while the coordinator is down", lambda c: c.failed >= 1)
        server = coordinator_factory(port=port, heartbeat_timeout_s=4 * INTERVAL_S)
        back = pub.heartbeats.snapshot()
        after = wait_beats(pub, "reached the coordinator", lambda c: c.succeeded >= 1)
        assert after.status_since <= back.attempts + 1, f"published only at beat {after.status_since}: {after}"
        assert pub.published and after.last_status is SourceStatus.READY
        # This process' shared connection to the address was refused while nothing listened: wait
        # until it is back (gRPC's reconnect backoff) before the second load uses it.
        deadline = time.monotonic() + HANG_S
        while not reachable(server.address):
            assert time.monotonic() < deadline, "the coordinator never became reachable again"
            time.sleep(0.1)
        assert ready_ids(server.address) == {pub.worker_id}
        copy = {n: torch.full_like(t, float("nan")) for n, t in weights.items()}
        second = load_into(copy, IDENTITY, settings=settings, publish=False)
        assert second.source == pub.worker_id, second.attempts
        assert all(torch.equal(copy[n], weights[n]) for n in weights)
    finally:
        result.close()


@pytest.mark.redis
def test_redis_flushed_republishes(coordinator_factory, sources, redis_url):
    import redis

    server = coordinator_factory("redis", redis_url=redis_url, heartbeat_timeout_s=4 * INTERVAL_S)
    pub = sources("seed", server.address)
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
    flushed = pub.heartbeats.snapshot()
    assert pub.worker_id not in ready_ids(server.address) or pub.republished == 1, "the flush emptied the store"
    assert_republished_at_next_beat(server.address, pub, flushed)
    assert pub.republished == 1


@pytest.mark.redis
def test_redis_crash_and_restart_with_persistence_loses_nothing(coordinator_factory, sources, tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis = RedisProcess(free_port(), tmp_path, persistent=True)
    redis.start()
    try:
        server = coordinator_factory("redis", redis_url=redis.url, heartbeat_timeout_s=4 * INTERVAL_S)
        pub = sources("seed", server.address)
        up = wait_beats(pub, "succeeding", lambda c: c.succeeded >= 1)
        redis.kill()  # a crash: beats get UNAVAILABLE meanwhile
        wait_beats(pub, "failing twice", lambda c: c.failed >= up.failed + 2)
        redis.start()  # a new server on the same append-only file
        back = pub.heartbeats.snapshot()
        # The first beat that reached it found the record: nothing was published again, three times.
        after = wait_beats(pub, "succeeding three times", lambda c: c.succeeded >= back.succeeded + 3)
        assert after.republished == 0 and pub.republished == 0, after
        assert pub.worker_id in ready_ids(server.address)
    finally:
        redis.close()


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` (bounded by HANG_S: a state that must come, not a timing assertion)."""
    deadline = time.monotonic() + HANG_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.redis
def test_redis_primary_killed_sentinel_fails_over_to_the_replica(coordinator_factory, sources, tmp_path):
    """A Redis primary, a replica and a Sentinel (Debian's redis-server binary in Sentinel mode);
    the coordinator reaches Redis through the Sentinel (redis+sentinel://)."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    import redis as redis_py

    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary, replica = RedisProcess(free_port(), tmp_path / "primary"), RedisProcess(free_port(), tmp_path / "replica")
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor peerload 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds peerload 500\nsentinel failover-timeout peerload 10000\n"
    )
    sentinel_proc = None
    primary.start()
    replica.start()
    try:
        with redis_py.Redis(port=replica.port) as r:
            r.replicaof("127.0.0.1", primary.port)
            _until(lambda: r.info("replication").get("master_link_status") == "up", "the replica's link")
        sentinel_proc = subprocess.Popen(
            [shutil.which("redis-server"), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        watcher = redis_py.Redis(port=sentinel_port, decode_responses=True)

        def sentinel_sees_the_replica() -> bool:
            try:
                seen = watcher.sentinel_slaves("peerload")
            except redis_py.RedisError:
                return False
            return any(int(x["port"]) == replica.port and "s_down" not in x["flags"] for x in seen)

        _until(sentinel_sees_the_replica, "the Sentinel to find the replica")
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/peerload"
        server = coordinator_factory("redis", redis_url=url, heartbeat_timeout_s=4 * INTERVAL_S)
        pub = sources("seed", server.address)
        wait_beats(pub, "succeeding", lambda c: c.succeeded >= 1)
        with redis_py.Redis(port=primary.port) as r:
            assert r.wait(1, 10_000) == 1, "the replica acknowledged every write"
        primary.kill()
        _until(
            lambda: int(watcher.sentinel_get_master_addr_by_name("peerload")[1]) == replica.port,
            "the Sentinel to promote the replica",
        )
        back = pub.heartbeats.snapshot()
        after = wait_beats(pub, "succeeding three times", lambda c: c.succeeded >= back.succeeded + 3)
        # The promoted replica had the record: nothing was published again.
        assert after.republished == 0 and pub.republished == 0, after
        assert pub.worker_id in ready_ids(server.address)
        pub.close()  # while the Sentinel still answers: marked STALE, not left to the reaper
        server.stop(grace_s=0)
        watcher.close()
    finally:
        if sentinel_proc is not None:
            sentinel_proc.kill()
            sentinel_proc.wait(timeout=10)
        primary.close()
        replica.close()


@pytest.mark.redis
def test_redis_replaced_on_same_port_republishes(coordinator_factory, sources, tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis = RedisProcess(free_port(), tmp_path)
    redis.start()
    try:
        server = coordinator_factory("redis", redis_url=redis.url, heartbeat_timeout_s=4 * INTERVAL_S)
        pub = sources("seed", server.address)
        stopped = pub.heartbeats.snapshot()
        redis.stop()  # the store is gone: beats get UNAVAILABLE meanwhile
        # Two beats that started after the store went away failed, and neither published again.
        during = wait_beats(pub, "failing twice", lambda c: c.failed >= stopped.attempts + 2 - stopped.succeeded)
        assert during.republished == 0
        redis.start()  # a new, empty one on the same port
        assert_republished_at_next_beat(server.address, pub, pub.heartbeats.snapshot())
        assert pub.republished == 1
    finally:
        redis.close()


def test_coordinator_down_for_a_while_seed_serves_then_reappears(coordinator_factory, sources, caplog):
    """While the coordinator is down, a peer that already has the metadata still reads bit-exact."""
    server = coordinator_factory(heartbeat_timeout_s=4 * INTERVAL_S)
    address, port = server.address, server.port
    pub = sources("seed", address)
    with CoordinatorClient(address) as client:
        record = client.get_metadata(pub.source_id, pub.worker_id)
    assert record is not None
    caplog.set_level(logging.DEBUG, logger="peerload.seed.publisher")
    down = pub.heartbeats.snapshot()
    server.stop(grace_s=0)
    # Several backoff rounds: four beats that started after the coordinator went away failed.
    wait_beats(pub, "failing four times", lambda c: c.failed >= down.attempts + 4 - down.succeeded)
    expected = tensors()
    with create_transport("nixl", "reader", loopback=True) as reader:
        dst = {n: torch.zeros_like(t) for n, t in expected.items()}
        local = {r.name: r for r in reader.register(collect(dst).regions)}
        remote = pub.manifest.region_map()
        ops = [ReadOp(remote_addr=remote[n].addr, local_addr=local[n].addr, size=local[n].size) for n in local]
        peer = EndpointInfo(agent_name=record.agent_name, nixl_metadata=record.nixl_metadata)
        reader.read(peer, ops, timeout_s=30)
    assert all(torch.equal(dst[n], expected[n]) for n in expected)
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len([r for r in unreachable if r.levelno == logging.WARNING]) == 1, "one warning per outage"
    retries = [r for r in unreachable if r.levelno == logging.DEBUG]
    assert len(retries) >= 3, "a debug line for every further failed beat"
    # Backoff between tries, not a busy loop: each retry waits from an eighth of the interval
    # (half of it, with the jitter) up to one interval, and the waits grow.
    waits = [float(re.search(r"retrying in ([0-9.]+)s", r.getMessage()).group(1)) for r in retries]  # type: ignore[union-attr]
    assert all(round(INTERVAL_S / 16, 1) <= w <= INTERVAL_S for w in waits), waits
    assert max(waits) > min(waits), f"the waits do not grow: {waits}"
    server = coordinator_factory(port=port, heartbeat_timeout_s=4 * INTERVAL_S)
    assert_republished_at_next_beat(server.address, pub, pub.heartbeats.snapshot())


def _kill_thread(thread: threading.Thread) -> None:
    """Raise SystemExit inside `thread` (CPython's async exception): the thread really ends."""
    assert thread.ident is not None
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    assert done == 1
    thread.join(5)
    assert not thread.is_alive()


def test_nixl_serving_thread_died_marks_stale_and_logs_why(coordinator_factory, sources, caplog):
    server = coordinator_factory(heartbeat_timeout_s=4 * INTERVAL_S)
    pub = sources("seed", server.address)
    caplog.set_level(logging.INFO, logger="peerload.seed.publisher")
    # Simulated only in how it dies: an exception injected into the real serving thread, as a
    # crash inside NIXL's poll would raise there (no real NIXL fault can be provoked on demand).
    _kill_thread(pub.transport._serve_thread)
    assert "serving thread" in (pub.transport.health() or "")
    assert_status_at_next_beat(server.address, pub, pub.heartbeats.snapshot(), SourceStatus.STALE)
    assert pub.worker_id not in ready_ids(server.address)
    assert any("heartbeating STALE" in r.getMessage() and "serving thread" in r.getMessage() for r in caplog.records)


def _listening_fd(port: int) -> int:
    """The fd of this process' socket listening on `port`."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with sock:
            try:
                if sock.getsockname()[1] == port and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    return fd
            except (OSError, TypeError, IndexError):
                continue
    raise AssertionError(f"no listening socket on port {port}")


def test_mooncake_engine_that_stops_accepting_marks_stale(coordinator_factory, sources, caplog):
    pytest.importorskip("mooncake.engine")
    server = coordinator_factory(heartbeat_timeout_s=4 * INTERVAL_S)
    pub = sources("seed", server.address, transport="transfer_engine")
    caplog.set_level(logging.INFO, logger="peerload.seed.publisher")
    assert pub.transport.health() is None
    port = int(pub.transport.session_id.rsplit(":", 1)[1])
    # A real fault of the real engine: its handshake listener stops accepting (shut down under it),
    # so no new peer could start a session with this seed. Listening again heals it.
    with socket.socket(fileno=os.dup(_listening_fd(port))) as listener:
        listener.shutdown(socket.SHUT_RDWR)
        try:
            assert "does not accept connections" in (pub.transport.health() or "")
            assert_status_at_next_beat(server.address, pub, pub.heartbeats.snapshot(), SourceStatus.STALE)
            assert pub.worker_id not in ready_ids(server.address)
        finally:
            listener.listen()  # the engine's accept loop spins on the broken socket until then
    assert pub.transport.health() is None
    assert_status_at_next_beat(server.address, pub, pub.heartbeats.snapshot(), SourceStatus.READY)
    messages = [r.getMessage() for r in caplog.records]
    assert any("heartbeating STALE" in m and "does not accept connections" in m for m in messages), messages
    assert any("can serve peers again" in m for m in messages), messages
