"""A Mooncake batch that timed out may still write: a real `peerload seed` SIGSTOPped mid-transfer.

The seed serves checkpoint A; the target's storage fallback is checkpoint B (same layout, other
bytes), so a late write of the stalled batch after the fallback would show as A's bytes in B.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from peerload.adapters import hf
from peerload.chaos.cluster import SeedProcess
from peerload.cli._model_options import model_options
from peerload.errors import DestinationAbandoned
from peerload.loader import Progress, load_into
from peerload.settings import Settings

pytest.importorskip("mooncake.engine")
NAME = "test/stalled"
TIMEOUT_S = 2.0
HANG_S = 60.0  # only a bound on waits for a state that must come; no assertion here is about time
TE_READ = "peerload-te-read"  # the helper thread of one Mooncake batch: alive while it may still write


def batches_running() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == TE_READ and t.is_alive()}


class OnSettle(logging.Handler):
    """Calls `action` once, when the loader waits for its timed-out batches (Transport.settle)."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__()
        self._action = action
        self.fired = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "timed-out batch(es) to finish writing" in record.getMessage() and not self.fired.is_set():
            self.fired.set()
            self._action()


@contextmanager
def on_settle(action: Callable[[], None]) -> Iterator[OnSettle]:
    handler = OnSettle(action)
    logger = logging.getLogger("peerload.transport.mooncake")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def checkpoint(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({f"w{i}": torch.randn(512, 512, generator=g) for i in range(8)}, str(path))  # 8 x 1 MiB
    return path


@pytest.fixture
def stalled(tmp_path: Path, coordinator):
    """(seed serving A, destination + fallback of B, a progress hook that SIGSTOPs the seed once)."""
    a, b = checkpoint(tmp_path / "a.safetensors", 1), checkpoint(tmp_path / "b.safetensors", 2)
    seed = SeedProcess(a, NAME, coordinator.address, tmp_path, "--transport", "transfer_engine").start()
    stopped = threading.Event()

    def stop_on_first_bytes(event: Progress) -> None:
        if not stopped.is_set():
            seed.signal(signal.SIGSTOP)
            stopped.set()

    destination, from_storage = hf.target_tensors(b, quantize=None, tp_size=1, tp_rank=0)
    identity = model_options(a, NAME, None, None, "", 1, 0, 1, 0, 1, None, None).identity
    yield seed, destination, from_storage, identity, stop_on_first_bytes, stopped
    seed.close()


def settings(coordinator, settle_s: float) -> Settings:
    return Settings.load(
        env={},
        coordinator=coordinator.address,
        transport="transfer_engine",
        transfer_timeout_s=TIMEOUT_S,
        settle_timeout_s=settle_s,
        chunk_bytes=1 << 20,
        max_source_attempts=1,
    )


def test_timed_out_batch_lands_before_rollback_then_storage_is_exact(stalled, coordinator):
    seed, destination, from_storage, identity, hook, stopped = stalled
    earlier = batches_running()
    running_at_storage: list[set[threading.Thread]] = []

    def storage() -> Any:
        running_at_storage.append(batches_running() - earlier)
        return from_storage()

    # The seed runs again only once its read timed out and the loader waits for it: the batch lands late.
    try:
        with on_settle(lambda: seed.signal(signal.SIGCONT)) as resume:
            result = load_into(
                destination, identity, settings=settings(coordinator, 30), fallback=storage, progress=hook
            )
    finally:
        seed.signal(signal.SIGCONT)
    assert stopped.is_set() and resume.fired.is_set()
    assert result.source == "storage", result.attempts
    assert any("TransferTimeout" in a for a in result.attempts), result.attempts
    # The loader waited for the stalled batch before it copied storage bytes over it (settle): no
    # batch was still running then, so no late write can come after the check below.
    assert "settle" in result.seconds, result.seconds
    assert running_at_storage == [set()], "storage bytes were copied while a timed-out batch could still write"
    assert batches_running() - earlier == set()
    expected = dict(from_storage())
    assert all(torch.equal(destination[n], expected[n]) for n in expected), "a late write corrupted storage bytes"
    result.close()


def test_batch_still_running_after_the_bound_gives_the_destination_up(stalled, coordinator):
    seed, destination, from_storage, identity, hook, stopped = stalled
    earlier = batches_running()
    with pytest.raises(DestinationAbandoned) as info:
        load_into(destination, identity, settings=settings(coordinator, 1.0), fallback=from_storage, progress=hook)
    assert "settle_timeout_s" in str(info.value) and seed.worker_id in str(info.value)
    abandoned = batches_running() - earlier
    assert abandoned, "given up, yet no batch was still running"
    before = {n: t.clone() for n, t in destination.items()}
    seed.signal(signal.SIGCONT)
    # The hazard was real: once the seed runs again, the abandoned batch ends, having written A's bytes.
    for batch in abandoned:
        batch.join(HANG_S)
        assert not batch.is_alive(), "the stalled batch never ended"
    assert any(not torch.equal(destination[n], before[n]) for n in before), "the stalled batch never landed"


def test_late_write_over_a_part_read_again_is_caught(tmp_path: Path, coordinator, caplog):
    """Two seeds; the first to deliver is stopped, its memory flipped, and resumed after another seed
    re-read its part: the late batch lands over verified bytes, and the re-check must catch it."""
    from peerload.chaos.trials import flip_byte, seed_regions

    a = checkpoint(tmp_path / "a.safetensors", 1)
    env = {"PEERLOAD_CHUNK_BYTES": str(1 << 20)}  # 1 MiB parts: the seeds share the load part by part
    seeds = [
        SeedProcess(a, NAME, coordinator.address, tmp_path, "--transport", "transfer_engine", env=env).start()
        for _ in range(2)
    ]
    regions = {s.worker_id: seed_regions(coordinator.address, s) for s in seeds}
    stopped: list[SeedProcess] = []

    def stop_and_corrupt(event: Progress) -> None:
        if stopped:
            return
        seed = next(s for s in seeds if s.worker_id == event.source)
        seed.signal(signal.SIGSTOP)
        stopped.append(seed)
        for region in regions[seed.worker_id]:  # the parts it has not sent yet now hold a wrong byte
            flip_byte(seed.pid, region.addr + region.size // 2)

    destination, from_storage = hf.target_tensors(a, quantize=None, tp_size=1, tp_rank=0)
    identity = model_options(a, NAME, None, None, "", 1, 0, 1, 0, 1, None, None).identity
    settings = Settings.load(
        env={},
        coordinator=coordinator.address,
        transport="transfer_engine",
        transfer_timeout_s=60,
        part_timeout_s=TIMEOUT_S,
        settle_timeout_s=30,
        chunk_bytes=1 << 20,
    )
    # The stalled seed runs again only once every part was read (its stalled one from the other
    # seed) and the loader waits for the timed-out batch: it then lands over bytes already verified.
    try:
        with on_settle(lambda: stopped[0].signal(signal.SIGCONT)):
            result = load_into(
                destination, identity, settings=settings, fallback=from_storage, progress=stop_and_corrupt
            )
    finally:
        for seed in seeds:
            seed.signal(signal.SIGCONT)
            seed.close()
    assert stopped and any("TransferTimeout" in a for a in result.attempts), result.attempts
    expected = dict(from_storage())
    assert all(torch.equal(destination[n], expected[n]) for n in expected), "a late write survived the re-check"
    assert "overwritten by a late read" in caplog.text, "the late batch did not land over a re-read part"
    assert result.storage_bytes > 0, "storage must have filled the overwritten part"
    result.close()
