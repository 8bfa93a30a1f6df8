"""Seed and target bodies the loader tests run as separate processes (real NIXL agents).

python loader_peers.py corrupt-seed MODEL_DIR NAME COORD READY_FILE TENSOR [--checksum ALGORITHM]
python loader_peers.py target MODEL_DIR NAME COORD OUT_JSON [--tp-size N --tp-rank R]
                                [--kill-ready FILE ...] [--kill-after-bytes B] [--chunk-bytes B]
                                [--quantize int8] [--model-name-is-file]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import torch

from peerload.adapters import hf
from peerload.cli._model_options import model_options
from peerload.loader import Progress, load_into
from peerload.seed.publisher import publish
from peerload.settings import Settings
from peerload.tensors import sha256_of


def corrupt_seed(args: argparse.Namespace) -> None:
    """Publish the model, then flip one byte of one tensor: the target's checksum must catch it."""
    opts = model_options(Path(args.model_dir), args.name, None, None, "", 1, 0, 1, 0, 1, None, None)
    tensors, _ = hf.seed_tensors(opts.path, quantize=None, tp_size=1, tp_rank=0)
    settings = Settings.load(env={}, coordinator=args.coord, checksum=args.checksum)
    with publish(tensors, opts.identity, settings=settings) as pub:
        target = dict(tensors.named_parameters())[args.tensor]
        with torch.no_grad():
            flat = target.data.view(-1).view(torch.uint8)
            flat[0] ^= 0xFF
        Path(args.ready).write_text(json.dumps({"worker_id": pub.worker_id, "pid": os.getpid()}))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait(120)


def target(args: argparse.Namespace) -> None:
    """Load in-process; optionally SIGKILL the serving seed on the first bytes; report + generate."""
    opts = model_options(
        Path(args.model_dir), args.name, None, None, "", args.tp_size, args.tp_rank, 1, 0, 1, args.quantize, None
    )
    settings = Settings.load(env={}, coordinator=args.coord, chunk_bytes=args.chunk_bytes, max_source_attempts=3)
    pids = {}
    for ready in args.kill_ready:
        info = json.loads(Path(ready).read_text())
        pids[info["worker_id"]] = info["pid"]
    killed: list[str] = []

    def kill_current_source(event: Progress) -> None:
        if not killed and event.source in pids and args.kill_after_bytes <= event.done < event.total:
            os.kill(pids[event.source], signal.SIGKILL)
            killed.append(event.source)

    destination, from_storage = hf.target_tensors(
        opts.path, quantize=args.quantize, tp_size=args.tp_size, tp_rank=args.tp_rank
    )
    result = load_into(
        destination,
        opts.identity,
        rank=opts.rank,
        settings=settings,
        fallback=from_storage,
        progress=kill_current_source if pids else None,
    )
    tensors = result.tensor_set.tensors
    out = {
        "source": result.source,
        "verified": result.verified,
        "attempts": result.attempts,
        "killed": killed,
        "bytes": result.bytes,
        "sources": [s.as_dict() for s in result.sources],
        "restarted_bytes": result.restarted_bytes,
        "storage_bytes": result.storage_bytes,
        "sha256": {n: sha256_of(t) for n, t in tensors.items()},
    }
    if isinstance(destination, torch.nn.Module):
        out["tokens"] = hf.greedy_tokens(destination)
    else:
        torch.save({n: t.clone() for n, t in tensors.items()}, Path(args.out).with_suffix(".pt"))
    Path(args.out).write_text(json.dumps(out))
    result.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corrupt-seed")
    for a in ("model_dir", "name", "coord", "ready", "tensor"):
        c.add_argument(a)
    c.add_argument("--checksum", default="auto")
    t = sub.add_parser("target")
    for a in ("model_dir", "name", "coord", "out"):
        t.add_argument(a)
    t.add_argument("--tp-size", type=int, default=1)
    t.add_argument("--tp-rank", type=int, default=0)
    t.add_argument("--quantize", default=None)
    t.add_argument("--chunk-bytes", type=int, default=64 << 20)
    t.add_argument("--kill-ready", action="append", default=[])
    t.add_argument("--kill-after-bytes", type=int, default=0)
    args = parser.parse_args()
    {"corrupt-seed": corrupt_seed, "target": target}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
