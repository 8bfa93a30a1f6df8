"""`peerload load --wait`: a target started before its seed waits (bounded) and then loads from it.

The test starts the target first, waits until its log says it is waiting (a state, not a clock),
then starts the seed; the target must load from that seed, bit-exact.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from peerload._process import peerload_cmd, spawn, stop_process, wait_until
from peerload.tensors import sha256_of


def test_a_target_started_before_its_seed_waits_then_loads_from_it(
    tiny_model: Callable[[str], Path], coordinator: Any, seed_process: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    full = tiny_model("llama")
    bare = tmp_path / "bare"  # config only: a load that cannot fall back, so a peer must serve it
    shutil.copytree(full, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    name = "test/wait"
    report, log = tmp_path / "report.json", tmp_path / "target.log"
    cmd = peerload_cmd(
        "load", str(bare), "--model-name", name, "--coordinator", coordinator.address, "--wait", "600",
        "--no-progress", "--report", str(report),
    )  # fmt: skip
    target = spawn(cmd, log)
    try:
        wait_until(target, lambda: "waiting for a source of test/wait" in log.read_text(errors="replace"), "load", 120)
        seed = seed_process(full, coordinator.address, name=name)
        assert target.wait(timeout=300) == 0, log.read_text(errors="replace")
    finally:
        stop_process(target)
    loaded = json.loads(report.read_text())
    assert loaded["source"] == seed["worker_id"], loaded["attempts"]
    on_disk = {}
    for file in full.glob("*.safetensors"):
        on_disk.update(load_file(file))
    compared = [n for n in on_disk if n in loaded["sha256"]]
    assert len(compared) >= len(on_disk) // 2, (sorted(on_disk), sorted(loaded["sha256"]))
    assert all(loaded["sha256"][n] == sha256_of(on_disk[n]) for n in compared)
    assert "s left (wait_for_source_s)" in log.read_text(errors="replace")


def test_a_bounded_wait_without_a_seed_ends_with_the_reason(
    tiny_model: Callable[[str], Path], coordinator: Any, run_peerload: Callable[..., Any], tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model("llama"), bare, ignore=shutil.ignore_patterns("*.safetensors"))
    proc = run_peerload(
        "load", str(bare), "--model-name", "test/never", "--coordinator", coordinator.address, "--wait", "1",
        "--no-progress", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "within 1 s (wait_for_source_s)" in err and "loading from storage" not in err, proc.stderr
