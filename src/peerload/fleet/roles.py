"""peerload processes on emulated hosts: a coordinator, seeds, a target, a storage file server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peerload._process import log_tail, peerload_cmd, stop_process, wait_ready_file, wait_until
from peerload.errors import PeerloadError
from peerload.fleet.harness import Fleet

COORDINATOR_PORT = 8001
STORAGE_PORT = 8080


def start_coordinator(fleet: Fleet, host: int, workdir: Path, *args: str) -> str:
    """`peerload serve` on host `host`; returns its HOST:PORT once it listens."""
    address = fleet.hosts[host].address
    log = workdir / f"coordinator-h{host}.log"
    cmd = peerload_cmd("serve", "--host", address, "--port", str(COORDINATOR_PORT), *args)
    proc = fleet.popen(host, cmd, log_path=log)
    try:
        wait_until(proc, lambda: "listening on" in log.read_text(errors="replace"), "peerload serve", 60)
    except PeerloadError as exc:
        raise PeerloadError(f"{exc}:\n{log_tail(log)}") from None
    return f"{address}:{COORDINATOR_PORT}"


def start_seed(
    fleet: Fleet,
    host: int,
    model: Path,
    model_name: str,
    coordinator: str,
    workdir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """`peerload seed MODEL` on host `host`; returns the process and its ready-file JSON once READY."""
    ready = workdir / f"seed-h{host}.ready"
    log = workdir / f"seed-h{host}.log"
    ready.unlink(missing_ok=True)  # a seed restarted on the same host must not find the old one's
    cmd = peerload_cmd(
        "seed", str(model), "--model-name", model_name, "--coordinator", coordinator, "--ready-file", str(ready), *args
    )
    proc = fleet.popen(host, cmd, log_path=log, env=env)
    try:
        info = wait_ready_file(proc, ready, timeout_s=120, what=f"the seed on host {host}")
    except PeerloadError as exc:
        raise PeerloadError(f"{exc}:\n{log_tail(log)}") from None
    return proc, info


def run_target(
    fleet: Fleet,
    host: int,
    model: Path,
    model_name: str,
    coordinator: str,
    workdir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """`peerload load MODEL --report` on host `host`; returns the report (raises if it failed)."""
    report = workdir / f"target-h{host}-{time.monotonic_ns()}.json"
    log = report.with_suffix(".log")
    cmd = peerload_cmd(
        "load", str(model), "--model-name", model_name, "--coordinator", coordinator, "--report", str(report),
        "--no-progress", *args,
    )  # fmt: skip
    proc = fleet.popen(host, cmd, log_path=log, env=env)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc, timeout_s=5)
        raise PeerloadError(f"the target on host {host} did not finish within {timeout_s:.0f} s") from None
    if code != 0 or not report.exists():
        raise PeerloadError(f"the target on host {host} exited with code {code}:\n{log_tail(log)}")
    return json.loads(report.read_text())


def start_file_server(fleet: Fleet, host: int, directory: Path, workdir: Path) -> str:
    """A plain HTTP server for `directory` on host `host` (storage over the emulated NIC); its URL."""
    log = workdir / f"http-h{host}.log"
    address = fleet.hosts[host].address
    cmd: Sequence[str] = [sys.executable, "-u", "-m", "http.server", str(STORAGE_PORT), "--bind", address,
                          "--directory", str(directory)]  # fmt: skip
    proc = fleet.popen(host, cmd, log_path=log)
    wait_until(proc, lambda: "Serving HTTP" in log.read_text(errors="replace"), "the storage file server", 30)
    return f"http://{address}:{STORAGE_PORT}"
