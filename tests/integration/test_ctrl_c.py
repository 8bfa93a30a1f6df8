"""Ctrl-C during `peerload load` while bytes cross the wire: the load stops, rolls back, publishes
nothing, says so in one line and exits 130, on NIXL and on Mooncake.

Real processes on two emulated hosts with a slow NIC, so that the load is still moving bytes when
SIGINT arrives: the test waits until the target's NIC has received part of the model (a counted
state), never on a clock.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from peerload._process import peerload_cmd, wait_until
from peerload.adapters import hf
from peerload.cli._model_options import model_options
from peerload.client import CoordinatorClient, SourceStatus
from peerload.errors import FleetUnavailable
from peerload.fleet import Fleet, start_coordinator, start_seed
from peerload.loader import Progress, load_into
from peerload.settings import Settings

NAME = "test/ctrl-c"
MODEL_BYTES = 64 << 20
NIC_GBIT = 0.1  # 64 MiB take about 5 s at this cap: SIGINT lands well before the end


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gen = torch.Generator().manual_seed(11)
    tensors = {f"w{i}": torch.randn(1024, 2048, generator=gen) for i in range(MODEL_BYTES // (8 << 20))}
    path = tmp_path_factory.mktemp("ctrl-c") / "model.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_ctrl_c_mid_transfer_rolls_back_publishes_nothing_and_exits_130(transport, checkpoint, tmp_path):
    try:
        fleet = Fleet(2, nic_gbit=NIC_GBIT, max_seconds=240)
    except FleetUnavailable as exc:
        pytest.skip(f"emulated hosts unavailable here: {exc}")
    with fleet:
        coordinator = start_coordinator(fleet, 0, tmp_path)
        # Batches of 8 MiB: an interrupted load finishes the batch in hand, then stops (docs/reliability.md).
        env = {"PEERLOAD_CHUNK_BYTES": str(8 << 20)}
        _, seed = start_seed(fleet, 0, checkpoint, NAME, coordinator, tmp_path, "--transport", transport, env=env)
        log = tmp_path / "target.log"
        cmd = peerload_cmd(
            "load", str(checkpoint), "--model-name", NAME, "--coordinator", coordinator, "--transport", transport,
            "--no-progress", "--no-fallback",
        )  # fmt: skip
        received_before, _ = fleet.nic_bytes(1)
        target = fleet.popen(1, cmd, log_path=log, env=env)
        wait_until(target, lambda: fleet.nic_bytes(1)[0] - received_before > MODEL_BYTES // 8, "the target", 180)
        target.send_signal(signal.SIGINT)
        code = target.wait(timeout=60)
        received = fleet.nic_bytes(1)[0] - received_before
        out = log.read_text(errors="replace")
        listed = tmp_path / "sources.json"
        listing = fleet.popen(1, peerload_cmd("sources", "--coordinator", coordinator, "--json"), log_path=listed)
        assert listing.wait(timeout=60) == 0, listed.read_text()
        workers = [row["worker_id"] for row in json.loads(listed.read_text())]
    assert code == 130, out
    assert received < MODEL_BYTES, "the load ran to the end instead of stopping"
    assert workers == [seed["worker_id"]], f"the interrupted target was published: {workers}"
    lines = [line for line in out.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "nothing was published" in lines[0], out
    assert "published" not in out.replace("nothing was published", ""), out
    assert "Traceback" not in out and "terminate called" not in out, out


def test_ctrl_c_stops_a_seed_cleanly_and_exits_130(serve_process, seed_process, checkpoint):
    coordinator = serve_process()
    seed = seed_process(checkpoint, coordinator.address, name=NAME)
    seed["proc"].send_signal(signal.SIGINT)
    code = seed["proc"].wait(timeout=60)
    out = seed["log"].read_text(errors="replace")
    with CoordinatorClient(coordinator.address, timeout_s=10) as client:
        [ref] = client.list_sources()
        record = client.get_metadata(ref.mx_source_id, ref.worker_id)
    assert code == 130, out
    assert record is not None and record.worker_id == seed["worker_id"] and record.status is SourceStatus.STALE
    [line] = [line for line in out.splitlines() if "interrupted" in line]
    assert line == "interrupted: the seed stopped cleanly: its record is marked STALE and its memory released"
    assert "Traceback" not in out


def test_ctrl_c_stops_the_coordinator_and_exits_130(serve_process):
    coordinator = serve_process()
    coordinator.proc.send_signal(signal.SIGINT)
    code = coordinator.proc.wait(timeout=60)
    out = coordinator.log.read_text(errors="replace")
    assert code == 130, out
    assert "interrupted: the coordinator stopped cleanly" in out.splitlines() and "Traceback" not in out


def test_sigterm_stops_the_coordinator_with_exit_0(serve_process):
    coordinator = serve_process()
    assert coordinator.stop() == 0


def test_an_interrupted_api_load_leaves_zeros_and_no_record(coordinator, seed_process, checkpoint):
    """SIGINT to the main thread (as Ctrl-C) once the first bytes arrived from a real seed process."""
    seed = seed_process(checkpoint, coordinator.address, name=NAME)
    destination, _ = hf.target_tensors(checkpoint, quantize=None, tp_size=1, tp_rank=0)
    identity = model_options(checkpoint, NAME, None, None, "", 1, 0, 1, 0, 1, None, None).identity
    interrupted = threading.Event()

    def ctrl_c_on_first_bytes(event: Progress) -> None:
        if not interrupted.is_set():
            interrupted.set()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    settings = Settings.load(env={}, coordinator=coordinator.address, chunk_bytes=8 << 20)
    with pytest.raises(KeyboardInterrupt):
        load_into(destination, identity, settings=settings, fallback=None, progress=ctrl_c_on_first_bytes)
    assert interrupted.is_set()
    assert all(not t.any() for t in destination.values()), "half a model was left in the destination"
    with CoordinatorClient(coordinator.address, timeout_s=10) as client:
        status = {r.worker_id: client.get_metadata(r.mx_source_id, r.worker_id).status for r in client.list_sources()}
    assert status.pop(seed["worker_id"]) is SourceStatus.READY
    assert set(status.values()) <= {SourceStatus.STALE}, f"the interrupted load still serves: {status}"
