"""GPU to GPU over NIXL, end to end, in one command: `make gpu-check` (or `--device cpu` anywhere).

Runs an embedded coordinator, a seed process that publishes tensors made on the device, and a
target process that loads them peer-to-peer into tensors on the device (UCX picks cuda_ipc /
cuda_copy for GPU memory), checks every byte on the device, and prints one JSON document:

- transfer: one NIXL READ of every byte (after a warm-up read), GB/s and x the device copy;
- load: `load_into` with verification (wsum64 on the device), its phases and GB/s;
- digest: wsum64 over every part, GB/s and x the device copy;
- device_copy: torch's own copy of the same bytes between two tensors on the device;
- setup: seed start to READY, and the target's agent, registration and handshake;
- goals: transfer >= 0.8x and digest >= 0.25x the device copy.

Usage: python scripts/gpu_check.py [--device cuda|cuda:N|cpu] [--size-mib N] [--tensors N]
       [--part-mib N] [--json FILE]. Exit status 0 when bytes are exact and verified (goals are
reported, not enforced), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from peerload.devices import parse_device  # noqa: E402

MODEL = "peerload-gpu-check/synthetic"
GOALS = {"transfer_vs_copy": 0.8, "digest_vs_copy": 0.25}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_tensors(device: torch.device, size: int, count: int, fill: bool) -> dict[str, torch.Tensor]:
    """`count` bf16 tensors of about `size` bytes together; with `fill`, content both sides derive
    from the tensor's index alone (integer arithmetic on the device, so CPU and GPU agree)."""
    per = max(4096, size // count // 4096 * 4096)
    out = {}
    for i in range(count):
        words = torch.arange(per // 4, dtype=torch.int64, device=device) if fill else None
        if words is None:
            out[f"layers.{i:04d}.weight"] = torch.empty(per // 2, dtype=torch.bfloat16, device=device)
            continue
        words.mul_(0x9E3779B1).add_(i * 0x85EBCA77).bitwise_xor_(words >> 15)
        out[f"layers.{i:04d}.weight"] = words.to(torch.int32).view(torch.bfloat16)
    return out


def _identity() -> Any:
    from peerload.identity import SourceIdentity

    return SourceIdentity(model_name=MODEL, dtype="bfloat16")


def _settings(coordinator: str, part_bytes: int) -> Any:
    from peerload.settings import Settings

    # wsum64 on both devices: `--device cpu` checks the very digest path a GPU takes.
    return Settings.load(
        env={}, coordinator=coordinator, chunk_bytes=part_bytes, checksum="wsum64", advertise_host="127.0.0.1"
    )


# -- the seed process ---------------------------------------------------------------------------


def seed(args: argparse.Namespace) -> None:
    from peerload.seed.publisher import publish

    started = time.perf_counter()
    device = parse_device(args.device)
    tensors = make_tensors(device, args.size, args.tensors, fill=True)
    _sync(device)
    made = time.perf_counter()
    with publish(tensors, _identity(), settings=_settings(args.coordinator, args.part_bytes)) as pub:
        ready = {
            "worker_id": pub.worker_id,
            "source_id": pub.source_id,
            "make_s": made - started,
            "publish_s": time.perf_counter() - made,  # agent, registration, wsum64 of every part, publish
            "part_algorithms": sorted(set(pub.manifest.part_algorithms)),
        }
        Path(args.ready).write_text(json.dumps(ready))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait(args.timeout_s)


# -- the target process -------------------------------------------------------------------------


def _best(fn: Any, device: torch.device, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def _exact(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    """Every byte equal, compared on the device (no host copy)."""
    return all(torch.equal(tensors[n].view(torch.uint8), expected[n].view(torch.uint8)) for n in expected)


def _raw_read(args: argparse.Namespace, regions: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """One READ of every region straight from the seed: the wire alone, no parts, no hashing."""
    from peerload.client import CoordinatorClient
    from peerload.seed_client import SeedClient
    from peerload.transport import ReadOp, make_transport
    from peerload.transport.base import EndpointInfo

    ready = json.loads(Path(args.ready).read_text())
    settings = _settings(args.coordinator, max(args.part_bytes, 1 << 30))  # few, large requests
    with CoordinatorClient(args.coordinator) as client:
        record = client.get_metadata(ready["source_id"], ready["worker_id"])
    assert record is not None, "the seed vanished from the coordinator"
    with SeedClient(record.manifest_endpoint, ready["worker_id"], timeout_s=30) as seed_client:
        remote = seed_client.manifest().region_map()
    ops = [
        ReadOp(remote[n].addr, flat.data_ptr(), flat.numel(), remote[n].device_id, device.index or 0, remote[n].memory)
        for n, flat in regions.items()
    ]
    t0 = time.perf_counter()
    transport = make_transport(settings, "gpu-check-wire")
    try:
        transport.register(regions)
        t1 = time.perf_counter()
        peer = EndpointInfo(agent_name=record.agent_name, nixl_metadata=record.nixl_metadata)
        transport.connect(peer)
        t2 = time.perf_counter()
        transport.read(peer, ops, timeout_s=args.timeout_s)  # the first read also sets up UCX lanes
        _sync(device)
        seconds = _best(lambda: transport.read(peer, ops, timeout_s=args.timeout_s), device)
    finally:
        transport.close()
    return {"seconds": seconds, "agent_and_register_s": t1 - t0, "connect_s": t2 - t1}


def target(args: argparse.Namespace) -> None:
    from peerload.loader import load_into
    from peerload.parts import plan_parts
    from peerload.tensors import collect, part_checksums

    device = parse_device(args.device)
    expected = make_tensors(device, args.size, args.tensors, fill=True)
    dest = make_tensors(device, args.size, args.tensors, fill=False)
    nbytes = sum(t.numel() * t.element_size() for t in expected.values())
    report: dict[str, Any] = {"bytes": nbytes, "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    result = load_into(dest, _identity(), settings=_settings(args.coordinator, args.part_bytes), publish=False)
    load_exact = _exact(dest, expected)
    phases = result.seconds
    report["load"] = {
        "source": result.source,
        "verified": result.verified,
        "exact": load_exact,
        "gbps": nbytes / phases["transfer"] / 1e9 if phases.get("transfer") else None,
        "seconds": phases,
        "attempts": result.attempts,
    }
    report["setup_s"] = sum(phases.get(k, 0.0) for k in ("health", "prepare", "discover", "handshake"))
    result.close()

    regions = collect(dest).regions
    for flat in regions.values():
        flat.zero_()
    wire = _raw_read(args, regions, device)
    report["transfer"] = {**wire, "gbps": nbytes / wire["seconds"] / 1e9, "exact": _exact(dest, expected)}

    sources = collect(expected).regions
    copy_s = _best(lambda: [regions[n].copy_(sources[n]) for n in regions], device)
    report["device_copy"] = {"seconds": copy_s, "gbps": nbytes / copy_s / 1e9}
    parts = plan_parts(((n, r.numel()) for n, r in regions.items()), args.part_bytes)
    part_checksums(regions, parts[:1], choice="wsum64", workers=1)  # weights built outside the timing
    digest_s = _best(lambda: part_checksums(regions, parts, choice="wsum64"), device)
    report["digest"] = {
        "algorithm": "wsum64",
        "parts": len(parts),
        "seconds": digest_s,
        "gbps": nbytes / digest_s / 1e9,
    }
    Path(args.out).write_text(json.dumps(report))


# -- the parent: coordinator, both processes, the summary ---------------------------------------


def _child(kind: str, args: argparse.Namespace, *extra: str) -> list[str]:
    common = ["--device", args.device, "--size", str(args.size), "--tensors", str(args.tensors)]
    common += ["--part-bytes", str(args.part_bytes), "--timeout-s", str(args.timeout_s)]
    return [sys.executable, str(Path(__file__).resolve()), kind, *common, *extra]


def check(args: argparse.Namespace) -> int:
    from peerload._process import stop_process, wait_ready_file
    from peerload.coordinator.server import serve
    from peerload.settings import Settings

    started = time.perf_counter()
    parse_device(args.device)  # fails here, named, when the device is missing
    os.environ.setdefault("UCX_NET_DEVICES", "lo")  # one host: UCX wires up over loopback
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    coordinator = serve(Settings.load(env={}, host="127.0.0.1"), port=0)
    address = f"127.0.0.1:{coordinator.port}"
    with tempfile.TemporaryDirectory(prefix="peerload-gpu-check-") as tmp:
        ready, out = Path(tmp) / "seed.ready", Path(tmp) / "target.json"
        log = open(Path(tmp) / "seed.log", "wb")
        seed_cmd = _child("_seed", args, "--coordinator", address, "--ready", str(ready))
        seed_proc = subprocess.Popen(seed_cmd, stdin=subprocess.PIPE, stdout=log, stderr=log, env=env, cwd=ROOT)
        try:
            seed_started = time.perf_counter()
            wait_ready_file(seed_proc, ready, timeout_s=args.timeout_s)
            seed_ready_s = time.perf_counter() - seed_started
            target_cmd = _child("_target", args, "--coordinator", address, "--ready", str(ready), "--out", str(out))
            proc = subprocess.run(target_cmd, env=env, cwd=ROOT, timeout=args.timeout_s, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                return 1
        finally:
            stop_process(seed_proc, timeout_s=30, close_stdin=True)
            log.close()
            coordinator.stop(grace_s=0)
        report = json.loads(out.read_text())
        seed_info = json.loads(ready.read_text())
    copy = report["device_copy"]["gbps"]
    report["transfer_vs_copy"] = report["transfer"]["gbps"] / copy
    report["digest_vs_copy"] = report["digest"]["gbps"] / copy
    report["load_vs_copy"] = (report["load"]["gbps"] or 0.0) / copy
    report["seed"] = {**seed_info, "ready_s": seed_ready_s}
    report["goals"] = {k: {"goal": v, "value": report[k], "met": report[k] >= v} for k, v in GOALS.items()}
    report["ucx"] = {k: v for k, v in os.environ.items() if k.startswith("UCX_")}
    report["torch"] = torch.__version__
    report["wall_s"] = time.perf_counter() - started
    ok = (
        report["load"]["exact"]
        and report["load"]["verified"] is True
        and report["load"]["source"] == seed_info["worker_id"]
        and report["transfer"]["exact"]
    )
    report["ok"] = bool(ok)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="check", choices=["check", "_seed", "_target"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--size-mib", type=int, default=None, help="bytes to move (default 8192 MiB on a GPU, 64 on CPU)"
    )
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--part-mib", type=int, default=None, help="part size (default 512 MiB on a GPU, 8 on CPU)")
    parser.add_argument("--timeout-s", type=float, default=420.0)
    parser.add_argument("--json", default=None, help="also write the report here")
    # internal: what the parent hands its two processes
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--part-bytes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ready", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if not args.size:
        args.size = (args.size_mib or (8192 if gpu else 64)) << 20
    if not args.part_bytes:
        args.part_bytes = (args.part_mib or (512 if gpu else 8)) << 20
    return {"check": check, "_seed": seed, "_target": target}[args.role](args) or 0


if __name__ == "__main__":
    from peerload.errors import ConfigError

    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        sys.exit(2)
