"""Seed and target process bodies for the transport integration tests (run under spawn).

Both sides build the same tensor set from a seed number; the seed hashes its tensors, the
target hashes what arrived, and the parent compares the two lists.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.uint8, torch.bool]


@dataclass(frozen=True)
class Spec:
    name: str
    dtype: torch.dtype
    numel: int


def make_specs(n: int, seed: int, big_mib: int = 64) -> list[Spec]:
    """`n` tensors of mixed dtypes: several 0-element ones, mostly small, a few MiB-sized, one big."""
    g = torch.Generator().manual_seed(seed)
    specs = []
    for i in range(n):
        dtype = DTYPES[i % len(DTYPES)]
        item = torch.empty(0, dtype=dtype).element_size()
        r = int(torch.randint(0, 100, (1,), generator=g))
        if i % 97 == 5:
            nbytes = 0
        elif i == n - 1:
            nbytes = big_mib << 20
        elif r < 70:
            nbytes = int(torch.randint(1, 64 << 10, (1,), generator=g))
        elif r < 95:
            nbytes = int(torch.randint(64 << 10, 1 << 20, (1,), generator=g))
        else:
            nbytes = int(torch.randint(1 << 20, 8 << 20, (1,), generator=g))
        specs.append(Spec(f"layer{i}.{str(dtype)[6:]}", dtype, nbytes // item))
    return specs


def fill(spec: Spec, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.dtype == torch.bool:
        return torch.randint(0, 2, (spec.numel,), generator=g).bool()
    nbytes = spec.numel * torch.empty(0, dtype=spec.dtype).element_size()
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g).view(spec.dtype)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def seed_main(conn: Connection, kind: str, n: int, seed: int, big_mib: int, options: dict | None = None) -> None:
    """Register a tensor set, publish its endpoint and regions, serve until told to stop."""
    from peerload.transport import create_transport

    tensors = {s.name: fill(s, seed + i) for i, s in enumerate(make_specs(n, seed, big_mib))}
    digests = [digest(t) for t in tensors.values()]
    tr = create_transport(kind, "seed", loopback=True, **(options or {}))
    regions = tr.register(tensors)
    info = tr.endpoint_info()
    conn.send(
        {"info": info, "regions": regions, "digests": digests, "pid": os.getpid(), "metadata_port": tr.metadata_port}
    )
    while True:
        cmd = conn.recv()
        if cmd == "cpu":  # CPU seconds this idle seed burns in 2 s of wall time
            while not tr.polling_idle:  # its readers are done: it backs off to the idle interval
                time.sleep(0.01)
            t0 = os.times()
            time.sleep(2.0)
            t1 = os.times()
            conn.send((t1.user - t0.user) + (t1.system - t0.system))
        elif cmd == "stop":
            break
    tr.close()
    conn.send("closed")


def target_main(conn: Connection, kind: str, n: int, seed: int, big_mib: int, options: dict) -> None:
    """Serve read requests from the parent, one per seed it hands over, on one endpoint."""
    from peerload.transport import ReadOp, create_transport, prefault

    specs = make_specs(n, seed, big_mib)
    dst = {s.name: torch.empty(s.numel, dtype=s.dtype) for s in specs}
    prefault(dst.values())
    tr = create_transport(kind, "target", loopback=True, **options)
    local = {r.name: r for r in tr.register(dst)}
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "stop":
            break
        for t in dst.values():
            t.view(torch.uint8).zero_()
        ops = [ReadOp(remote_addr=r.addr, local_addr=local[r.name].addr, size=r.size) for r in msg["regions"]]
        got = {"bytes": 0, "calls": 0}
        pause_on_first = msg.get("pause_on_first", False)

        def progress(nbytes: int, got: dict[str, int] = got, pause_on_first: bool = pause_on_first) -> None:
            got["bytes"] += nbytes
            got["calls"] += 1
            if pause_on_first and got["calls"] == 1:  # parent kills the seed mid-transfer here
                conn.send("paused")
                conn.recv()

        t0 = time.monotonic()
        try:
            tr.read(msg["info"], ops, timeout_s=msg.get("timeout_s", 60), progress=progress)
            result = {"ok": True, "digests": [digest(t) for t in dst.values()]}
        except Exception as e:
            result = {
                "ok": False,
                "error": type(e).__name__,
                "message": str(e),
                "peer": getattr(e, "peer", None),
                "tb": traceback.format_exc(),
            }
        result.update(seconds=time.monotonic() - t0, progress_bytes=got["bytes"], progress_calls=got["calls"])
        conn.send(result)
    tr.close()
    conn.send("closed")


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def concurrent_target_main(conn: Connection, kind: str, sets: list[tuple[int, int]], big_mib: int) -> None:
    """Read one tensor set from each of several seeds at once, all reads starting together, as the
    first reads this endpoint makes; send back each set's digests and the endpoint's counters."""
    import threading

    from peerload.transport import ReadOp, create_transport, prefault

    specs = [make_specs(n, seed, big_mib) for n, seed in sets]
    # Names unique across sets: a transport registers tensors by name.
    dsts = [{f"set{j}.{s.name}": torch.empty(s.numel, dtype=s.dtype) for s in ss} for j, ss in enumerate(specs)]
    prefault([t for d in dsts for t in d.values()])
    tr = create_transport(kind, "target", loopback=True)
    locals_ = [{r.name: r for r in tr.register(d)} for d in dsts]
    conn.send("ready")
    seeds = conn.recv()  # [{"info", "regions"}] in the order of `sets`
    start = threading.Barrier(len(seeds))
    errors: list[str] = []

    def read(i: int) -> None:
        here = locals_[i]
        ops = [
            ReadOp(remote_addr=r.addr, local_addr=here[f"set{i}.{r.name}"].addr, size=r.size)
            for r in seeds[i]["regions"]
        ]
        start.wait()
        try:
            tr.read(seeds[i]["info"], ops, timeout_s=60)
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.send(
        {
            "errors": errors,
            "digests": [[digest(t) for t in d.values()] for d in dsts],
            "staging_registrations": getattr(tr, "_staging_registrations", None),
        }
    )
    assert conn.recv() == "stop"
    tr.close()
    conn.send("closed")
