"""Control plane at fleet scale: thousands of simulated workers heartbeating on a schedule, and
targets listing at a fixed rate, against one and against several coordinator replicas over one Redis.

Open loop: every call has a scheduled time (beats at the worker's phase plus k intervals, lists at
a fixed rate), and its latency counts from that time, so a coordinator that falls behind shows as
lag rather than as fewer calls. A beat's *lag* is how long after its scheduled time it was
answered; a beat later than one interval would let its worker expire. Each replica's (and
Redis's) CPU time over the measured window, divided by the calls it answered, is its CPU per call.
"""

from __future__ import annotations

import functools
import heapq
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from peerload._process import ServeProcess, free_port, start_redis, start_serve, stop_process

_TICKS = os.sysconf("SC_CLK_TCK")
_DESCRIPTORS = 8  # tensor descriptors per simulated worker (ListSources does not return them)


@dataclass
class ScaleConfig:
    workers: int = 5000  # simulated workers, each heartbeating READY every `interval_s`
    models: int = 100  # identities they are spread over (a listing returns workers/models)
    interval_s: float = 30.0  # ModelExpress's heartbeat interval
    list_rps: float = 200.0  # targets' ListSources (READY, one model) per second, in total
    duration_s: float = 60.0  # measured window per case (at least one interval: every worker beats)
    replicas: tuple[int, ...] = (1, 2)  # coordinator replicas over one Redis, one case each
    processes: int = 2  # load-generator processes
    channels: int = 32  # connections per generator process, spread over the replicas


def _identity(model: int) -> Any:
    from peerload.identity import SourceIdentity

    return SourceIdentity(model_name=f"scale/model-{model}", dtype="bfloat16")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _register(addresses: list[str], config: ScaleConfig) -> list[tuple[str, str]]:
    """Publish every worker and mark it READY (8 threads); (source_id, worker_id) per worker."""
    from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo

    out: list[tuple[str, str]] = [("", "")] * config.workers

    def register(part: int) -> None:
        with CoordinatorClient(addresses[part % len(addresses)], timeout_s=60) as client:
            for w in range(part, config.workers, 8):
                tensors = [
                    (f"layers.{t}.weight", (w << 32) + (t << 24), 1 << 24, 0, "torch.bfloat16")
                    for t in range(_DESCRIPTORS)
                ]
                info = WorkerInfo(rank=0, nixl_metadata=b"nixlSerDes" + bytes(1024), tensors=tensors, accelerator="cpu")
                worker_id = f"scale-{w}"
                sid = client.publish(_identity(w % config.models), info, worker_id)
                client.update_status(sid, worker_id, 0, SourceStatus.READY, 0.0)
                out[w] = (sid, worker_id)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(8)))
    return out


def _generator(
    index: int,
    addresses: list[str],
    workers: list[tuple[int, str, str]],
    config: ScaleConfig,
    start_at: float,
    conn: Any,
) -> None:
    """One load-generator process: its workers' beats and its share of the lists, on schedule.

    It calls the P2pService stubs with messages built before the clock starts, not through
    CoordinatorClient (which converts every listed worker): the generators share the machine's
    CPUs with the coordinators, and what they spend per call is not the coordinators' latency.
    """
    import grpc

    from peerload._gen.model_express import p2p_pb2 as pb
    from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
    from peerload.wire import SourceStatus, identity_to_proto, status_to_proto

    channels = [grpc.insecure_channel(addresses[c % len(addresses)]) for c in range(config.channels)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=60)  # connected before the clock starts
    stubs = [pb_grpc.P2pServiceStub(channel) for channel in channels]
    expected = config.workers // config.models
    rng = random.Random(index)
    events: list[tuple[float, int, int]] = []  # (due, kind 0 = beat / 1 = list, worker or model)
    for w, _, _ in workers:
        due = (w / config.workers) * config.interval_s  # phases spread evenly over one interval
        while due < config.duration_s:
            events.append((due, 0, w))
            due += config.interval_s
    share = config.list_rps / config.processes
    lists = int(config.duration_s * share)
    events += [((j + rng.random()) / share, 1, rng.randrange(config.models)) for j in range(lists)]
    heapq.heapify(events)
    ready = status_to_proto(SourceStatus.READY)
    beats = {
        w: pb.UpdateStatusRequest(mx_source_id=sid, worker_id=wid, worker_rank=0, status=ready, source_load=0.0)
        for w, sid, wid in workers
    }
    listings = [
        pb.ListSourcesRequest(identity=identity_to_proto(_identity(m)), status_filter=ready)
        for m in range(config.models)
    ]
    results: list[tuple[int, float, float, bool, bool]] = []  # kind, latency from due, service, ok, complete
    lock = threading.Lock()

    outstanding = threading.Semaphore(0)  # released once per answered call

    def answered(kind: int, due_abs: float, started: float, future: Any) -> None:
        done = time.time()
        ok, complete = True, True
        try:
            reply = future.result()
            if kind == 0:
                ok = reply.success
            else:
                complete = len(reply.instances) >= expected
        except grpc.RpcError:  # counted: the benchmark reports errors, it does not stop on them
            ok = False
        with lock:
            results.append((kind, done - due_abs, done - started, ok, complete))
        outstanding.release()

    # Each call is sent at its time without waiting for any other (gRPC futures): no thread or
    # in-flight bound of the generator's can delay a call, whatever the replies' latency.
    n = 0
    while events:
        due, kind, arg = heapq.heappop(events)
        due_abs = start_at + due
        time.sleep(max(0.0, due_abs - time.time()))
        stub = stubs[n % len(stubs)]
        started = time.time()
        if kind == 0:
            future = stub.UpdateStatus.future(beats[arg], timeout=30)
        else:
            future = stub.ListSources.future(listings[arg], timeout=30)
        future.add_done_callback(functools.partial(answered, kind, due_abs, started))
        n += 1
    for _ in range(n):
        outstanding.acquire()
    for channel in channels:
        channel.close()
    conn.send(results)


def _percentile(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else 0.0


def _summary(latencies: list[float]) -> dict[str, float]:
    xs = sorted(latencies)
    return {
        "p50_ms": 1e3 * _percentile(xs, 0.5),
        "p99_ms": 1e3 * _percentile(xs, 0.99),
        "max_ms": 1e3 * (xs[-1] if xs else 0.0),
    }


@contextmanager
def _cluster(replicas: int, workdir: Path) -> Iterator[tuple[list[ServeProcess], int, str]]:
    """A redis-server (no persistence) and `replicas` coordinators over it; (servers, redis pid, url)."""
    port = free_port()
    redis_proc = start_redis(port, workdir)
    url = f"redis://127.0.0.1:{port}/0"
    args = ("--store", "redis", "--redis-url", url, "--heartbeat-timeout", "90", "--gc-timeout", "600")
    with ExitStack() as stack:
        stack.callback(stop_process, redis_proc, 5)
        servers = []
        for r in range(replicas):
            server = start_serve(*args, log=workdir / f"serve-{r}.log")
            stack.callback(server.stop)
            servers.append(server)
        yield servers, redis_proc.pid, url


def run_case(replicas: int, config: ScaleConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """One case: register the workers, then drive beats and lists for `duration_s`."""
    with tempfile.TemporaryDirectory(prefix="peerload-scale-") as tmp, _cluster(replicas, Path(tmp)) as cluster:
        servers, redis_pid, _url = cluster
        addresses = [s.address for s in servers]
        progress(f"control plane at scale: {replicas} replica(s), registering {config.workers} workers")
        t0 = time.perf_counter()
        registered = _register(addresses, config)
        register_s = time.perf_counter() - t0
        ctx = mp.get_context("spawn")
        start_at = time.time() + 5.0  # every generator connected and scheduled by then
        procs, conns = [], []
        for p in range(config.processes):
            mine = [(w, *registered[w]) for w in range(p, config.workers, config.processes)]
            # Each generator lists the replicas in its own order: the fleet spreads over them.
            order = addresses[p % len(addresses) :] + addresses[: p % len(addresses)]
            a, b = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_generator, args=(p, order, mine, config, start_at, b), daemon=True)
            proc.start()
            procs.append(proc)
            conns.append(a)
        time.sleep(max(0.0, start_at - time.time()))
        progress(f"control plane at scale: {replicas} replica(s), measuring {config.duration_s:g} s")
        load_before = os.getloadavg()
        pids = [s.proc.pid for s in servers]
        cpu_before = [_cpu_s(pid) for pid in pids] + [_cpu_s(redis_pid)]
        results: list[tuple[int, float, float, bool, bool]] = []
        for proc, conn in zip(procs, conns, strict=True):
            if not conn.poll(config.duration_s + 120):
                proc.kill()
                raise RuntimeError("a load-generator process gave no result in time")
            results += conn.recv()
            proc.join(10)
        cpu = [
            after - before
            for after, before in zip([_cpu_s(p) for p in pids] + [_cpu_s(redis_pid)], cpu_before, strict=True)
        ]
        load_after = os.getloadavg()
    beats = [r for r in results if r[0] == 0]
    lists = [r for r in results if r[0] == 1]
    calls = len(results)
    return {
        "replicas": replicas,
        "register_s": register_s,
        "calls": calls,
        "ListSources": {
            "calls": len(lists),
            "rps": len(lists) / config.duration_s,
            "errors": sum(1 for r in lists if not r[3]),
            "incomplete": sum(1 for r in lists if r[3] and not r[4]),  # fewer READY workers than registered
            **_summary([r[1] for r in lists if r[3]]),
            "service_p99_ms": _summary([r[2] for r in lists if r[3]])["p99_ms"],
        },
        "UpdateStatus": {
            "calls": len(beats),
            "rps": len(beats) / config.duration_s,
            "errors": sum(1 for r in beats if not r[3]),
            **_summary([r[2] for r in beats if r[3]]),
            "lag_max_s": max((r[1] for r in beats), default=0.0),
            "late": sum(1 for r in beats if r[1] > config.interval_s),  # later than one interval
        },
        "cpu_s": {"coordinators": cpu[:-1], "redis": cpu[-1]},
        "cpu_ms_per_call": {
            "coordinators": 1e3 * sum(cpu[:-1]) / max(1, calls),
            "redis": 1e3 * cpu[-1] / max(1, calls),
        },
        "loadavg_1m": [load_before[0], load_after[0]],
    }


def run_scale(config: ScaleConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every case of `config.replicas`; the figures and the goals they are held to."""
    cases = [run_case(n, config, progress) for n in config.replicas]
    return {
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "cpus": os.cpu_count(),
        "goals": {"list_p99_ms": 50, "errors": 0, "lag_max_s": config.interval_s},
        "cases": cases,
    }


def scale_table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    t = Table(
        title=f"coordinator at scale: {cfg['workers']} workers of {cfg['models']} models beating every "
        f"{cfg['interval_s']:g} s, {cfg['list_rps']:g} lists/s, {cfg['duration_s']:g} s"
    )
    columns = ("replicas", "lists/s", "list p50 ms", "list p99 ms", "beats/s", "beat p99 ms", "beat lag max s")
    for col in (*columns, "errors", "CPU ms/call (coord + redis)"):
        t.add_column(col, justify="right")
    for case in results["cases"]:
        ls, us, cpu = case["ListSources"], case["UpdateStatus"], case["cpu_ms_per_call"]
        t.add_row(
            str(case["replicas"]),
            f"{ls['rps']:.0f}",
            f"{ls['p50_ms']:.1f}",
            f"{ls['p99_ms']:.1f}",
            f"{us['rps']:.0f}",
            f"{us['p99_ms']:.1f}",
            f"{us['lag_max_s']:.2f}",
            str(ls["errors"] + ls["incomplete"] + us["errors"]),
            f"{cpu['coordinators']:.2f} + {cpu['redis']:.2f}",
        )
    return t
