"""A client of `coordinators.test:PORT` (a name with several addresses) that publishes one worker
and then heartbeats and lists it back to back, counting calls and errors into a JSON file.

Usage: python dns_client.py ADDRESS PROGRESS_FILE. Runs until its stdin closes; it runs inside a
network namespace whose /etc/hosts gives the name its addresses, so it is its own process.
"""

import json
import sys
import threading

from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.identity import SourceIdentity

address, progress = sys.argv[1], sys.argv[2]
identity = SourceIdentity(model_name="test/dns")
counts = {"calls": 0, "errors": 0, "not_ready": 0, "last_error": ""}
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
with CoordinatorClient(address, timeout_s=10) as client:
    sid = client.publish(identity, WorkerInfo(rank=0, nixl_metadata=b"meta"), "dns-worker")
    while not stop.is_set():
        try:
            client.update_status(sid, "dns-worker", 0, SourceStatus.READY)
            ready = [r.worker_id for r in client.list_sources(identity, status=SourceStatus.READY)]
            counts["not_ready"] += ready != ["dns-worker"]
        except Exception as exc:  # counted and reported: the test asserts there are none
            counts["errors"] += 1
            counts["last_error"] = repr(exc)
        counts["calls"] += 1
        with open(progress + ".tmp", "w") as fh:
            json.dump(counts, fh)
        # Replace atomically, so the test never reads half a file.
        import os

        os.replace(progress + ".tmp", progress)
