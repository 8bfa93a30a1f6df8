"""Seed processes of the resharding tests: every rank of some tensor-parallel layouts, in one process.

python reshard_peers.py READY_FILE COORD MODEL_DIR:NAME:TP[:RANK] ...

Each spec publishes rank RANK (or every rank) of MODEL_DIR at TP as model NAME, each rank with its
own Publisher (its own transport agent), with the layout (boxes) the HF adapter gives; the ready
file maps "NAME/TP/RANK" to the worker id, with this process's pid. Serves until SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from peerload.adapters import hf
from peerload.seed.publisher import publish
from peerload.settings import Settings


def main() -> None:
    ready, coord, *specs = sys.argv[1:]
    settings = Settings.load(env={}, coordinator=coord, chunk_bytes=4096)
    workers: dict[str, str] = {}
    with ExitStack() as stack:
        for spec in specs:
            model_dir, name, tp, *rank = spec.split(":")
            source = hf.checkpoint_source(model_dir, name, tp_size=int(tp))
            for r in [int(rank[0])] if rank else range(int(tp)):
                tensors, _ = hf.seed_tensors(source.checkpoint, quantize=None, tp_size=int(tp), tp_rank=r)
                layout = hf.tensor_layout(source.checkpoint, quantize=None, tp_size=int(tp), tp_rank=r)
                pub = stack.enter_context(publish(tensors, source.identity, rank=r, settings=settings, layout=layout))
                workers[f"{name}/{tp}/{r}"] = pub.worker_id
        Path(ready).write_text(json.dumps({"workers": workers, "pid": os.getpid()}))
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait(600)


if __name__ == "__main__":
    sys.exit(main())
