"""Both transports between real processes on loopback: bit-exact, chunked, failures, teardown."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # spawned children import the peer bodies by name
import transport_peers as peers  # noqa: E402

from peerload import components  # noqa: E402
from peerload._process import free_port  # noqa: E402
from peerload.components import ComponentSpec  # noqa: E402
from peerload.errors import (  # noqa: E402
    ConfigError,
    MissingExtraError,
    PeerMetadataError,
    TransferCancelled,
    TransportError,
)
from peerload.transport import (  # noqa: E402
    EndpointInfo,
    ReadOp,
    create_transport,
)

KINDS = ["nixl", "transfer_engine"]
CTX = mp.get_context("spawn")
JOIN_S = 60


class Peer:
    """A spawned seed or target with a pipe; joins and checks the exit code on `finish`."""

    def __init__(self, fn, *args) -> None:
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=fn, args=(child, *args), daemon=True)
        self.proc.start()

    def recv(self, timeout: float = JOIN_S):
        if not self.conn.poll(timeout):
            raise AssertionError(f"no reply within {timeout} s from pid {self.proc.pid}")
        return self.conn.recv()

    def finish(self) -> int | None:
        self.conn.send("stop")
        assert self.recv() == "closed"
        self.proc.join(JOIN_S)
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(JOIN_S)
        assert self.proc.exitcode == -9


@pytest.fixture
def cleanup():
    procs: list[Peer] = []
    yield procs
    for p in procs:
        if p.proc.is_alive():
            p.proc.kill()
            p.proc.join(10)


def start(cleanup, fn, *args) -> Peer:
    p = Peer(fn, *args)
    cleanup.append(p)
    return p


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_500_mixed_tensors_arrive_bit_exact_and_large_one_is_chunked(kind, cleanup):
    n, seed, big = 500, 7, 64
    src = start(cleanup, peers.seed_main, kind, n, seed, big)
    # 16 MiB chunks: the 64 MiB tensor becomes 4 requests and small tensors share requests.
    dst = start(cleanup, peers.target_main, kind, n, seed, big, {"chunk_bytes": 16 << 20})
    published = src.recv()
    assert dst.recv() == "ready"
    dst.conn.send({"info": published["info"], "regions": published["regions"]})
    result = dst.recv()
    assert result["ok"], result["tb"]
    pairs = zip(published["regions"], published["digests"], result["digests"], strict=True)
    mismatched = [r.name for r, a, b in pairs if a != b]
    assert not mismatched
    total = sum(r.size for r in published["regions"])
    assert 200 << 20 < total < 320 << 20
    assert sum(r.size == 0 for r in published["regions"]) >= 5
    assert result["progress_bytes"] == total
    assert result["progress_calls"] >= total // (16 << 20)
    if kind == "nixl":  # an idle seed polls slowly: well under 5% of a core
        src.conn.send("cpu")
        assert src.recv() < 0.1
    assert dst.finish() == 0
    assert src.finish() == 0


@pytest.mark.timeout(120)
def test_nixl_metadata_fetched_from_the_seeds_listen_thread(cleanup):
    """ModelExpress P2P metadata mode: no blob, the target asks the seed's NIXL listen thread."""
    n, seed, big = 40, 5, 8
    src = start(cleanup, peers.seed_main, "nixl", n, seed, big, {"listen_port": 0})
    dst = start(cleanup, peers.target_main, "nixl", n, seed, big, {"listen_port": 0, "connect_timeout_s": 3})
    plain = start(cleanup, peers.target_main, "nixl", n, seed, big, {})
    published = src.recv()
    assert dst.recv() == "ready" and plain.recv() == "ready"
    assert published["metadata_port"] > 0
    info = EndpointInfo(published["info"].agent_name, metadata_endpoint=f"127.0.0.1:{published['metadata_port']}")
    assert info.transport == "nixl"
    dst.conn.send({"info": info, "regions": published["regions"]})
    result = dst.recv()
    assert result["ok"], result["tb"]
    assert result["digests"] == published["digests"]
    # Nobody listens there: the fetch gives up within its bound, naming the endpoint.
    dead = EndpointInfo("nobody", metadata_endpoint=f"127.0.0.1:{free_port()}")
    dst.conn.send({"info": dead, "regions": published["regions"][:1], "timeout_s": 20})
    result = dst.recv()
    assert not result["ok"] and result["error"] == "TransportError", result
    assert "listen thread" in result["message"] and result["peer"] == "nobody"
    # An endpoint without its own listen thread cannot fetch, and says how to fix it.
    plain.conn.send({"info": info, "regions": published["regions"][:1]})
    result = plain.recv()
    assert not result["ok"] and "listen_port" in result["message"], result
    assert plain.finish() == 0 and dst.finish() == 0 and src.finish() == 0


@pytest.mark.timeout(60)
def test_nixl_listen_port_taken_is_named():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransportError, match=f"listen port {port}"):
            create_transport("nixl", "taken", loopback=True, listen_port=port)
    with create_transport("nixl", "free", loopback=True, listen_port=0) as tr:
        assert tr.metadata_port and tr.metadata_port != port


def _failed_read_then_reuse(kind: str, cleanup, *, during: bool) -> None:
    n, seed, big = 60, 11, 32
    dst = start(
        cleanup,
        peers.target_main,
        kind,
        n,
        seed,
        big,
        {"chunk_bytes": 1 << 20, "max_inflight": 1} if kind == "nixl" else {"chunk_bytes": 1 << 20},
    )
    doomed = start(cleanup, peers.seed_main, kind, n, seed, big)
    published = doomed.recv()
    assert dst.recv() == "ready"
    if not during:
        doomed.kill()
    dst.conn.send(
        {"info": published["info"], "regions": published["regions"], "timeout_s": 20, "pause_on_first": during}
    )
    if during:
        assert dst.recv() == "paused"
        doomed.kill()
        dst.conn.send("go")
    result = dst.recv(timeout=60)  # a bound on the wait only: the read's own timeout is 20 s
    assert not result["ok"], "read from a killed seed succeeded"
    assert result["error"] in ("TransportError", "TransferTimeout"), result["tb"]
    assert result["peer"] and result["peer"] in result["message"]
    assert result["error"] == "TransportError", f"dead peer only noticed at the timeout: {result['message']}"
    # The same endpoint then loads from a healthy seed.
    healthy = start(cleanup, peers.seed_main, kind, n, seed, big)
    published = healthy.recv()
    dst.conn.send({"info": published["info"], "regions": published["regions"], "timeout_s": 30})
    result = dst.recv()
    assert result["ok"], result["tb"]
    assert result["digests"] == published["digests"]
    assert dst.finish() == 0
    assert healthy.finish() == 0


@pytest.mark.timeout(120)
def test_nixl_first_reads_from_several_seeds_at_once_push_into_one_staging_memory(cleanup):
    # Several reads starting together on a fresh endpoint (a swarm target's first round) each
    # found no staging memory and registered their own: seeds then wrote into freed memory and
    # the reads stalled. All must share one registration and arrive bit-exact.
    sets = [(40, 11 + i) for i in range(4)]
    seeds = [start(cleanup, peers.seed_main, "nixl", n, seed, 8) for n, seed in sets]
    dst = start(cleanup, peers.concurrent_target_main, "nixl", sets, 8)
    published = [s.recv() for s in seeds]
    assert dst.recv() == "ready"
    dst.conn.send([{"info": p["info"], "regions": p["regions"]} for p in published])
    result = dst.recv()
    assert not result["errors"], result["errors"][0]
    assert result["digests"] == [p["digests"] for p in published]
    assert result["staging_registrations"] == 1  # pushes were used, into one staging memory
    assert dst.finish() == 0
    for s in seeds:
        assert s.finish() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_seed_killed_before_transfer_then_endpoint_reused(kind, cleanup):
    _failed_read_then_reuse(kind, cleanup, during=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_seed_killed_during_transfer_then_endpoint_reused(kind, cleanup):
    _failed_read_then_reuse(kind, cleanup, during=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_stalled_seed_times_out_naming_it(kind, cleanup):
    src = start(cleanup, peers.seed_main, kind, 20, 3, 8)
    dst = start(cleanup, peers.target_main, kind, 20, 3, 8, {})
    published = src.recv()
    assert dst.recv() == "ready"
    os.kill(published["pid"], signal.SIGSTOP)  # alive but never answers
    try:
        dst.conn.send({"info": published["info"], "regions": published["regions"], "timeout_s": 2})
        result = dst.recv(timeout=20)
        assert result["error"] == "TransferTimeout", result.get("tb")
        # The read's own deadline ended it (TransferTimeout is raised only there), at its 2 s.
        assert "within 2 s" in result["message"] and result["peer"] in result["message"]
        assert dst.finish() == 0
    finally:
        os.kill(published["pid"], signal.SIGCONT)
    assert src.finish() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_refused_and_bad_metadata_rejected(kind):
    other = "transfer_engine" if kind == "nixl" else "nixl"
    with create_transport(kind, "a", loopback=True) as a, create_transport(kind, "b", loopback=True) as b:
        with pytest.raises(ConfigError, match="not contiguous"):
            a.register({"w": torch.zeros(4, 6).t()})
        assert a.register({"empty": torch.zeros(0)})[0].size == 0
        dst = torch.zeros(8, dtype=torch.uint8)
        a.register({"dst": dst})
        real = b.endpoint_info()
        bad = [
            EndpointInfo("x", nixl_metadata=b"garbage" * 9)
            if kind == "nixl"
            else EndpointInfo("x", transfer_engine_session_id="no-port-here"),
            EndpointInfo("x", nixl_metadata=b"")
            if kind == "nixl"
            else EndpointInfo("x", transfer_engine_session_id="127.0.0.1:99999"),
            EndpointInfo("x", nixl_metadata=b"{}")
            if other == "nixl"
            else EndpointInfo("x", transfer_engine_session_id="127.0.0.1:1"),  # other transport's kind
        ]
        if kind == "nixl":
            half = real.nixl_metadata[: len(real.nixl_metadata) // 2]
            bad.append(EndpointInfo(real.agent_name, nixl_metadata=half))
            bad.append(EndpointInfo("someone-else", nixl_metadata=real.nixl_metadata))  # name mismatch
        for info in bad:
            with pytest.raises(PeerMetadataError):
                a.read(info, [ReadOp(0, dst.data_ptr(), 8)], timeout_s=5)
        a.read(real, [ReadOp(0, 0, 0)], timeout_s=5)  # zero-byte ops are skipped


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_in_process_reregister_overlap_cancel_and_deregister(kind):
    src = torch.arange(1 << 20, dtype=torch.int32)  # 4 MiB
    with (
        create_transport(kind, "seed", loopback=True) as seed,
        create_transport(kind, "target", loopback=True, chunk_bytes=1 << 20) as target,
    ):
        (region,) = seed.register({"src": src})
        info = seed.endpoint_info()
        flat = torch.zeros(2 << 20, dtype=torch.int32)
        target.register({"flat": flat})
        target.register({"flat": flat})  # same name again: must stay registered
        view = flat[1 << 20 :]
        (local,) = target.register({"view": view})  # overlaps "flat"
        seen: list[int] = []
        target.read(info, [ReadOp(region.addr, local.addr, region.size)], timeout_s=20, progress=seen.append)
        assert torch.equal(view, src) and sum(seen) == region.size and len(seen) == 4
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(TransferCancelled):
            target.read(info, [ReadOp(region.addr, flat.data_ptr(), region.size)], timeout_s=20, cancel=cancel)
        target.deregister(["view"])
        target.read(info, [ReadOp(region.addr, flat.data_ptr(), region.size)], timeout_s=20)  # after cancel
        assert torch.equal(flat[: 1 << 20], src)


def test_unknown_kind_and_missing_package_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="transfer_engine"):
        create_transport("rdma-magic", "x")
    monkeypatch.setitem(
        components.TRANSPORTS,
        "fake",  # undone after the test
        ComponentSpec("peerload_no_such_module", "Fake", "fake-pkg", "fake"),
    )
    with pytest.raises(MissingExtraError, match=r"peerload\[fake\]"):
        create_transport("fake", "x")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "shadowed", "extra"), [("transfer_engine", "mooncake", "mooncake"), ("nixl", "nixl_cu12", "nixl")]
)
def test_missing_package_names_pip_extra(kind, shadowed, extra, tmp_path):
    # A package on PYTHONPATH that fails to import stands in for one that is not installed.
    (tmp_path / shadowed).mkdir()
    (tmp_path / shadowed / "__init__.py").write_text(f"raise ImportError('no {shadowed} here')\n")
    code = textwrap.dedent(f"""
        from peerload.errors import MissingExtraError
        from peerload.transport import create_transport
        try:
            create_transport({kind!r}, "x")
        except MissingExtraError as e:
            print("MISSING", e.extra, e)
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert f"MISSING {extra}" in out.stdout and f"peerload[{extra}]" in out.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("push", [True, False])
def test_nixl_push_setting_reaches_the_endpoint(push, monkeypatch):
    # PEERLOAD_NIXL_PUSH=false is the way back to READs: the reader must then stage nothing.
    from peerload.settings import Settings
    from peerload.transport import make_transport

    monkeypatch.setenv("UCX_NET_DEVICES", "lo")
    settings = Settings.load(env={"PEERLOAD_NIXL_PUSH": str(push).lower()})
    src = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8)
    with make_transport(settings, "seed") as seed, make_transport(settings, "target") as target:
        (region,) = seed.register({"src": src})
        dst = torch.zeros_like(src)
        (local,) = target.register({"dst": dst})
        target.read(seed.endpoint_info(), [ReadOp(region.addr, local.addr, region.size)], timeout_s=20)
        assert torch.equal(dst, src)
        assert target._staging_registrations == (1 if push else 0)
