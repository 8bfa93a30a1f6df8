"""Prometheus metrics of the coordinator: its own families plus ModelExpress' server families.

`peerload_rpc_seconds{method,code}` and `peerload_workers{model,status}` are peerload's; the
`mx_*` families carry the names and labels of the ModelExpress server, so dashboards built for it
work unchanged. Their `outcome` is the handler's verdict, not only the status code: a request
during which the store failed is `backend_error` whatever it answered.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from peerload.coordinator.metered_store import MeteredStore
from peerload.coordinator.registry import Registry
from peerload.coordinator.store import Store
from peerload.errors import StoreUnavailable
from peerload.telemetry import STORE_OUTAGE, alarm
from peerload.wire import status_name

log = logging.getLogger(__name__)

SERVICE = "P2pService"
# ModelExpress' outcome for every UNAVAILABLE: the store (or something it needs) is down.
_OUTCOMES = {grpc.StatusCode.OK.name: "ok", grpc.StatusCode.UNAVAILABLE.name: "backend_error"}
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_BACKEND_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)


def outcome_of(code: str) -> str:
    """ModelExpress' outcome label for a status code name: ok, backend_error, invalid_argument, ..."""
    return _OUTCOMES.get(code, code.lower())


def package_version() -> str:
    try:
        return version("peerload")
    except PackageNotFoundError:  # running from a source tree without an install
        return "unknown"


class _WorkerCollector(Collector):
    """Counts workers per (model, status) at scrape time, so the numbers are never stale."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "peerload_workers", "Workers known to the coordinator, by status", labels=["model", "status"]
        )
        now = self._registry.now_ms()
        try:
            entries = self._registry.store.entries(payload=False)
        except StoreUnavailable:
            return  # the scrape still shows the outage (alarms, backend errors); no stale counts
        counts = Tally((e.model_name, status_name(self._registry.effective_status(e, now))) for e in entries)
        for (model, status), n in sorted(counts.items()):
            family.add_metric([model, status], n)
        yield family


class CoordinatorMetrics:
    """One registry of metrics per coordinator (several can run in one process, e.g. tests).

    Args:
        store: the store to meter; `self.store` is the metered one the Registry must use.
        backend: the store's name for mx_build_info (memory, redis).
        tls: whether the gRPC port serves TLS (mx_build_info's scheme: grpcs, else grpc).
    """

    def __init__(self, store: Store, *, backend: str, tls: bool) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._rpc = Histogram(
            "peerload_rpc_seconds",
            "P2pService RPC latency by method and status code",
            ["method", "code"],
            registry=r,
            buckets=_RPC_BUCKETS,
        )
        build = Gauge(
            "mx_build_info",
            "Build of this server (always 1)",
            ["component", "version", "backend", "scheme"],
            registry=r,
        )
        build.labels("server", package_version(), backend, "grpcs" if tls else "grpc").set(1)
        self._requests = Counter(
            "mx_grpc_requests", "gRPC requests by method and resolved outcome", ["method", "outcome"], registry=r
        )
        self._seconds = Histogram(
            "mx_grpc_request_seconds", "gRPC request latency", ["method", "outcome"], registry=r, buckets=_RPC_BUCKETS
        )
        self._in_flight = Gauge("mx_grpc_requests_in_flight", "gRPC requests being handled", ["method"], registry=r)
        self._ops = Counter("mx_backend_ops", "Store operations", ["store", "op", "result"], registry=r)
        self._op_seconds = Histogram(
            "mx_backend_op_seconds",
            "Store operation latency",
            ["store", "op", "result"],
            registry=r,
            buckets=_BACKEND_BUCKETS,
        )
        self._ops_in_flight = Gauge("mx_backend_ops_in_flight", "Store operations running", ["store", "op"], registry=r)
        self.alarms = Counter("peerload_alarms", "Silent degradations noticed, by alarm", ["alarm"], registry=r)
        self.store = MeteredStore(store, self._observe_op, self._op_in_flight, self._store_outage)

    def watch_workers(self, registry: Registry) -> None:
        """Add `peerload_workers`, counted from `registry` at every scrape."""
        self.registry.register(_WorkerCollector(registry))

    # -- the RPC edge -------------------------------------------------------------------------
    def begin(self, method: str) -> None:
        """A P2pService call starts (before its request is handled)."""
        self.store.begin_request()
        self._in_flight.labels(f"{SERVICE}/{method}").inc()

    def end(self, method: str) -> None:
        self._in_flight.labels(f"{SERVICE}/{method}").dec()

    def observe(self, method: str, code: str, started: float) -> None:
        """A P2pService call ended with status `code` (a name, e.g. "OK")."""
        seconds = time.perf_counter() - started
        self._rpc.labels(method, code).observe(seconds)
        outcome = "backend_error" if self.store.failed_in_this_request() else outcome_of(code)
        label = f"{SERVICE}/{method}"
        self._requests.labels(label, outcome).inc()
        self._seconds.labels(label, outcome).observe(seconds)

    # -- the store ----------------------------------------------------------------------------
    def _observe_op(self, store: str, op: str, result: str, seconds: float) -> None:
        self._ops.labels(store, op, result).inc()
        self._op_seconds.labels(store, op, result).observe(seconds)

    def _op_in_flight(self, op: str, delta: int) -> None:
        self._ops_in_flight.labels("p2p", op).inc(delta)

    def _store_outage(self, cause: str, fix: str) -> None:
        alarm(STORE_OUTAGE, cause, fix, counter=self.alarms, logger=log)


class MeteredServicer:
    """`servicer`'s RPC methods, each counted in flight (and its store failures noted) while it runs."""

    def __init__(self, servicer: object, metrics: CoordinatorMetrics, methods: Iterator[str] | list[str]) -> None:
        for name in methods:
            setattr(self, name, self._wrap(name, getattr(servicer, name), metrics))

    @staticmethod
    def _wrap(name: str, call: Callable[..., Any], metrics: CoordinatorMetrics) -> Callable[..., Any]:
        def metered(*args: Any) -> Any:
            metrics.begin(name)
            try:
                return call(*args)
            finally:
                metrics.end(name)

        return metered
