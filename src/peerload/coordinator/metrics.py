"""Prometheus metrics of the coordinator: RPC counts and latency, workers by status."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from peerload.coordinator.registry import Registry
from peerload.wire import status_name

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class _WorkerCollector(Collector):
    """Counts workers per (model, status) at scrape time, so the numbers are never stale."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "peerload_workers", "Workers known to the coordinator, by status", labels=["model", "status"]
        )
        now = self._registry.now_ms()
        counts = Counter(
            (e.model_name, status_name(self._registry.effective_status(e, now)))
            for e in self._registry.store.entries(payload=False)
        )
        for (model, status), n in sorted(counts.items()):
            family.add_metric([model, status], n)
        yield family


class CoordinatorMetrics:
    """One registry of metrics per coordinator (several can run in one process, e.g. tests)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = CollectorRegistry()
        self._rpc = Histogram(
            "peerload_rpc_seconds",
            "P2pService RPC latency by method and status code",
            ["method", "code"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
        )
        self.registry.register(_WorkerCollector(registry))
        self._http: WSGIServer | None = None

    def observe(self, method: str, code: str, started: float) -> None:
        self._rpc.labels(method, code).observe(time.perf_counter() - started)

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on HOST:PORT (0 picks a free port); returns the bound port."""
        http, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = http
        return int(http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
