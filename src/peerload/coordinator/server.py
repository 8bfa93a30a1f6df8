"""Build, start and stop the coordinator: P2pService + grpc.health.v1 + reaper over one store."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.coordinator.metrics import CoordinatorMetrics
from peerload.coordinator.reaper import Reaper
from peerload.coordinator.registry import Registry
from peerload.coordinator.service import P2pServicer, p2p_handler
from peerload.coordinator.store import Store, make_store
from peerload.errors import ConfigError
from peerload.settings import Settings

logger = logging.getLogger(__name__)

P2P_SERVICE = pb.DESCRIPTOR.services_by_name["P2pService"].full_name
# Requests above this are refused with RESOURCE_EXHAUSTED by gRPC itself, before any parsing.
# 64 MiB holds ~500k tensor descriptors; the official client allows 100 MB per message.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


class CoordinatorServer:
    """A running coordinator. Use `serve(settings)` to build one."""

    def __init__(self, server: grpc.Server, host: str, port: int, registry: Registry,
                 health_servicer: health.HealthServicer, reaper: Reaper,
                 metrics: CoordinatorMetrics | None = None, metrics_port: int | None = None) -> None:
        self._server = server
        self.host = host
        self.port = port
        self.registry = registry
        self._health = health_servicer
        self._reaper = reaper
        self._metrics = metrics
        # Port of the Prometheus /metrics endpoint, when one was asked for.
        self.metrics_port = metrics_port
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """HOST:PORT to give clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def store(self) -> Store:
        return self.registry.store

    def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING on grpc.health.v1 (overall and for P2pService)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", P2P_SERVICE):
            self._health.set(service, status)

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving (in-flight RPCs get `grace_s`), the reaper and the store. Idempotent."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._health.enter_graceful_shutdown()
            self._server.stop(grace_s).wait()
            self._reaper.close()
            if self._metrics is not None:
                self._metrics.close()
            self.registry.store.close()
            self._stopped.set()
            logger.info("coordinator on %s stopped", self.address)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until stopped; True if it stopped within the timeout."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> CoordinatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(settings: Settings, *, port: int | None = None, store: Store | None = None,
          max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, reap_interval_s: float | None = None,
          max_workers: int = 16, metrics_port: int | None = None) -> CoordinatorServer:
    """Start a coordinator on settings.host:settings.port and return it running.

    Args:
        settings: host, port, store, redis_url, heartbeat_timeout_s and gc_timeout_s are used.
        port: overrides settings.port; 0 picks a free port (see `.port`).
        store: an already built store (default: `make_store(settings)`).
        max_message_bytes: larger requests are refused with RESOURCE_EXHAUSTED.
        reap_interval_s: reaper period (default: a quarter of the shorter timeout, 0.05-5 s).
        metrics_port: serve Prometheus /metrics on settings.host at this port (0: a free one).

    Raises:
        ConfigError: the address cannot be bound or the store is misconfigured.
        MissingExtraError: the Redis store was chosen without the `redis` package.
    """
    store_name = settings.store if store is None else type(store).__name__
    store = store if store is not None else make_store(settings)
    registry = Registry(store, settings.heartbeat_timeout_s, settings.gc_timeout_s)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A second server on the same port must fail loudly, not share the port.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="peerload-rpc"),
                         options=options)
    metrics = CoordinatorMetrics(registry)
    server.add_generic_rpc_handlers((p2p_handler(P2pServicer(registry), observe=metrics.observe),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bind_port = settings.port if port is None else port
    host = settings.host
    target = f"[{host}]:{bind_port}" if ":" in host else f"{host}:{bind_port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError as exc:
        store.close()
        raise ConfigError(f"cannot listen on {target}: {exc}; choose another --port or --host") from None
    if bound == 0:
        store.close()
        raise ConfigError(f"cannot listen on {target} (port in use?); choose another --port or --host")
    server.start()
    bound_metrics = None
    if metrics_port is not None:
        try:
            bound_metrics = metrics.serve_http(host, metrics_port)
        except OSError as exc:
            server.stop(0)
            store.close()
            raise ConfigError(f"cannot serve metrics on {host}:{metrics_port}: {exc}; choose another "
                              "--metrics-port") from None
    if reap_interval_s is None:
        reap_interval_s = min(5.0, max(0.05, min(settings.heartbeat_timeout_s, settings.gc_timeout_s) / 4))
    holder: list[CoordinatorServer] = []
    reaper = Reaper(registry, reap_interval_s, on_health=lambda ok: holder and holder[0].set_serving(ok))
    coordinator = CoordinatorServer(server, host, bound, registry, health_servicer, reaper, metrics, bound_metrics)
    holder.append(coordinator)
    coordinator.set_serving(True)
    logger.info("coordinator listening on %s (store=%s, heartbeat_timeout=%ss, gc_timeout=%ss)",
                coordinator.address, store_name,
                settings.heartbeat_timeout_s, settings.gc_timeout_s)
    return coordinator
