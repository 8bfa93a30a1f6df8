"""TLS and tokens across real processes: the official modelexpress client and `peerload seed/load/sources`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from peerload._process import peerload_cmd, spawn, stop_process, wait_ready_file
from peerload.tensors import sha256_of

REPO = Path(__file__).resolve().parents[2]
MX_SCENARIO = Path(__file__).resolve().parents[1] / "mx" / "client_scenario.py"
NAME = "test/secured-raw"


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    return path


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The "Error:" line of a failed CLI run, checked for its exit code, fragments and no traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    # Nothing else but the hint, the debug note and our own log lines (which start with the date).
    assert all(line.startswith(("Error: ", "hint: ", "set PEERLOAD_DEBUG", "20")) for line in lines), lines
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-3000:])
    return errors[0]


def test_official_client_sends_its_token_file(serve_process: Callable[..., Any], tmp_path: Path) -> None:
    if importlib.util.find_spec("modelexpress") is None:
        pytest.skip("modelexpress==0.7.0 is not installed; `make install` adds it")
    server = serve_process("--auth-token-file", str(write_token(tmp_path / "accepted", "mx-fleet-token")))

    def scenario(token_path: Path | None) -> subprocess.CompletedProcess[str]:
        # The official client runs in its own process: its stubs and ours cannot share one pool.
        env = {k: v for k, v in os.environ.items() if k != "MX_AUTH_TOKEN_PATH"}
        if token_path is not None:
            env["MX_AUTH_TOKEN_PATH"] = str(token_path)
        return subprocess.run(
            [sys.executable, str(MX_SCENARIO), server.address], capture_output=True, text=True, timeout=120, env=env
        )

    ok = scenario(tmp_path / "accepted")
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads(ok.stdout.strip().splitlines()[-1])
    assert report["published_ids"] == [report["expected_id"]] and report["listed_ready_after"] == ["mx-worker-0"]
    for token_path in (None, write_token(tmp_path / "wrong", "guess")):
        refused = scenario(token_path)
        assert refused.returncode != 0 and "StatusCode.UNAUTHENTICATED" in refused.stderr, refused.stderr[-3000:]
    assert server.stop() == 0


def test_seed_load_sources_over_tls_with_a_token(
    serve_process: Callable[..., Any], run_peerload: Callable[..., Any], tls_files: Any, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    tokens = str(write_token(tmp_path / "fleet-token", "fleet-token"))
    server = serve_process(
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key), "--auth-token-file", tokens
    )
    # A seed or target is a client (CA, token) and a server (its own gRPC server: cert, accepted tokens).
    trusted = {
        "PEERLOAD_TLS_CA": str(tls_files.ca),
        "PEERLOAD_COORDINATOR": server.address,
        "PEERLOAD_RPC_RETRIES": "0",
    }
    member = {
        **trusted,
        "PEERLOAD_AUTH_TOKEN_FILE": tokens,
        "PEERLOAD_TLS_CERT": str(tls_files.cert),
        "PEERLOAD_TLS_KEY": str(tls_files.key),
        "PEERLOAD_ACCEPT_TOKENS_FILE": tokens,
    }
    weights = {"a.weight": torch.randn(128, 32), "b": torch.arange(17, dtype=torch.int64)}
    checkpoint = tmp_path / "weights.safetensors"
    save_file(weights, str(checkpoint))

    plaintext = run_peerload("sources", env={"PEERLOAD_COORDINATOR": server.address, "PEERLOAD_RPC_RETRIES": "0"})
    one_line_error(plaintext, 1, "UNAVAILABLE", "PEERLOAD_TLS_CA")
    distrusted = run_peerload("sources", env={**trusted, "PEERLOAD_TLS_CA": str(tls_files.other_ca)})
    one_line_error(distrusted, 1, "CERTIFICATE_VERIFY_FAILED", "PEERLOAD_TLS_CA")
    anonymous = run_peerload("sources", env=trusted)
    one_line_error(anonymous, 1, "UNAUTHENTICATED", "PEERLOAD_AUTH_TOKEN_FILE")
    no_token_seed = run_peerload("seed", str(checkpoint), "--model-name", NAME, env=trusted)
    one_line_error(no_token_seed, 1, "ListSources failed with UNAUTHENTICATED")

    ready = tmp_path / "seed.ready"
    seed_proc = spawn(
        peerload_cmd("seed", str(checkpoint), "--model-name", NAME, "--ready-file", str(ready)),
        tmp_path / "seed.log",
        env={**os.environ, **member},
        cwd=REPO,
    )
    try:
        seed = wait_ready_file(seed_proc, ready, timeout_s=90)
        refused = run_peerload("load", str(checkpoint), "--model-name", NAME, "--no-fallback", env=trusted)
        one_line_error(refused, 1, "UNAUTHENTICATED")
        report = tmp_path / "load.json"
        loaded = run_peerload(
            "load", str(checkpoint), "--model-name", NAME, "--report", str(report), "--no-progress", env=member
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        result = json.loads(report.read_text())
        assert result["source"] == seed["worker_id"]
        assert result["sha256"] == {name: sha256_of(t) for name, t in weights.items()}
        listed = run_peerload("sources", "--json", env={**trusted, "PEERLOAD_AUTH_TOKEN_FILE": tokens})
        assert listed.returncode == 0, listed.stderr[-3000:]
        assert seed["worker_id"] in {row["worker_id"] for row in json.loads(listed.stdout) if row["status"] == "READY"}
    finally:
        assert stop_process(seed_proc, timeout_s=30) == 0
    assert server.stop() == 0
