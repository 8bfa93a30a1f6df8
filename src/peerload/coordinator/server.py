"""Build, start and stop the coordinator: P2pService + grpc.health.v1 + reaper over one store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from peerload._address import host_port, is_loopback
from peerload._gen.model_express import p2p_pb2 as pb
from peerload._grpc import ChannelSecurity
from peerload._grpc_server import ServerSecurity, bind, new_server
from peerload.coordinator.http_server import HttpServer
from peerload.coordinator.metrics import CoordinatorMetrics, MeteredServicer
from peerload.coordinator.reaper import Reaper
from peerload.coordinator.registry import Registry
from peerload.coordinator.service import SERVICE, P2pServicer, p2p_handler
from peerload.coordinator.status_page import StatusPages
from peerload.coordinator.store import Store, make_store
from peerload.errors import ConfigError
from peerload.limits import COORDINATOR_MAX_MESSAGE_BYTES
from peerload.settings import Settings

logger = logging.getLogger(__name__)

P2P_SERVICE = pb.DESCRIPTOR.services_by_name["P2pService"].full_name
# What a write token is needed for, when the coordinator restricts writes (accept_write_tokens_file).
WRITE_METHODS = (f"/{P2P_SERVICE}/PublishMetadata", f"/{P2P_SERVICE}/UpdateStatus")


class CoordinatorServer:
    """A coordinator: P2pService, health and metrics over one registry. Use `serve(settings)`.

    `clock` (unix seconds) dates heartbeats and decides expiry; tests pass one they move by hand.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        max_message_bytes: int = COORDINATOR_MAX_MESSAGE_BYTES,
        reap_interval_s: float | None = None,
        max_workers: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = settings.host
        self.port = 0  # bound by start()
        # Port of the Prometheus /metrics endpoint, when one was asked for.
        self.metrics_port: int | None = None
        self.security = ServerSecurity.from_settings(settings)
        self._store = store
        self._metrics = CoordinatorMetrics(
            store,
            backend=type(store).__name__.removesuffix("Store").lower(),
            tls=self.security.key_and_cert is not None,
        )
        self._http: HttpServer | None = None
        # How the status page asks loading seeds for their parts (as any client of theirs would).
        self._seed_security = ChannelSecurity.from_settings(settings)
        self.registry = Registry(
            self._metrics.store,
            settings.heartbeat_timeout_s,
            settings.gc_timeout_s,
            clock,
            max_workers_per_source=settings.max_workers_per_source,
            max_tensors_per_worker=settings.max_tensors_per_worker,
        )
        self._metrics.watch_workers(self.registry)
        self._server = new_server(
            self.security,
            max_workers=max_workers,
            thread_name_prefix="peerload-rpc",
            # Larger requests are refused with RESOURCE_EXHAUSTED by gRPC itself, before any parsing.
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # A second server on the same port must fail loudly, not share the port.
                ("grpc.so_reuseport", 0),
            ],
            write_methods=WRITE_METHODS,
        )
        servicer = MeteredServicer(P2pServicer(self.registry), self._metrics, [m.name for m in SERVICE.methods])
        self._server.add_generic_rpc_handlers((p2p_handler(servicer, observe=self._metrics.observe),))
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if reap_interval_s is None:
            reap_interval_s = min(5.0, max(0.05, min(settings.heartbeat_timeout_s, settings.gc_timeout_s) / 4))
        self._reaper = Reaper(self.registry, reap_interval_s, on_health=self.set_serving)
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def start(self, port: int, metrics_port: int | None = None) -> None:
        """Bind HOST:port (0 picks a free one), start serving, reaping and, if asked, /metrics.

        Raises:
            ConfigError: the address or the metrics port cannot be bound.
        """
        self.port = bind(
            self._server, self.host, port, self.security, what="coordinator", fix="choose another --port or --host"
        )
        self._server.start()
        if metrics_port is not None:
            s = self.security
            pages = StatusPages(self.registry, self._seed_security, [t for t in (s.tokens, s.write_tokens) if t])
            try:
                self._http = HttpServer(self.host, metrics_port, self._metrics.registry, pages.routes())
                self.metrics_port = self._http.port
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {self.host}:{metrics_port}: {exc}; choose another --metrics-port"
                ) from None
            if not is_loopback(self.host) and s.tokens is None and s.write_tokens is None:
                logger.warning(
                    "the status page on http://%s/ lists every worker to anyone who reaches it (no token); "
                    "set --auth-token-file or keep --host on loopback (docs/security.md)",
                    host_port(self.host, self.metrics_port),
                )
        self._reaper.start()
        self.set_serving(True)

    @property
    def address(self) -> str:
        """HOST:PORT to give clients."""
        return host_port(self.host, self.port)

    @property
    def store(self) -> Store:
        return self._store

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
            if self._http is not None:
                self._http.close()
            self._store.close()
            self._stopped.set()
            logger.info("coordinator on %s stopped", self.address)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until stopped; True if it stopped within the timeout."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> CoordinatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    settings: Settings,
    *,
    port: int | None = None,
    store: Store | None = None,
    max_message_bytes: int = COORDINATOR_MAX_MESSAGE_BYTES,
    reap_interval_s: float | None = None,
    max_workers: int = 16,
    metrics_port: int | None = None,
    clock: Callable[[], float] = time.time,
) -> CoordinatorServer:
    """Start a coordinator on settings.host:settings.port and return it running.

    Args:
        settings: host, port, store, redis_url, heartbeat_timeout_s, gc_timeout_s, and the server
            security settings (tls_cert, tls_key, accept_tokens_file, accept_write_tokens_file).
        port: overrides settings.port; 0 picks a free port (see `.port`).
        store: an already built store (default: `make_store(settings)`).
        max_message_bytes: larger requests are refused with RESOURCE_EXHAUSTED.
        reap_interval_s: reaper period (default: a quarter of the shorter timeout, 0.05-5 s).
        metrics_port: serve Prometheus /metrics on settings.host at this port (0: a free one).
        clock: unix seconds that date heartbeats and decide expiry (tests pass a manual one).

    Raises:
        ConfigError: the address cannot be bound, the store is misconfigured, or a certificate,
            key or token file is unusable.
        MissingExtraError: the Redis store was chosen without the `redis` package.
    """
    store_name = settings.store if store is None else type(store).__name__
    store = store if store is not None else make_store(settings)
    try:
        coordinator = CoordinatorServer(
            settings,
            store,
            max_message_bytes=max_message_bytes,
            reap_interval_s=reap_interval_s,
            max_workers=max_workers,
            clock=clock,
        )
    except BaseException:
        store.close()
        raise
    try:
        coordinator.start(settings.port if port is None else port, metrics_port)
    except BaseException:
        coordinator.stop(grace_s=0)
        raise
    logger.info(
        "coordinator listening on %s (store=%s, heartbeat_timeout=%ss, gc_timeout=%ss, %s)",
        coordinator.address,
        store_name,
        settings.heartbeat_timeout_s,
        settings.gc_timeout_s,
        coordinator.security.describe(),
    )
    return coordinator
