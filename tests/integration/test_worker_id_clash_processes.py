"""Two real `peerload seed` processes with one --worker-id, over a real coordinator (gRPC on loopback).

The rule (docs/how-it-works.md, "One worker id, one process"): the newest publish wins and both sides
are told; a process that restarts with its id after the old one stopped takes it back quietly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peerload.client import CoordinatorClient, SourceStatus
from peerload.wire import PEERLOAD_MANIFEST_KEY

MODEL = "test/clash"


def ready_workers(address: str) -> list[tuple[str, str]]:
    with CoordinatorClient(address, timeout_s=5, retries=0) as client:
        refs = client.list_sources(model_name=MODEL, status=SourceStatus.READY)
    return [(r.worker_id, r.topology.get(PEERLOAD_MANIFEST_KEY, "")) for r in refs]


def test_second_live_seed_with_the_same_worker_id_wins_and_the_first_stops(
    tiny_model: Any, coordinator_factory: Any, seed_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERLOAD_HEARTBEAT_INTERVAL_S", "0.3")  # the first seed learns it within a beat
    coordinator = coordinator_factory(heartbeat_timeout_s=10)
    path: Path = tiny_model("bert")
    first = seed_process(path, coordinator.address, "--worker-id", "seed-x", name=MODEL)
    [(_, first_endpoint)] = ready_workers(coordinator.address)

    second = seed_process(path, coordinator.address, "--worker-id", "seed-x", name=MODEL)
    # The first seed's next heartbeat is refused: it says so and exits 1 without marking STALE.
    assert first["proc"].wait(timeout=60) == 1, first["log"].read_text()[-3000:]  # a bound only
    first_log = first["log"].read_text()
    assert "Error: worker id 'seed-x' of source" in first_log and "published since by another process" in first_log
    assert "hint: two live processes had one --worker-id; this one stopped" in first_log
    assert "stopped heartbeating" in first_log  # the publisher's WARNING
    # The second seed was told whose live record it replaced, and it stays the listed one.
    second_log = second["log"].read_text()
    assert "worker id seed-x was in use: the live record of worker 'seed-x' (READY" in second_log, second_log
    assert f"at {first_endpoint})" in second_log
    [(worker, endpoint)] = ready_workers(coordinator.address)
    assert worker == "seed-x" and endpoint != first_endpoint

    # A restart: the second stops (marks its record STALE), a third takes the id back, no warning.
    assert second["proc"].terminate() is None and second["proc"].wait(timeout=60) == 0
    third = seed_process(path, coordinator.address, "--worker-id", "seed-x", name=MODEL)
    assert "was in use" not in third["log"].read_text()
    [(worker, endpoint)] = ready_workers(coordinator.address)
    assert worker == "seed-x" and endpoint not in (first_endpoint, "")
