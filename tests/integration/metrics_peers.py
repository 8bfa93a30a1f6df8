"""One process: a coordinator, a seed and a target, one load; prints the scrapes and the result as JSON.

Usage: python metrics_peers.py SCENARIO, where SCENARIO is
  peer      a plain peer-to-peer load (UCX picks its path: shared memory on one host)
  tcp       the same, with UCX held to TCP by UCX_TLS (the caller sets it)
  storage   no seed: the load falls back to storage
  checksum  the seed's memory changes after it published its checksums: the part fails, storage fills it
  killed    a peer load, then SIGKILL before any cleanup (multiprocess mode: the caller scrapes after)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import torch
from prometheus_client import REGISTRY, generate_latest

from peerload import Settings, SourceIdentity, load_into, publish
from peerload.coordinator.server import serve
from peerload.errors import LeaseRefused

scenario = sys.argv[1]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
coordinator = serve(Settings.load(env={}), port=0, metrics_port=0)
settings = Settings.load(coordinator=coordinator.address, chunk_bytes=1 << 20, advertise_host="127.0.0.1")
identity = SourceIdentity(model_name=f"m/metrics-{scenario}", dtype="float32")
torch.manual_seed(0)
weights = {"w": torch.randn(512, 1024), "b": torch.arange(1024.0)}  # 2 MiB + 4 KiB: 3 parts
original = {k: v.clone() for k, v in weights.items()}
seed = None if scenario == "storage" else publish(weights, identity, settings=settings)
if scenario == "checksum":
    weights["w"][0, 0] += 1.0  # the seed's registered memory no longer matches its published checksums
empty = {k: torch.empty_like(v) for k, v in weights.items()}
result = load_into(empty, identity, settings=settings, publish=False, fallback=lambda: original)
equal = all(torch.equal(empty[k], original[k]) for k in original)
if scenario == "killed":
    print(json.dumps({"source": result.source, "equal": equal}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
if seed is not None:
    seed.close()
    try:  # a reader that arrives at a closing seed is refused (counted by reason)
        seed.leases.acquire("late-reader")
    except LeaseRefused:
        pass
import urllib.request  # noqa: E402  (only the coordinator's scrape needs it)

with urllib.request.urlopen(f"http://127.0.0.1:{coordinator.metrics_port}/metrics", timeout=10) as reply:
    coordinator_scrape = reply.read().decode()
coordinator.stop()
print(
    json.dumps(
        {
            "source": result.source,
            "equal": equal,
            "storage_bytes": result.storage_bytes,
            "scrape": generate_latest(REGISTRY).decode(),
            "coordinator_scrape": coordinator_scrape,
        }
    )
)
