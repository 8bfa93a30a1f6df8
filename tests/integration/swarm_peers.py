"""A target process for the fan-out tests: prepare, wait for a common start, load, report, keep serving.

python swarm_peers.py MODEL NAME COORD OUT --prepared FILE --go FILE --hold FILE
                      [--die-after-parts K] [--hide-first-part SECONDS]

Fault hooks (test-only, patched in this process): `--die-after-parts` SIGKILLs this target once it
has verified K parts (others are reading from it by then); `--hide-first-part` flips a byte of the
first part it receives before that part is verified, keeps it flipped for SECONDS while watching
what this target advertises, then restores it and lets the check run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

from peerload.adapters import hf
from peerload.cli._model_options import model_options
from peerload.loader import load_into, striping
from peerload.parts import decode_held
from peerload.seed.availability import PartAvailability
from peerload.settings import Settings
from peerload.tensors import sha256_of

_marked: list[PartAvailability] = []  # the parts this process advertises


def die_after(parts: int) -> None:
    original = PartAvailability.mark

    def mark(self: PartAvailability, part: int) -> None:
        original(self, part)
        if self.held() >= parts:
            os.kill(os.getpid(), signal.SIGKILL)

    PartAvailability.mark = mark  # type: ignore[method-assign]


def hide_first_part(seconds: float, found: dict[str, object]) -> None:
    """Flip a byte of the first part to arrive, watch our advertised parts while it is flipped, restore."""
    original_verify = striping.StripedRead._verify
    original_init = PartAvailability.__init__

    def init(self: PartAvailability, count: int) -> None:
        original_init(self, count)
        _marked.append(self)

    def verify(self: striping.StripedRead, plan: striping.PeerPlan, index: int) -> None:
        if "part" not in found:
            found["part"] = index
            piece = self.parts[index].pieces[0]
            flat = self.tensor_set.regions[piece.region]
            view = flat.view(-1)[piece.offset : piece.offset + 1]
            view ^= 0xFF
            exposed = False
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for availability in _marked:
                    snap = availability.snapshot()
                    exposed |= index in decode_held(snap.bitmap, snap.part_count)
                time.sleep(0.01)
            found["exposed_while_unverified"] = exposed
            found["watched"] = bool(_marked)
            view ^= 0xFF
        original_verify(self, plan, index)

    PartAvailability.__init__ = init  # type: ignore[method-assign]
    striping.StripedRead._verify = verify  # type: ignore[method-assign]


def wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.01)


def main() -> None:
    p = argparse.ArgumentParser()
    for a in ("model", "name", "coord", "out"):
        p.add_argument(a)
    p.add_argument("--prepared", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("--hold", required=True)
    p.add_argument("--die-after-parts", type=int, default=0)
    p.add_argument("--hide-first-part", type=float, default=0.0)
    args = p.parse_args()
    found: dict[str, object] = {}
    if args.die_after_parts:
        die_after(args.die_after_parts)
    if args.hide_first_part:
        hide_first_part(args.hide_first_part, found)
    settings = Settings.load(coordinator=args.coord)
    opts = model_options(Path(args.model), args.name, None, None, "", 1, 0, 1, 0, 1, None, None)
    destination, _ = hf.target_tensors(opts.path, quantize=None, tp_size=1, tp_rank=0)
    Path(args.prepared).write_text("")
    wait_for(Path(args.go), 120)
    started = time.time()
    result = load_into(destination, opts.identity, settings=settings, fallback=None)
    report = {
        "worker_id": result.worker_id,
        "started": started,
        "finished": time.time(),
        "seconds": result.seconds,
        "attempts": result.attempts,
        "sources": [s.as_dict() for s in result.sources],
        "storage_bytes": result.storage_bytes,
        "bytes": result.bytes,
        "published": result.publisher is not None,
        "sha256": {n: sha256_of(t) for n, t in result.tensor_set.tensors.items()},
        **found,
    }
    Path(args.out).write_text(json.dumps(report))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + 120
    while not stop.is_set() and not Path(args.hold).exists() and time.monotonic() < deadline:
        stop.wait(0.05)
    result.close()


if __name__ == "__main__":
    main()
