"""Artifact sources with the official modelexpress 0.7.0 artifact code as the peer, on CPU, both ways:
an official reader installs a peerload artifact source, a peerload target installs what the
official publisher serves. Real coordinator, real NIXL on both sides; the official code runs in
its own processes (tests/mx/mx_artifact_peer.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from peerload._process import spawn, stop_process, wait_ready_file
from peerload.artifacts import INSTALLED, ArtifactSource, artifact_identity, fetch_artifact
from peerload.identity import BackendFramework, SourceIdentity
from peerload.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from test_artifacts import make_cache, tree  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "tests" / "mx" / "mx_artifact_peer.py"
MODEL = SourceIdentity(model_name="test/artifact-interop", dtype="float32", backend_framework=BackendFramework.VLLM)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("modelexpress") is None,
    reason="modelexpress==0.7.0 (the official client) is not installed; `make install` adds it",
)


def wire_fields(identity: SourceIdentity) -> dict[str, Any]:
    data = asdict(identity)
    data.update(
        extra_parameters=dict(identity.extra_parameters),
        mx_source_type=int(identity.mx_source_type),
        backend_framework=int(identity.backend_framework),
    )
    return data


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "MX_AUTH_TOKEN_PATH"}, "UCX_NET_DEVICES": "lo"}


def run_peer(tmp: Path, command: str, args: dict[str, Any]) -> tuple[subprocess.Popen, Path, Path]:
    stem = tmp / f"mx-{command}"
    stem.with_suffix(".args").write_text(json.dumps(args))
    cmd = [sys.executable, str(PEER), command, str(stem.with_suffix(".args")), str(stem.with_suffix(".out"))]
    proc = spawn(cmd, stem.with_suffix(".log"), env=env(), stdin=subprocess.PIPE, cwd=REPO)
    return proc, stem.with_suffix(".out"), stem.with_suffix(".log")


@pytest.mark.timeout(300)
def test_official_reader_installs_a_peerload_artifact_source(tmp_path: Path, coordinator) -> None:
    files = make_cache(tmp_path / "cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    settings = Settings.load(env={}, coordinator=coordinator.address, heartbeat_interval_s=0.5)
    # 64 KiB chunks: the official reader pages the table and leases several batches.
    with ArtifactSource(tmp_path / "cache", identity, settings=settings, chunk_bytes=64 << 10) as source:
        args = {
            "coordinator": coordinator.address,
            "identity": wire_fields(identity),
            "bundle_root": str(tmp_path / "mx-bundle"),
            "target_root": str(tmp_path / "mx-installed"),
        }
        proc, out, log = run_peer(tmp_path, "install", args)
        try:
            assert proc.wait(timeout=240) == 0, log.read_text()[-4000:]
        finally:
            stop_process(proc, timeout_s=10, close_stdin=True)
        result = json.loads(out.read_text())
        assert result["artifact_id"] == source.artifact_id and result["chunks"] == len(source.manifest.chunks) > 4
        assert source.leases.active() == 0, "the official reader released every chunk lease"
    assert tree(tmp_path / "mx-installed") == files


@pytest.mark.timeout(300)
def test_peerload_target_installs_an_official_artifact_source(tmp_path: Path, coordinator) -> None:
    files = make_cache(tmp_path / "cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    args = {
        "coordinator": coordinator.address,
        "identity": wire_fields(identity),
        "bundle_root": str(tmp_path / "mx-bundle"),
        "source_root": str(tmp_path / "cache"),
    }
    proc, out, log = run_peer(tmp_path, "publish", args)
    try:
        ready = wait_ready_file(proc, out, timeout_s=180, what="the official artifact source")
        settings = Settings.load(env={}, coordinator=coordinator.address)
        dest = tmp_path / "replica" / "torch_compile_cache"
        outcome = fetch_artifact(identity, dest, settings=settings)
        assert outcome.status == INSTALLED, f"{outcome.reason}\n{log.read_text()[-3000:]}"
        assert outcome.artifact_id == ready["artifact_id"] and outcome.source == ready["worker_id"]
    finally:
        stop_process(proc, timeout_s=30, close_stdin=True)
    assert tree(dest) == files
