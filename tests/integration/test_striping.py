"""Striped loads on loopback: real `peerload seed` processes, a real target process, real NIXL reads
from several seeds at once (several reader threads posting on one agent); bit-exact checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from peerload._process import stop_process, wait_ready_file
from peerload.client import CoordinatorClient, SourceStatus
from peerload.seed_client import SeedClient
from peerload.tensors import sha256_of

REPO = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).with_name("loader_peers.py")
NAME = "test/striped"
PART = 1 << 20  # seeds cut parts of 1 MiB: a 24 MiB model is 24 parts, 8 per seed with 3 seeds


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A bare safetensors file of ~24 MiB: big tensors cut into parts, small ones grouped."""
    gen = torch.Generator().manual_seed(7)
    tensors = {f"layer{i}.weight": torch.randn(1024, 1024, generator=gen) for i in range(6)}
    tensors.update({f"layer{i}.bias": torch.randn(1000, generator=gen) for i in range(6)})
    tensors["step"] = torch.arange(3, dtype=torch.int64)
    path = tmp_path_factory.mktemp("striped") / "model.safetensors"
    save_file(tensors, str(path))
    return path, {n: sha256_of(t) for n, t in tensors.items()}


class Seeds:
    """`peerload seed` processes with PART-sized parts; stopped after the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, model: Path, coordinator: str, **env: str) -> dict[str, Any]:
        i = len(self.procs)
        ready = self.tmp / f"seed-{i}.ready"
        full_env = {**os.environ, "PEERLOAD_CHUNK_BYTES": str(PART), "PEERLOAD_HEARTBEAT_INTERVAL_S": "0.5", **env}
        with open(self.tmp / f"seed-{i}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "peerload.cli.main", "seed", str(model), "--model-name", NAME,
                 "--coordinator", coordinator, "--ready-file", str(ready)],
                stdout=log, stderr=log, cwd=REPO, env=full_env,
            )  # fmt: skip
        self.procs.append(proc)
        info = wait_ready_file(proc, ready, timeout_s=90)
        return {**info, "ready_file": str(ready), "proc": proc}

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout_s=30)


@pytest.fixture
def seeds(tmp_path: Path) -> Iterator[Seeds]:
    s = Seeds(tmp_path)
    yield s
    s.stop_all()


def run_target(tmp: Path, model: Path, coordinator: str, *extra: str) -> dict[str, Any]:
    out = tmp / f"target-{time.monotonic_ns()}.json"
    proc = subprocess.run(
        [sys.executable, str(PEERS), "target", str(model), NAME, coordinator, str(out), "--chunk-bytes", str(PART),
         *extra],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("count", [2, 3])
def test_striped_over_several_seeds_is_bit_exact(count, coordinator, seeds, checkpoint, tmp_path):
    model, expected = checkpoint
    started = [seeds.start(model, coordinator.address)["worker_id"] for _ in range(count)]
    report = run_target(tmp_path, model, coordinator.address)
    assert report["sha256"] == expected
    by_source = {s["worker_id"]: s for s in report["sources"]}
    assert set(by_source) == set(started), report["attempts"]
    # every seed served a share, the shares add up, nothing was read twice or from storage
    assert all(s["bytes"] > 0 and s["parts"] > 0 and not s["error"] for s in by_source.values()), by_source
    assert sum(s["bytes"] for s in by_source.values()) == report["bytes"]
    assert report["restarted_bytes"] == 0 and report["storage_bytes"] == 0
    assert all(s["transport"] == "nixl" and s["network"]["interface"] == "lo" for s in by_source.values())


def test_seed_killed_mid_transfer_only_its_unfinished_parts_are_re_read(coordinator, seeds, checkpoint, tmp_path):
    model, expected = checkpoint
    infos = [seeds.start(model, coordinator.address) for _ in range(3)]
    # kill whichever seed first has delivered 2 MiB (2 verified parts), while it still has parts left
    kill = [arg for info in infos for arg in ("--kill-ready", info["ready_file"])]
    report = run_target(tmp_path, model, coordinator.address, *kill, "--kill-after-bytes", str(2 * PART))
    assert len(report["killed"]) == 1, "no seed was killed mid-transfer"
    dead = report["killed"][0]
    assert report["sha256"] == expected
    assert report["storage_bytes"] == 0 and report["source"] not in ("storage", dead)
    by_source = {s["worker_id"]: s for s in report["sources"]}
    assert "TransportError" in by_source[dead]["error"], by_source[dead]
    assert by_source[dead]["bytes"] >= 2 * PART, "the parts it delivered before dying are kept"
    share = report["bytes"] / 3
    assert 0 < report["restarted_bytes"] < share, report["restarted_bytes"]
    assert sum(s["bytes"] for s in by_source.values()) == report["bytes"]


def test_seed_at_its_reader_cap_makes_the_target_use_another(coordinator, seeds, checkpoint, tmp_path):
    model, expected = checkpoint
    capped = seeds.start(model, coordinator.address, PEERLOAD_SEED_MAX_READERS="1")
    free = seeds.start(model, coordinator.address)
    with CoordinatorClient(coordinator.address) as client:
        record = client.get_metadata(capped["source_id"], capped["worker_id"])
        assert record is not None
        with SeedClient(record.worker_grpc_endpoint, capped["worker_id"], timeout_s=10) as seed:
            lease = seed.acquire_lease("test-holder")  # the capped seed's one reader slot is taken
            assert lease
            # its heartbeats now report one reader
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                loads = {r.worker_id: r.source_load for r in client.list_sources(status=SourceStatus.READY)}
                if loads.get(capped["worker_id"]) == 1.0:
                    break
                time.sleep(0.2)
            assert loads.get(capped["worker_id"]) == 1.0 and not loads.get(free["worker_id"]), loads
            report = run_target(tmp_path, model, coordinator.address)
            assert seed.release_lease(lease)
    assert report["sha256"] == expected
    assert [s["worker_id"] for s in report["sources"]] == [free["worker_id"]]
    refused = [a for a in report["attempts"] if capped["worker_id"] in a]
    assert refused and "LeaseRefused" in refused[0] and "maximum of 1 readers" in refused[0], report["attempts"]
