"""Mixed fleets with the official modelexpress 0.7.0 client, on CPU (its NIXL manager with the
bench's DRAM backend), through a real coordinator: official targets read `peerload seed`
processes, `peerload load` reads official seeds, in P2P metadata and centralized mode.

The official client runs in its own processes (tests/mx/mx_peer.py): its p2p_pb2 and peerload's
stubs cannot share one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from peerload._process import peerload_cmd, spawn, stop_process, wait_ready_file
from peerload.adapters import hf
from peerload.cli._model_options import model_options
from peerload.client import CoordinatorClient
from peerload.errors import SeedServiceError
from peerload.identity import SourceIdentity
from peerload.tensors import module_tensors, sha256_of
from peerload.worker_client import WorkerClient

sys.path.insert(0, str(Path(__file__).parent))
from test_loader import NAME, make_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MX_PEER = REPO / "tests" / "mx" / "mx_peer.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("modelexpress") is None,
    reason="modelexpress==0.7.0 (the official client) is not installed; `make install` adds it",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def disk_hashes(model_dir: Path) -> dict[str, str]:
    return {n: sha256_of(t) for n, t in module_tensors(hf.load_model(model_dir)).items()}


def identity_of(model_dir: Path) -> SourceIdentity:
    """The identity `peerload seed/load` derive for this checkpoint."""
    return model_options(model_dir, NAME, None, None, "", 1, 0, 1, 0, 1, None, None).identity


def wire_fields(identity: SourceIdentity) -> dict[str, Any]:
    data = asdict(identity)
    data.update(
        extra_parameters=dict(identity.extra_parameters),
        mx_source_type=int(identity.mx_source_type),
        backend_framework=int(identity.backend_framework),
    )
    return data


class Fleet:
    """Starts seeds of both kinds and runs targets; every child is stopped after the test."""

    def __init__(self, tmp: Path, model_dir: Path, coordinator: str) -> None:
        self.tmp, self.model_dir, self.coordinator = tmp, model_dir, coordinator
        self.procs: list[subprocess.Popen] = []
        self.count = 0

    def _path(self, stem: str) -> Path:
        self.count += 1
        return self.tmp / f"{stem}-{self.count}"

    def peerload_seed(self, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        path = self._path("seed")
        args = ("seed", str(self.model_dir), "--model-name", NAME, "--coordinator", self.coordinator)
        cmd = peerload_cmd(*args, "--ready-file", str(path.with_suffix(".ready")), *extra)
        proc = spawn(cmd, path.with_suffix(".log"), env={**_env(), **(env or {})}, cwd=REPO)
        self.procs.append(proc)
        info = wait_ready_file(proc, path.with_suffix(".ready"), timeout_s=120)
        return {**info, "proc": proc, "log": path.with_suffix(".log")}

    def mx_seed(self, mode: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        path = self._path("mx-seed")
        args = {
            "coordinator": self.coordinator,
            "model_dir": str(self.model_dir),
            "mode": mode,
            "identity": wire_fields(identity_of(self.model_dir)),
        }
        path.with_suffix(".args").write_text(json.dumps(args))
        cmd = [sys.executable, str(MX_PEER), "seed", str(path.with_suffix(".args")), str(path.with_suffix(".ready"))]
        proc = spawn(cmd, path.with_suffix(".log"), env={**_env(), **(env or {})}, stdin=subprocess.PIPE, cwd=REPO)
        self.procs.append(proc)
        info = wait_ready_file(proc, path.with_suffix(".ready"), timeout_s=120, what="the official seed")
        return {**info, "proc": proc}

    def mx_target(self, hold: Path | None = None, wait: bool = True, env: dict[str, str] | None = None) -> Any:
        path = self._path("mx-target")
        args = {
            "coordinator": self.coordinator,
            "model_dir": str(self.model_dir),
            "identity": wire_fields(identity_of(self.model_dir)),
            "hold": str(hold) if hold else "",
        }
        path.with_suffix(".args").write_text(json.dumps(args))
        cmd = [sys.executable, str(MX_PEER), "target", str(path.with_suffix(".args")), str(path.with_suffix(".json"))]
        proc = spawn(cmd, path.with_suffix(".log"), env={**_env(), **(env or {})}, cwd=REPO)
        self.procs.append(proc)
        if not wait:
            return proc, path.with_suffix(".json")
        assert proc.wait(timeout=180) == 0, path.with_suffix(".log").read_text()[-4000:]
        return json.loads(path.with_suffix(".json").read_text())

    def load(self, *extra: str, serve: bool = False, env: dict[str, str] | None = None, ok: bool = True) -> Any:
        """`peerload load` with a report; with `serve`, (proc, report) of a target that keeps serving;
        with `ok=False`, the log of a load expected to fail."""
        path = self._path("load")
        report = path.with_suffix(".json")
        args = ("load", str(self.model_dir), "--model-name", NAME, "--coordinator", self.coordinator)
        cmd = peerload_cmd(*args, "--report", str(report), "--no-progress", *extra, *(["--serve"] if serve else []))
        proc = spawn(cmd, path.with_suffix(".log"), env={**_env(), **(env or {})}, cwd=REPO)
        self.procs.append(proc)
        if not ok:
            assert proc.wait(timeout=180) == 1
            return path.with_suffix(".log").read_text()
        if serve:
            wait_until_file(proc, report, path.with_suffix(".log"))
            return proc, json.loads(report.read_text())
        assert proc.wait(timeout=180) == 0, path.with_suffix(".log").read_text()[-4000:]
        return json.loads(report.read_text())

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout_s=30, close_stdin=proc.stdin is not None and not proc.stdin.closed)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MX_AUTH_TOKEN_PATH"}
    return {**env, "PEERLOAD_HEARTBEAT_INTERVAL_S": "1", "UCX_NET_DEVICES": "lo"}


def wait_until_file(proc: subprocess.Popen, path: Path, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"{path} not written within {timeout_s} s"
        time.sleep(0.1)


def wait_until_logged(proc: subprocess.Popen, log: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s  # a bound on the wait only
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout_s} s"
        time.sleep(0.1)


@pytest.fixture
def fleet(tmp_path: Path, model_dir: Path, coordinator) -> Iterator[Fleet]:
    f = Fleet(tmp_path, model_dir, coordinator.address)
    yield f
    f.stop()


# -- official targets read peerload seeds -------------------------------------------------------


@pytest.mark.timeout(300)
def test_official_target_reads_a_peerload_seed_p2p(fleet, disk_hashes):
    seed = fleet.peerload_seed()
    report = fleet.mx_target()
    assert report["worker_id"] == seed["worker_id"] and report["mode"] == "p2p"
    assert report["sha256"] == disk_hashes
    # Every tensor it registered was matched by name (tied weights: one registration, two names).
    assert report["matched"] == report["registered"] == report["listed"] - 1 and report["bytes"] > 0
    assert report["second_release"] == "NOT_FOUND"  # the lease was released, not left to lapse
    assert stop_process(seed["proc"], timeout_s=30) == 0
    assert "still open" not in seed["log"].read_text()


@pytest.mark.timeout(300)
def test_official_target_reads_a_centralized_peerload_seed(fleet, disk_hashes):
    seed = fleet.peerload_seed(env={"MX_P2P_METADATA": "0"})
    report = fleet.mx_target()
    assert report["worker_id"] == seed["worker_id"] and report["mode"] == "centralized"
    assert report["sha256"] == disk_hashes and report["matched"] == report["registered"]


@pytest.mark.timeout(300)
def test_peerload_seed_closed_while_an_official_target_holds_a_lease(fleet, coordinator, disk_hashes, tmp_path):
    """SIGTERM mid-read: the seed refuses new leases, keeps its memory registered until the
    reader releases its lease, then deregisters and exits; the read completes bit-exact."""
    seed = fleet.peerload_seed(env={"PEERLOAD_LEASE_CLOSE_WAIT_S": "120"})
    go = tmp_path / "go"
    target, out = fleet.mx_target(hold=go, wait=False)
    wait_until_file(target, out.with_suffix(".leased"), out.with_suffix(".log"))
    seed["proc"].terminate()
    with CoordinatorClient(coordinator.address) as client:
        record = client.get_metadata(seed["source_id"], seed["worker_id"])
    assert record is not None
    deadline = time.monotonic() + 30
    with WorkerClient(record.worker_grpc_endpoint, seed["source_id"], seed["worker_id"], 10) as worker:
        while True:  # once the seed is closing, a new reader is turned away
            try:
                lease, _ = worker.prepare_read()
                worker.release_read(lease)
            except SeedServiceError as exc:
                assert exc.code == "UNAVAILABLE" and "shutting down" in exc.details
                break
            assert time.monotonic() < deadline, "the seed never started closing"
            time.sleep(0.1)
    # The closing seed says it waits for the open lease (it would for 120 s): it must still be there.
    wait_until_logged(seed["proc"], seed["log"], "waiting up to")
    assert seed["proc"].poll() is None, "the seed let its memory go under an open lease"
    go.write_text("go")
    assert target.wait(timeout=120) == 0, out.with_suffix(".log").read_text()[-4000:]
    report = json.loads(out.read_text())
    assert report["sha256"] == disk_hashes
    assert seed["proc"].wait(timeout=30) == 0  # the lease ended: it closed well before its 120 s bound
    assert "still open" not in seed["log"].read_text()


# -- peerload targets read official seeds -------------------------------------------------------


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", ["p2p", "centralized"])
def test_peerload_load_reads_an_official_seed_then_serves_verified(fleet, coordinator, disk_hashes, mode):
    official = fleet.mx_seed(mode)
    target, report = fleet.load(serve=True)
    assert report["source"] == official["worker_id"], report["attempts"]
    assert report["sha256"] == disk_hashes
    assert report["verified"] is False and "publish no checksums" in report["unverified_reason"]
    assert report["published"] is True
    with CoordinatorClient(coordinator.address) as client:
        record = client.get_metadata(report["source_id"], report["worker_id"])
    assert record is not None and record.kind == "peerload"
    # The official seed goes; the new peerload source serves the next target, checksums verified.
    assert stop_process(official["proc"], timeout_s=30, close_stdin=True) == 0
    second = fleet.load("--no-fallback")
    assert second["source"] == report["worker_id"], second["attempts"]
    assert second["verified"] is True and second["sha256"] == disk_hashes
    assert stop_process(target, timeout_s=30) == 0


@pytest.mark.timeout(300)
def test_sources_names_kind_mode_and_transport_of_every_seed(fleet, run_peerload):
    """`peerload sources` tells the transport of official seeds in both modes (in P2P mode their
    record has the NIXL agent's listen thread instead of its metadata blob)."""
    seeds = {
        "p2p": fleet.mx_seed("p2p"),
        "centralized": fleet.mx_seed("centralized"),
        "peerload": fleet.peerload_seed(),
    }
    listed = run_peerload("sources", "--coordinator", fleet.coordinator, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["worker_id"]: row for row in json.loads(listed.stdout)}
    shown = {name: (rows[s["worker_id"]]["kind"], rows[s["worker_id"]]["transport"]) for name, s in seeds.items()}
    assert shown == {
        "p2p": ("modelexpress", "nixl"),
        "centralized": ("modelexpress", "nixl"),
        "peerload": ("peerload", "nixl"),
    }
    assert rows[seeds["p2p"]["worker_id"]]["mode"] == "p2p"
    assert rows[seeds["centralized"]["worker_id"]]["mode"] == "centralized"


@pytest.mark.timeout(400)
def test_target_prefers_the_peerload_seed_of_a_mixed_set(fleet, disk_hashes):
    official = fleet.mx_seed("p2p")
    seed = fleet.peerload_seed()
    report = fleet.load("--no-fallback")
    assert report["source"] == seed["worker_id"] != official["worker_id"], report["attempts"]
    assert report["verified"] is True and report["sha256"] == disk_hashes


# -- bearer tokens ------------------------------------------------------------------------------


@pytest.mark.timeout(500)
def test_official_target_and_tokens(serve_process, model_dir, disk_hashes, tmp_path):
    """A token-protected coordinator: the official client sends MX_AUTH_TOKEN_PATH's token to it,
    but 0.7.0 opens plain channels without the token to a seed's WorkerService. So a peerload seed
    whose server demands the token (it covers WorkerService too) refuses official readers, and
    one whose server accepts any caller serves them."""
    token = tmp_path / "fleet-token"
    token.write_text("fleet-token\n")
    server = serve_process("--auth-token-file", str(token))
    fleet = Fleet(tmp_path, model_dir, server.address)
    with_token = {"MX_AUTH_TOKEN_PATH": str(token)}
    try:
        member = {"PEERLOAD_AUTH_TOKEN_FILE": str(token)}
        secured = fleet.peerload_seed(env={**member, "PEERLOAD_ACCEPT_TOKENS_FILE": str(token)})
        assert fleet.mx_target() == {"refused": "UNAUTHENTICATED", "by": "coordinator"}
        assert fleet.mx_target(env=with_token) == {"refused": "UNAUTHENTICATED", "by": "seed"}
        assert stop_process(secured["proc"], timeout_s=30) == 0
        fleet.peerload_seed(env=member)  # its own server requires no token
        report = fleet.mx_target(env=with_token)
        assert report["mode"] == "p2p" and report["sha256"] == disk_hashes
        assert fleet.mx_target() == {"refused": "UNAUTHENTICATED", "by": "coordinator"}
    finally:
        fleet.stop()


@pytest.mark.timeout(500)
def test_peerload_load_of_an_official_seed_and_tokens(serve_process, model_dir, disk_hashes, tmp_path):
    token = tmp_path / "fleet-token"
    token.write_text("fleet-token\n")
    server = serve_process("--auth-token-file", str(token))
    fleet = Fleet(tmp_path, model_dir, server.address)
    try:
        official = fleet.mx_seed("p2p", env={"MX_AUTH_TOKEN_PATH": str(token)})
        log = fleet.load("--no-fallback", ok=False)
        assert "UNAUTHENTICATED" in log and "Traceback" not in log
        report = fleet.load("--no-fallback", env={"PEERLOAD_AUTH_TOKEN_FILE": str(token)})
        assert report["source"] == official["worker_id"] and report["sha256"] == disk_hashes
        assert report["verified"] is False
    finally:
        fleet.stop()
