"""A target whose model directory holds config.json but no weights loads from a peer only."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from peerload.tensors import sha256_of


def test_config_only_directory_loads_from_a_peer_and_has_no_storage_fallback(
    tiny_model: Callable[[str], Path],
    coordinator: Any,
    seed_process: Callable[..., dict[str, Any]],
    run_peerload: Callable[..., Any],
    tmp_path: Path,
) -> None:
    full = tiny_model("llama")
    bare = tmp_path / "bare"
    shutil.copytree(full, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    name = "test/no-weights"
    report = tmp_path / "report.json"

    # No seed yet: no peer, no weights -> a clear failure, nothing half-loaded.
    alone = run_peerload(
        "load", str(bare), "--model-name", name, "--coordinator", coordinator.address, "--no-progress", timeout=120
    )
    assert alone.returncode == 1, alone.stderr
    assert "holds no weights" in alone.stderr and "no storage fallback" in alone.stderr

    seed_process(full, coordinator.address, name=name)
    proc = run_peerload(
        "load",
        str(bare),
        "--model-name",
        name,
        "--coordinator",
        coordinator.address,
        "--report",
        str(report),
        "--no-progress",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(report.read_text())
    assert loaded["source"] != "storage"
    checkpoint = load_file(str(next(full.glob("*.safetensors"))))
    assert checkpoint and all(loaded["sha256"][n] == sha256_of(t) for n, t in checkpoint.items())
