"""One target of a fan-out run: prepare, wait for the common start, load, report, keep serving.

python -m peerload.bench.fanout_target MODEL NAME COORD OUT --prepared F --go F --hold F

Settings come from the environment (PEERLOAD_*). The report has the load's sources (bytes per
source), wall-clock start and end, and per-tensor sha256; the target serves until F --hold exists.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

HOLD_MAX_S = 600.0


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.005)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peerload.bench.fanout_target")
    for a in ("model", "name", "coord", "out"):
        p.add_argument(a)
    for a in ("--prepared", "--go", "--hold"):
        p.add_argument(a, required=True)
    return p


def run(args: argparse.Namespace, extra: dict[str, object] | None = None) -> None:
    """Load once the go file appears; `extra` (filled during the load) is added to the report."""
    from peerload.adapters import hf
    from peerload.loader import load_into
    from peerload.settings import Settings
    from peerload.tensors import sha256_of

    settings = Settings.load(coordinator=args.coord)
    source = hf.checkpoint_source(Path(args.model), args.name)
    destination, _ = hf.target_tensors(source.checkpoint, quantize=None, tp_size=1, tp_rank=0)
    Path(args.prepared).write_text("")
    _wait_for(Path(args.go), HOLD_MAX_S)
    started = time.time()
    result = load_into(destination, source.identity, settings=settings, fallback=None)
    finished = time.time()
    assert result.tensor_set is not None
    report = {
        "worker_id": result.worker_id,
        "started": started,
        "finished": finished,
        "seconds": result.seconds,
        "attempts": result.attempts,
        "sources": [s.as_dict() for s in result.sources],
        "storage_bytes": result.storage_bytes,
        "restarted_bytes": result.restarted_bytes,
        "bytes": result.bytes,
        "published": result.publisher is not None,
        "sha256": {n: sha256_of(t) for n, t in result.tensor_set.tensors.items()},
        **(extra or {}),
    }
    Path(args.out).write_text(json.dumps(report))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + HOLD_MAX_S
    while not stop.is_set() and not Path(args.hold).exists() and time.monotonic() < deadline:
        stop.wait(0.05)
    result.close()


if __name__ == "__main__":
    run(parser().parse_args())
