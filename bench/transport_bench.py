"""Cold and warm GB/s of each transport next to the in-process copy limits, in fresh processes.

Usage: python bench/transport_bench.py [--size-gib 1] [--tensors 64] [--reps 3] [--out DIR]

Cases, each repeated `--reps` times in fresh processes (the seed process is reused):
  copy_fresh         allocate a destination and copy into it, in one process (page-fault bound)
  copy_fresh_prefault  the same with `prefault` (2 threads, huge pages) before the copy
  copy_warm          copy again into the now-resident destination (memcpy limit)
  <kind>_cold        a fresh target reads into untouched memory
  <kind>_prefault    a fresh target prefaults the destination while its agent starts and connects,
                     and waits for it before reading
  <kind>_overlap     the same, but the read starts without waiting (faulting races the transfer)
  <kind>_warm        the same target reads a second time into resident memory
GB/s is bytes / time of the copy or `read()`; `e2e_s` adds transport creation, registration,
connect and prefault (time from a fresh process's first allocation to verified-ready bytes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

GiB = 1 << 30


def sizes(total: int, n: int) -> list[int]:
    """`n` tensor sizes (multiples of 8 bytes) summing to about `total`, uneven like real layers."""
    weights = [1 + (i * 7919) % 13 for i in range(n)]
    scale = total / sum(weights)
    return [max(8, int(w * scale) // 8 * 8) for w in weights]


def content(i: int, nbytes: int) -> torch.Tensor:
    return (torch.arange(nbytes // 8, dtype=torch.int64) * (2 * i + 1)).view(torch.uint8)


def copy_main(conn, total: int, n: int) -> None:
    from peerload.transport import prefault

    src = [content(i, s) for i, s in enumerate(sizes(total, n))]
    out = {}
    t0 = time.perf_counter()
    dst = [torch.empty_like(s) for s in src]
    for d, s in zip(dst, src):
        d.copy_(s)
    out["copy_fresh"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d, s in zip(dst, src):
        d.copy_(s)
    out["copy_warm"] = time.perf_counter() - t0
    del dst
    t0 = time.perf_counter()
    dst = [torch.empty_like(s) for s in src]
    prefault(dst, threads=os.cpu_count())
    for d, s in zip(dst, src):
        d.copy_(s)
    out["copy_fresh_prefault"] = time.perf_counter() - t0
    conn.send(out)


def seed_main(conn, kind: str, total: int, n: int) -> None:
    from peerload.transport import create_transport

    src = {f"t{i}": content(i, s) for i, s in enumerate(sizes(total, n))}
    tr = create_transport(kind, "bench-seed", loopback=True)
    regions = tr.register(src)
    conn.send((tr.endpoint_info(), regions))
    conn.recv()  # stop
    tr.close()
    conn.send("closed")


def target_main(conn, kind: str, total: int, n: int, info, regions, mode: str, options: dict) -> None:
    from peerload.transport import ReadOp, create_transport, populate_supported, prefault_async

    t_start = time.perf_counter()
    dst = {r.name: torch.empty(r.size, dtype=torch.uint8) for r in regions}
    job = prefault_async(dst.values(), threads=os.cpu_count()) if mode != "cold" else None
    tr = create_transport(kind, "bench-target", loopback=True, **options)
    local = {r.name: r for r in tr.register(dst)}
    tr.connect(info)
    if job is not None and (mode == "prefault" or not populate_supported()):
        job.wait()  # "overlap" lets faulting and the transfer race (safe with MADV_POPULATE_WRITE)
    ops = [ReadOp(r.addr, local[r.name].addr, r.size) for r in regions]
    t0 = time.perf_counter()
    tr.read(info, ops, timeout_s=300)
    t1 = time.perf_counter()
    tr.read(info, ops, timeout_s=300)
    t2 = time.perf_counter()
    ok = all(torch.equal(dst[r.name], content(int(r.name[1:]), r.size)) for r in regions)
    tr.close()
    conn.send({"read_s": t1 - t0, "warm_s": t2 - t1, "e2e_s": t1 - t_start, "ok": ok})


def run(fn, *args, timeout: float = 600):
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=fn, args=(b, *args))
    p.start()
    if not a.poll(timeout):
        p.kill()
        raise RuntimeError(f"{fn.__name__} gave no result within {timeout} s")
    out = a.recv()
    return p, a, out


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--transports", default="nixl,transfer_engine")
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    total = int(args.size_gib * GiB)
    n = args.tensors
    nbytes = sum(sizes(total, n))
    kinds = [k for k in args.transports.split(",") if k]
    options = {"chunk_bytes": args.chunk_mib << 20}
    gbps: dict[str, list[float]] = {}
    e2e: dict[str, list[float]] = {}

    def add(case: str, seconds: float) -> None:
        gbps.setdefault(case, []).append(nbytes / seconds / 1e9)

    for rep in range(args.reps):
        p, _, out = run(copy_main, total, n)
        p.join(60)
        for case, s in out.items():
            add(case, s)
        for kind in kinds:
            seed, seed_conn, (info, regions) = run(seed_main, kind, total, n)
            for mode in ("cold", "prefault", "overlap"):
                case = f"{kind}_{mode}"
                p, _, out = run(target_main, kind, total, n, info, regions, mode, options)
                p.join(60)
                if not out["ok"] or p.exitcode != 0:
                    raise RuntimeError(f"{case}: bytes differ or exit code {p.exitcode}")
                add(case, out["read_s"])
                add(f"{kind}_warm", out["warm_s"])
                e2e.setdefault(case, []).append(out["e2e_s"])
            seed_conn.send("stop")
            seed_conn.recv()
            seed.join(60)
            if seed.exitcode != 0:
                raise RuntimeError(f"{kind} seed exit code {seed.exitcode}")
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)

    result = {
        "config": {"bytes": nbytes, "tensors": n, "reps": args.reps, "chunk_bytes": options["chunk_bytes"],
                   "cpus": os.cpu_count(), "host": platform.node(), "torch": torch.__version__,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "gbps": {k: summary(v) for k, v in gbps.items()},
        "e2e_s": {k: summary(v) for k, v in e2e.items()},
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"transport_bench_{int(time.time())}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"{nbytes / GiB:.2f} GiB in {n} tensors, {args.reps} reps, chunk {args.chunk_mib} MiB")
    print(f"{'case':<26}{'median':>9}{'min':>9}{'max':>9}  GB/s   {'e2e s (median)':>14}")
    for case, s in result["gbps"].items():
        e = result["e2e_s"].get(case)
        tail = f"{e['median']:>14.2f}" if e else ""
        print(f"{case:<26}{s['median']:>9.2f}{s['min']:>9.2f}{s['max']:>9.2f}        {tail}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
