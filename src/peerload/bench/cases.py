"""Benchmark cases, each run in a fresh process: `python -m peerload.bench.cases CASE ARGS.json OUT.json`.

Every timed case starts its clock after imports, just before the destination is allocated, and
stops when the bytes are in place (and verified where the case says so). Seeds print nothing
timed: they write a ready file and serve until their stdin closes.
"""

from __future__ import annotations

import base64
import ctypes
import json
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peerload._process import write_ready_file
from peerload.synthetic import TensorSpec, empty_like_specs, make_tensors
from peerload.transport.ucx_env import UCX_DEFAULTS

Args = dict[str, Any]
CASES: dict[str, Callable[[Args], dict[str, Any]]] = {}


def case(fn: Callable[[Args], dict[str, Any]]) -> Callable[[Args], dict[str, Any]]:
    CASES[fn.__name__] = fn
    return fn


def _specs(args: Args) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(shape)) for name, shape in args["specs"]]


def _region_sums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    from peerload.tensors import checksums, collect

    return checksums(collect(tensors).regions)


def _identity(args: Args) -> Any:
    from peerload.identity import SourceIdentity

    return SourceIdentity(model_name=args["model_name"], dtype="bfloat16")


def _settings(args: Args) -> Any:
    from peerload.settings import Settings

    return Settings.load(
        env={},
        coordinator=args["coordinator"],
        transport=args.get("transport", "nixl"),
        verify_checksums=args.get("verify", True),
        storage_fallback=False,
    )


def _serve(args: Args, ready: dict[str, Any], close: Callable[[], None]) -> dict[str, Any]:
    """Write the seed's ready file, serve until stdin closes (the runner's stop), then `close`."""
    try:
        write_ready_file(Path(args["ready"]), ready)
        sys.stdin.read()
    finally:
        close()
    return {}


# -- the limit --------------------------------------------------------------------------------


@case
def shm_holder(args: Args) -> dict[str, Any]:
    """Holds the inventory's bytes in shared memory (resident, like a seed's tensors) until stdin closes."""
    tensors = make_tensors(_specs(args))
    total = sum(t.nbytes for t in tensors.values())
    path = Path("/dev/shm") / f"peerload-bench-{os.getpid()}"
    with open(path, "w+b") as fh:
        fh.truncate(total)
        mm = mmap.mmap(fh.fileno(), total)
    flat = torch.frombuffer(mm, dtype=torch.uint8)
    offset = 0
    for t in tensors.values():
        flat[offset : offset + t.nbytes].copy_(t.reshape(-1).view(torch.uint8))
        offset += t.nbytes
    del tensors

    def close() -> None:
        nonlocal flat
        del flat
        mm.close()
        path.unlink(missing_ok=True)

    return _serve(args, {"shm": str(path), "bytes": total}, close)


@case
def limit(args: Args) -> dict[str, Any]:
    """A fresh process copies the holder's resident bytes into fresh tensors of the same inventory.

    Exactly a P2P target minus the transport: the source pages are mapped before the clock
    starts (a seed's are resident too); the clock covers allocation, page faults and the copy.
    One copy stream, like the kernel's cross-memory copy a P2P read is: torch's OpenMP copy on
    2 threads spins at its barriers when the cores are shared and then runs 3x slower (measured
    here: 4.5-5.2 s against 1.6-1.9 s for 2 GiB at load 3.5), which made the old limit bimodal.
    With `prefault`, peerload's parallel prefault runs first: a stricter bound.
    """
    from peerload.transport import prefault

    torch.set_num_threads(1)
    specs = _specs(args)
    holder = json.loads(Path(args["holder_ready"]).read_text())
    with open(holder["shm"], "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), holder["bytes"])
    src = torch.frombuffer(mm, dtype=torch.uint8)
    src[:: mmap.PAGESIZE].sum()  # map every source page now, outside the clock
    started = time.perf_counter()
    dst = empty_like_specs(specs)
    if args.get("prefault"):
        prefault(dst.values())
    offset = 0
    for t in dst.values():
        t.reshape(-1).view(torch.uint8).copy_(src[offset : offset + t.nbytes])
        offset += t.nbytes
    seconds = time.perf_counter() - started
    del src
    mm.close()
    return {"seconds": seconds}


# -- storage ----------------------------------------------------------------------------------


def resident_fraction(path: str) -> float:
    """Share of the file's pages in the page cache (mincore)."""
    import numpy as np

    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    pages = -(-size // mmap.PAGESIZE)
    vec = ctypes.create_string_buffer(pages)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mm:
        view = np.frombuffer(mm, dtype=np.uint8)  # a read-only mmap's address, without a copy
        rc = libc.mincore(view.ctypes.data, size, vec)
        del view  # the mmap cannot close while exported
    if rc != 0:
        return float("nan")
    return sum(b & 1 for b in vec.raw) / pages


def evict(path: str) -> float:
    """Drop the file from the page cache (posix_fadvise DONTNEED); returns what stays resident."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)


def warm(path: str) -> float:
    """Read the whole file once so it sits in the page cache; returns the resident share."""
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass
    return resident_fraction(path)


@case
def safetensors_load(args: Args) -> dict[str, Any]:
    """Fill a freshly allocated model from the checkpoint, tensor by tensor, as vLLM's default loader does."""
    from safetensors import safe_open

    path = args["path"]
    resident = evict(path) if args["cold"] else warm(path)
    specs = _specs(args)
    started = time.perf_counter()
    dst = empty_like_specs(specs)
    with safe_open(path, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            dst[name].copy_(f.get_tensor(name))
    return {"seconds": time.perf_counter() - started, "resident_before": resident}


@case
def http_storage(args: Args) -> dict[str, Any]:
    """Storage over the network: GET the safetensors file over HTTP and build fresh tensors from it."""
    import urllib.request

    from safetensors.torch import load

    started = time.perf_counter()
    with urllib.request.urlopen(args["url"], timeout=args.get("timeout_s", 300)) as response:  # noqa: S310
        body = response.read()
    tensors = load(body)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": len(body), "tensors": len(tensors)}


# -- peerload ---------------------------------------------------------------------------------


@case
def seed(args: Args) -> dict[str, Any]:
    """A peerload seed holding the checkpoint's tensors; writes `ready` and serves until stdin closes."""
    from peerload.seed.publisher import publish

    tensors = make_tensors(_specs(args))
    pub = publish(tensors, _identity(args), settings=_settings(args))
    # Region checksums for the bench's own byte check (the seed publishes part checksums).
    return _serve(args, {"worker_id": pub.worker_id, "checksums": _region_sums(tensors)}, pub.close)


@case
def target(args: Args) -> dict[str, Any]:
    """A fresh replica: allocate the model, load it from the seed (verified unless told not to)."""
    from peerload.loader import load_into

    specs = _specs(args)
    started = time.perf_counter()
    dst = empty_like_specs(specs)
    result = load_into(dst, _identity(args), settings=_settings(args), publish=False)
    seconds = time.perf_counter() - started
    if result.source == "storage":
        raise RuntimeError(f"loaded from storage, not a peer: {result.attempts}")
    expected = json.loads(Path(args["seed_ready"]).read_text())["checksums"]
    return {"seconds": seconds, "phases": result.seconds, "bytes_ok": _region_sums(dst) == expected}


def _seed_record(settings: Any, identity: Any) -> Any:
    """The READY seed's coordinator record (one seed per model name in a bench run)."""
    from peerload.client import CoordinatorClient, SourceStatus

    with CoordinatorClient(settings.coordinator) as client:
        ref = client.list_sources(identity, status=SourceStatus.READY)[0]
        record = client.get_metadata(ref.mx_source_id, ref.worker_id)
    assert record is not None
    return record


def _endpoint(record: Any) -> Any:
    from peerload.transport import EndpointInfo

    return EndpointInfo(record.agent_name, record.nixl_metadata, record.transfer_engine_session_id)


@case
def setup(args: Args) -> dict[str, Any]:
    """Setup alone in a fresh process: transport creation, registration, handshake (connect)."""
    from peerload.tensors import collect
    from peerload.transport import make_transport

    settings, identity = _settings(args), _identity(args)
    t0 = time.perf_counter()
    transport = make_transport(settings, f"bench-setup-{os.getpid()}")
    t1 = time.perf_counter()
    dst = empty_like_specs(_specs(args))
    transport.register(collect(dst).regions)
    t2 = time.perf_counter()
    record = _seed_record(settings, identity)
    t3 = time.perf_counter()
    transport.connect(_endpoint(record))
    t4 = time.perf_counter()
    transport.close()
    return {
        "seconds": (t2 - t0) + (t4 - t3),
        "agent": t1 - t0,
        "register": t2 - t1,
        "discover": t3 - t2,
        "connect": t4 - t3,
    }


@case
def wire(args: Args) -> dict[str, Any]:
    """The transport alone: READ every tensor from the seed into resident memory (no faults, no hashing)."""
    from peerload.seed_client import fetch_manifest
    from peerload.tensors import collect
    from peerload.transport import ReadOp, make_transport, prefault

    settings, identity = _settings(args), _identity(args)
    ready = json.loads(Path(args["seed_ready"]).read_text())
    dst = empty_like_specs(_specs(args))
    prefault(dst.values())  # resident pages: the timed read pays for the wire, not for page faults
    record = _seed_record(settings, identity)
    remote = fetch_manifest(record.worker_grpc_endpoint, ready["worker_id"], settings.rpc_timeout_s).region_map()
    regions = collect(dst).regions
    ops = [ReadOp(remote[n].addr, flat.data_ptr(), remote[n].size) for n, flat in regions.items()]
    transport = make_transport(settings, f"bench-wire-{os.getpid()}")
    try:
        transport.register(regions)
        peer = _endpoint(record)
        transport.connect(peer)
        # The first read also sets up the connection lazily; the second is the wire's steady rate.
        t0 = time.perf_counter()
        transport.read(peer, ops, timeout_s=args["timeout_s"])
        t1 = time.perf_counter()
        transport.read(peer, ops, timeout_s=args["timeout_s"])
        t2 = time.perf_counter()
    finally:
        transport.close()
    return {"seconds": t2 - t1, "first_read": t1 - t0, "bytes_ok": _region_sums(dst) == ready["checksums"]}


@case
def digest(args: Args) -> dict[str, Any]:
    """Checksum every part of resident tensors with one algorithm, or copy them ("copy"): on CPU here."""
    from peerload.parts import plan_parts
    from peerload.tensors import collect, part_checksums

    regions = collect(make_tensors(_specs(args))).regions
    algorithm = args["algorithm"]
    if algorithm == "copy":
        dst = {n: torch.empty_like(r) for n, r in regions.items()}
        for n, r in regions.items():  # faults the destination in: the timed copy is resident to resident
            dst[n].copy_(r)
        t0 = time.perf_counter()
        for n, r in regions.items():
            dst[n].copy_(r)
        return {"seconds": time.perf_counter() - t0}
    parts = plan_parts(((n, r.numel()) for n, r in regions.items()), args.get("part_bytes", 64 << 20))
    part_checksums(regions, parts[:1], choice=algorithm)  # weights and pools built outside the timing
    t0 = time.perf_counter()
    part_checksums(regions, parts, choice=algorithm)
    return {"seconds": time.perf_counter() - t0, "parts": float(len(parts))}


# -- the official ModelExpress client -----------------------------------------------------------


class CpuBackend:
    """A CPU stand-in for ModelExpress' AcceleratorBackend: NIXL DRAM, no-op device calls."""

    name = "cpu"
    torch_device_type = "cpu"
    nixl_mem_type = "DRAM"

    def set_device(self, device_id: int) -> None: ...
    def current_device(self) -> int:
        return 0

    def synchronize(self, device_id: int | None = None) -> None: ...
    def empty_cache(self) -> None: ...
    def torch_device(self, device_id: int) -> torch.device:
        return torch.device("cpu")

    def is_accel_tensor(self, tensor: torch.Tensor) -> bool:
        return False

    def supports_rdma_p2p(self) -> bool:
        return True

    def supports_pool_reg(self) -> bool:
        return False

    def supports_vmm(self) -> bool:
        return False

    def supports_gds(self) -> bool:
        return False


def _mx_manager(name: str) -> Any:
    from modelexpress.nixl_transfer import NixlTransferManager

    manager = NixlTransferManager(name, 0, accelerator_backend=CpuBackend())
    manager.initialize()
    return manager


@case
def mx_seed(args: Args) -> dict[str, Any]:
    """ModelExpress' NixlTransferManager serving the same tensors (its defaults: a progress thread)."""
    tensors = make_tensors(_specs(args))
    manager = _mx_manager(f"mx-seed-{os.getpid()}")
    metadata = manager.register_tensors(tensors)
    return _serve(
        args,
        {
            "metadata": base64.b64encode(metadata).decode(),
            "tensors": [[d.name, d.addr, d.size, d.device_id, d.dtype] for d in manager.tensor_descriptors],
            "checksums": _region_sums(tensors),
        },
        manager.shutdown,
    )


@case
def mx_target(args: Args) -> dict[str, Any]:
    """A fresh ModelExpress target: allocate, create and register its agent, READ everything."""
    from modelexpress.types import TensorDescriptor

    ready = json.loads(Path(args["seed_ready"]).read_text())
    descriptors = [TensorDescriptor(*row) for row in ready["tensors"]]
    metadata = base64.b64decode(ready["metadata"])
    started = time.perf_counter()
    dst = empty_like_specs(_specs(args))
    manager = _mx_manager(f"mx-target-{os.getpid()}")
    t1 = time.perf_counter()
    manager.register_tensors(dst)
    t2 = time.perf_counter()
    _, _, transfer = manager.receive_from_source(metadata, descriptors, timeout_seconds=args["timeout_s"])
    seconds = time.perf_counter() - started
    ok = _region_sums(dst) == ready["checksums"]
    manager.shutdown()
    return {"seconds": seconds, "agent": t1 - started, "register": t2 - t1, "receive": transfer, "bytes_ok": ok}


def main(argv: list[str]) -> int:
    name, args_path, out_path = argv
    args = json.loads(Path(args_path).read_text())
    # ModelExpress runs as shipped but for this one setting: without it every UCX process
    # segfaults at exit here. peerload's transports apply all of UCX_DEFAULTS themselves.
    os.environ.setdefault("UCX_MODULES", UCX_DEFAULTS["UCX_MODULES"])
    result = CASES[name](args)
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
