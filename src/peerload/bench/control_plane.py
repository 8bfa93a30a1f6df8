"""Control-plane benchmark: concurrent clients against `peerload serve` holding N registered workers.

The coordinator runs in its own process (as deployed); client threads are spread over a few
processes so Python's GIL on the client side does not cap the server's measured throughput.
Every phase is bounded in time; a redis-server is started on a free loopback port when needed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from peerload._process import ServeProcess, redis_server, start_serve
from peerload.errors import PeerloadError

RPCS = ("ListSources", "UpdateStatus")


@dataclass
class ControlPlaneConfig:
    clients: int = 16  # concurrent client threads in total
    duration_s: float = 5.0  # per RPC kind and store
    workers: int = 1000  # registered workers
    identities: int = 50  # models they are spread over (ListSources returns workers/identities)
    tensors_per_worker: int = 64  # descriptors each worker publishes
    stores: tuple[str, ...] = ("memory", "redis")
    processes: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))


@contextmanager
def coordinator(store: str, redis_url: str | None) -> Iterator[ServeProcess]:
    """`peerload serve` in its own process; heartbeats never expire during the run."""
    args = ["--store", store, "--heartbeat-timeout", "3600", "--gc-timeout", "7200"]
    if redis_url:
        args += ["--redis-url", redis_url]
    with tempfile.TemporaryDirectory(prefix="peerload-cp-") as tmp:
        server = start_serve(
            *args, log=Path(tmp) / "serve.log", env={**os.environ, "PEERLOAD_HEARTBEAT_INTERVAL_S": "1"}
        )
        try:
            yield server
        finally:
            server.stop()


def _identity(i: int) -> Any:
    from peerload.identity import SourceIdentity

    return SourceIdentity(model_name=f"bench/model-{i}", dtype="bfloat16", tensor_parallel_size=1)


def register_workers(address: str, config: ControlPlaneConfig) -> list[tuple[str, str, int]]:
    """Publish `config.workers` workers and mark them READY; (source_id, worker_id, rank) each."""
    from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo

    out = []
    with CoordinatorClient(address) as client:
        for w in range(config.workers):
            identity = _identity(w % config.identities)
            rank = 0
            tensors = [
                (f"layers.{t}.weight", 0x7F0000000000 + t * (1 << 24), 1 << 24, 0, "torch.bfloat16")
                for t in range(config.tensors_per_worker)
            ]
            info = WorkerInfo(
                rank=rank,
                agent_name=f"agent-{w}",
                nixl_metadata=b"nixlSerDes" + bytes(2048),
                tensors=tensors,
                worker_grpc_endpoint=f"127.0.0.1:{20000 + w}",
                accelerator="cpu",
            )
            worker_id = f"bench-worker-{w}"
            source_id = client.publish(identity, info, worker_id=worker_id)
            client.update_status(source_id, worker_id, rank, SourceStatus.READY)
            out.append((source_id, worker_id, rank))
    return out


def _client_proc(
    address: str,
    rpc: str,
    threads: int,
    duration_s: float,
    workers: list[tuple[str, str, int]],
    identities: int,
    conn: Any,
) -> None:
    """One client process: `threads` threads calling `rpc` back to back until the deadline."""
    import threading

    from peerload.client import CoordinatorClient, SourceStatus

    lat: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    # Clients are connected before the clock starts: channel setup is not what is measured.
    clients = [CoordinatorClient(address, retries=0) for _ in range(threads)]
    for c in clients:
        c.health_check()
    ids = [_identity(i) for i in range(identities)]
    start = time.perf_counter() + 0.2
    deadline = start + duration_s

    def run(i: int) -> None:
        rng = random.Random(i)
        client = clients[i]
        time.sleep(max(0.0, start - time.perf_counter()))
        while (t0 := time.perf_counter()) < deadline:
            try:
                if rpc == "ListSources":
                    client.list_sources(ids[rng.randrange(identities)], status=SourceStatus.READY)
                else:
                    sid, wid, rank = workers[rng.randrange(len(workers))]
                    client.update_status(sid, wid, rank, SourceStatus.READY)
            except Exception:  # counted, not fatal: the bench reports the error rate
                errors[i] += 1
                continue
            lat[i].append(time.perf_counter() - t0)

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration_s + 30)
    for c in clients:
        c.close()
    conn.send(([x for xs in lat for x in xs], sum(errors), duration_s))


def drive(address: str, rpc: str, config: ControlPlaneConfig, workers: list[tuple[str, str, int]]) -> dict[str, Any]:
    """Run `config.clients` threads over `config.processes` processes; throughput and latency."""
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    n = min(config.processes, config.clients)
    for p in range(n):
        threads = config.clients // n + (1 if p < config.clients % n else 0)
        a, b = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_client_proc,
            args=(address, rpc, threads, config.duration_s, workers, config.identities, b),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        conns.append(a)
    lat: list[float] = []
    errors = 0
    for proc, conn in zip(procs, conns, strict=True):
        if not conn.poll(config.duration_s + 90):
            proc.kill()
            raise RuntimeError(f"{rpc} client process gave no result in time")
        xs, err, _ = conn.recv()
        lat += xs
        errors += err
        proc.join(10)
    lat.sort()
    if not lat:
        return {"calls": 0, "errors": errors}
    return {
        "calls": len(lat),
        "errors": errors,
        "rps": len(lat) / config.duration_s,
        "p50_ms": 1e3 * lat[len(lat) // 2],
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "mean_ms": 1e3 * statistics.fmean(lat),
        "max_ms": 1e3 * lat[-1],
    }


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _redis_used_mib(url: str) -> float | None:
    try:
        import redis
    except ImportError:
        return None
    r = redis.Redis.from_url(url)
    try:
        return int(r.info("memory")["used_memory"]) / 2**20
    finally:
        r.close()


def run_control_plane(config: ControlPlaneConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """For each store: register workers, then drive ListSources and UpdateStatus."""
    results: dict[str, Any] = {"config": {k: getattr(config, k) for k in config.__dataclass_fields__}, "stores": {}}
    for store in config.stores:
        progress(f"control plane: store={store}")
        entry: dict[str, Any] = {}
        try:
            with _maybe_redis(store) as redis_url, coordinator(store, redis_url) as server:
                t0 = time.perf_counter()
                workers = register_workers(server.address, config)
                entry["register_s"] = time.perf_counter() - t0
                entry["coordinator_rss_mib"] = _rss_mib(server.proc.pid)
                if redis_url:
                    entry["redis_used_mib"] = _redis_used_mib(redis_url)
                for rpc in RPCS:
                    progress(f"control plane: store={store} {rpc} x{config.clients} for {config.duration_s:g}s")
                    entry[rpc] = drive(server.address, rpc, config, workers)
                entry["coordinator_rss_mib_after"] = _rss_mib(server.proc.pid)
        except (RuntimeError, PeerloadError) as exc:
            entry["error"] = str(exc)
        results["stores"][store] = entry
    return results


@contextmanager
def _maybe_redis(store: str) -> Iterator[str | None]:
    if store != "redis":
        yield None
        return
    with redis_server() as url:
        yield url


def table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    t = Table(
        title=f"coordinator: {cfg['workers']} workers over {cfg['identities']} models, "
        f"{cfg['clients']} concurrent clients, {cfg['duration_s']:g} s per RPC"
    )
    for col in ("store", "RPC", "calls/s", "p50 ms", "p99 ms", "errors", "server RSS MiB", "redis MiB"):
        t.add_column(col, justify="left" if col in ("store", "RPC") else "right")
    for store, e in results["stores"].items():
        if "error" in e:
            t.add_row(store, "[red]failed[/]", e["error"][:60], "", "", "", "", "")
            continue
        for rpc in RPCS:
            r = e[rpc]
            redis_mib = e.get("redis_used_mib")
            t.add_row(
                store,
                rpc,
                f"{r.get('rps', 0):.0f}",
                f"{r.get('p50_ms', 0):.2f}",
                f"{r.get('p99_ms', 0):.2f}",
                str(r["errors"]),
                f"{e.get('coordinator_rss_mib_after') or 0:.0f}",
                "" if redis_mib is None else f"{redis_mib:.1f}",
            )
    return t
