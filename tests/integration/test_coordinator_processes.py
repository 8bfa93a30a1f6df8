"""`peerload serve` / `peerload sources` as real processes: the official client, shared Redis, restarts."""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peerload.client import CoordinatorClient, SourceStatus, TensorInfo, WorkerInfo
from peerload.identity import SourceIdentity
from peerload.wire import PEERLOAD_MANIFEST_KEY

MX_SCENARIO = Path(__file__).resolve().parents[1] / "mx" / "client_scenario.py"
QWEN = SourceIdentity(model_name="Qwen/Qwen3-0.6B", tensor_parallel_size=2, dtype="bfloat16")


def test_official_modelexpress_client_against_peerload_serve(serve_process: Callable[..., Any]) -> None:
    if importlib.util.find_spec("modelexpress") is None:
        pytest.skip("modelexpress==0.7.0 is not installed; `make install` adds it")
    server = serve_process()
    # The official client runs in its own process: its stubs and ours cannot share one.
    out = subprocess.run(
        [sys.executable, str(MX_SCENARIO), server.address], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["published_ids"] == [report["expected_id"]]
    assert report["listed_all"] == ["mx-worker-0", "mx-worker-1"]
    assert report["listed_ready_before"] == []
    assert report["update_ok"] is True
    assert report["listed_ready_after"] == ["mx-worker-0"]
    assert report["ready_load"] == [0.25]
    assert report["listed_unfiltered_no_identity"] == 2
    assert report["get"]["found"] and report["get"]["status"] == "SOURCE_STATUS_READY"
    assert report["get"]["nixl"] == "nixl-agent-0" and report["get"]["agent"] == "agent-0"
    assert report["get"]["tensors"] == ["w"] and report["get"]["identity_model"] == "Qwen/Qwen3-0.6B"
    assert report["get"]["updated_at"] > 0
    assert report["get_unknown_found"] is False and report["update_unknown_ok"] is False
    assert server.stop() == 0


def test_sources_json_and_table(serve_process: Callable[..., Any], run_peerload: Callable[..., Any]) -> None:
    server = serve_process()
    with CoordinatorClient(server.address, timeout_s=5) as client:
        sid = client.publish(QWEN, WorkerInfo(rank=1, nixl_metadata=b"n", tensors=[TensorInfo("w", 1, 2)]), "seed-1")
        client.update_status(sid, "seed-1", 1, SourceStatus.READY)
        client.publish(QWEN, WorkerInfo(rank=0, transfer_engine_session_id="h:1"), "seed-0")
        peerload_worker = WorkerInfo(
            rank=2, nixl_metadata=b"n", worker_grpc_endpoint="h:2", topology={PEERLOAD_MANIFEST_KEY: "h:2"}
        )
        client.publish(QWEN, peerload_worker, "seed-2")
    out = run_peerload("sources", "--coordinator", server.address, "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["worker_id"]: row for row in json.loads(out.stdout)}
    assert rows["seed-1"] | {"age_s": 0, "updated_at_ms": 0} == {
        "model": "Qwen/Qwen3-0.6B",
        "mx_source_id": sid,
        "worker_id": "seed-1",
        "worker_rank": 1,
        "status": "READY",
        "kind": "modelexpress",
        "mode": "centralized",
        "updated_at_ms": 0,
        "age_s": 0,
        "transport": "nixl",
        "accelerator": "",
        "source_load": None,
        "tensors": 1,
        "parts": None,  # only a peerload worker still loading has held/total parts
    }
    assert rows["seed-0"]["status"] == "INITIALIZING" and rows["seed-0"]["transport"] == "transfer_engine"
    assert (rows["seed-2"]["kind"], rows["seed-2"]["mode"]) == ("peerload", "p2p")
    table = run_peerload("sources", env={"PEERLOAD_COORDINATOR": server.address})
    assert table.returncode == 0, table.stderr
    for text in ("seed-1", sid, "READY", "INITIALIZING", "nixl", "transfer_engine", "modelexpress", "peerload (p2p)"):
        assert text in table.stdout


def test_cli_reports_unreachable_coordinator_in_one_line(
    run_peerload: Callable[..., Any], free_port: Callable[[], int]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    out = run_peerload("sources", "--coordinator", address, env={"PEERLOAD_RPC_RETRIES": "0"})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("Error: coordinator at " + address) and "ListSources" in lines[0]
    assert "UNAVAILABLE" in lines[0] and "PEERLOAD_DEBUG=1" in lines[-1]
    assert f"hint: is `peerload serve` running at {address}?" in out.stderr
    assert "Traceback" not in out.stderr


def test_ctrl_c_exits_130_without_a_traceback(free_port: Callable[[], int]) -> None:
    # A listener that never answers keeps the RPC waiting until SIGINT arrives.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "peerload.cli.main", "sources", "--coordinator", address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        silent.settimeout(60)  # a bound on the wait, only so that a CLI that never dials fails the test
        conn, _ = silent.accept()  # the CLI dialled: its RPC is under way
        with conn:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_two_coordinators_share_redis_and_restart_loses_nothing(
    redis_url: str, serve_process: Callable[..., Any]
) -> None:
    args = ("--store", "redis", "--redis-url", redis_url, "--heartbeat-timeout", "30")
    a, b = serve_process(*args), serve_process(*args)
    with CoordinatorClient(a.address, timeout_s=5) as via_a, CoordinatorClient(b.address, timeout_s=5) as via_b:
        sid = via_a.publish(QWEN, WorkerInfo(rank=0, nixl_metadata=b"meta"), "w0")
        assert [r.worker_id for r in via_b.list_sources(QWEN)] == ["w0"]
        assert via_b.update_status(sid, "w0", 0, SourceStatus.READY)
        assert via_a.get_metadata(sid, "w0").status is SourceStatus.READY
    assert a.stop() == 0
    restarted = serve_process(*args, port=int(a.address.rsplit(":", 1)[1]))
    with CoordinatorClient(restarted.address, timeout_s=5) as client:
        (ref,) = client.list_sources(QWEN, status=SourceStatus.READY)
        assert ref.worker_id == "w0"
        assert client.get_metadata(sid, "w0").nixl_metadata == b"meta"
    assert b.stop() == 0 and restarted.stop() == 0
