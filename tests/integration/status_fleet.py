"""A small live fleet for the status page test: a coordinator (HTTP port on), a seed, a target that
loaded from it and serves, a peerload worker still loading (one part held), and an
official-client-style worker still INITIALIZING.

Prints {"http_port", "seed", "target", "parts"} as one JSON line, then runs until stdin closes.
"""

from __future__ import annotations

import json
import sys

import torch

from peerload import Settings, SourceIdentity, load_into, publish
from peerload.client import CoordinatorClient, WorkerInfo
from peerload.coordinator.server import serve
from peerload.parts import plan_parts
from peerload.seed.availability import PartAvailability
from peerload.seed.publisher import Publisher
from peerload.tensors import collect

coordinator = serve(Settings.load(env={}), port=0, metrics_port=0)
settings = Settings.load(coordinator=coordinator.address, chunk_bytes=1 << 20, advertise_host="127.0.0.1")
identity = SourceIdentity(model_name="demo-org/status-model", dtype="float32")
torch.manual_seed(0)
weights = {"w": torch.randn(1024, 1024), "b": torch.arange(1024.0)}
seed = publish(weights, identity, settings=settings, worker_id="seed-0")
empty = {k: torch.empty_like(v) for k, v in weights.items()}
result = load_into(empty, identity, settings=settings, worker_id="target-1")
assert all(torch.equal(empty[k], weights[k]) for k in weights)
# A peerload worker still loading (INITIALIZING), which holds its first part only.
loading_tensors = collect({k: v.clone() for k, v in weights.items()})
count = len(plan_parts(((n, r.numel()) for n, r in loading_tensors.regions.items()), settings.chunk_bytes))
held = PartAvailability(count)
loading = Publisher(loading_tensors, identity, rank=0, settings=settings, worker_id="loading-2", availability=held)
held.mark(0)
other = SourceIdentity(model_name="other-org/loading-model", dtype="bfloat16")
with CoordinatorClient(coordinator.address) as client:
    client.publish(other, WorkerInfo(rank=0, nixl_metadata=b"nixlSerDes-x"), "mx-worker-7")
ready = {"http_port": coordinator.metrics_port, "seed": seed.worker_id, "target": result.worker_id, "parts": count}
print(json.dumps(ready), flush=True)
sys.stdin.read()
loading.close(wait_readers=False)
result.close()
seed.close()
coordinator.stop()
