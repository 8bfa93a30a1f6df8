"""Process-wide Prometheus metrics of seeds and targets, and the alarms for silent degradation.

The families live in prometheus_client's default registry: `peerload seed --metrics-port`,
`peerload load --serve --metrics-port` and any program's own exporter show them, and inside vLLM
(which sets PROMETHEUS_MULTIPROC_DIR) every rank writes them to vLLM's multiprocess directory, so
they appear on vLLM's own /metrics. Quantities that go down are counter pairs (granted/ended),
not gauges, so a killed rank's numbers never go backwards there (docs/metrics.md).
"""

from __future__ import annotations

import logging
import os
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# From a 10 ms handshake to an hour-long cold load of a very large model.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

# -- seeds ------------------------------------------------------------------------------------
SEED_BYTES_SERVED = Counter(
    "peerload_seed_bytes_served",
    "Bytes readers read from this process's seeds (reported at lease release)",
    ["transport"],
)
SEED_PARTS_SERVED = Counter(
    "peerload_seed_parts_served", "Verified parts readers read from this process's seeds", ["transport"]
)
SEED_LEASES_GRANTED = Counter("peerload_seed_leases_granted", "Read leases granted; open readers = granted - ended")
SEED_LEASES_ENDED = Counter("peerload_seed_leases_ended", "Read leases that ended, by how (released, lapsed)", ["how"])
SEED_REFUSALS = Counter("peerload_seed_lease_refusals", "Read leases refused, by reason", ["reason"])
SEED_TRANSPORT_HEALTHY = Gauge(
    "peerload_seed_transport_healthy",
    "1 while the seed's transport can serve peers, 0 while it heartbeats STALE",
    ["transport"],
    multiprocess_mode="min",
)
SEED_TRANSPORT_FAILURES = Counter(
    "peerload_seed_transport_failures", "Times a seed's transport stopped being able to serve peers", ["transport"]
)

# -- targets ----------------------------------------------------------------------------------
LOAD_PHASE_SECONDS = Histogram(
    "peerload_load_phase_seconds", "Seconds per phase of a load", ["phase"], buckets=LOAD_BUCKETS
)
LOAD_SECONDS = Histogram("peerload_load_seconds", "Seconds per load, by origin", ["origin"], buckets=LOAD_BUCKETS)
LOADS = Counter("peerload_loads", "Loads finished, by origin (peer, storage, mixed) or failed", ["origin"])
LOAD_BYTES = Counter("peerload_load_bytes", "Bytes loaded, by origin (peer, storage)", ["origin"])
LOAD_PEER_BYTES = Counter(
    "peerload_load_peer_bytes",
    "Bytes read from peers, by transport and the data path it took (shm, rdma, tcp, auto)",
    ["transport", "path"],
)
LOAD_SOURCES_USED = Counter("peerload_load_sources_used", "Sources loads read from, by kind", ["kind"])
LOAD_SOURCE_DROPS = Counter("peerload_load_source_drops", "Sources dropped during a load, by error", ["error"])
LOAD_FALLBACKS = Counter("peerload_load_fallbacks", "Loads that read from storage, by reason", ["reason"])
CHECKSUM_FAILURES = Counter("peerload_checksum_failures", "Parts whose checksum did not match on arrival", ["side"])

# -- alarms -----------------------------------------------------------------------------------
ALARMS = Counter("peerload_alarms", "Silent degradations noticed, by alarm (see docs/metrics.md)", ["alarm"])
TCP_PATH = "tcp_path"
STORAGE_FALLBACK = "storage_fallback"
CHECKSUM_MISMATCH = "checksum_mismatch"
STORE_OUTAGE = "store_outage"
ALARM_NAMES = (TCP_PATH, STORAGE_FALLBACK, CHECKSUM_MISMATCH, STORE_OUTAGE)


def alarm(name: str, cause: str, fix: str, counter: Counter = ALARMS, logger: logging.Logger = log) -> None:
    """Count alarm `name` and log it as one WARNING line: what happened, then what to do."""
    counter.labels(name).inc()
    logger.warning("ALARM %s: %s; fix: %s", name, cause, fix)


def multiprocess() -> bool:
    """True when prometheus_client writes to a multiprocess directory (as under vLLM)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"))


def scrape_registry() -> CollectorRegistry:
    """What a /metrics of this process should expose: every process's files in multiprocess mode."""
    if not multiprocess():
        from prometheus_client import REGISTRY

        return REGISTRY
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry)
    return registry


class MetricsServer:
    """/metrics of this process's peerload families on HOST:PORT (0: a free port); `close()` stops it."""

    def __init__(self, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=scrape_registry())
        self._server: WSGIServer | None = server
        self._thread: threading.Thread | None = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
