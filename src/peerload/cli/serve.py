"""`peerload serve`: run the coordinator until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

import typer

from peerload.cli._interrupt import Interrupted
from peerload.settings import Settings

logger = logging.getLogger(__name__)


def serve(
    host: Optional[str] = typer.Option(
        None, help="Address to listen on.", show_default="PEERLOAD_HOST, else 127.0.0.1"
    ),
    port: Optional[int] = typer.Option(
        None,
        min=0,
        max=65535,
        help="Port; 0 picks a free one, printed at start.",
        show_default="PEERLOAD_PORT, else 8001",
    ),
    store: Optional[str] = typer.Option(
        None, help="Registry store: memory or redis.", show_default="PEERLOAD_STORE, else memory"
    ),
    redis_url: Optional[str] = typer.Option(
        None, help="Redis URL for --store redis.", show_default="PEERLOAD_REDIS_URL, else redis://127.0.0.1:6379/0"
    ),
    heartbeat_timeout: Optional[float] = typer.Option(
        None,
        help="Seconds without heartbeat before a READY worker is STALE.",
        show_default="PEERLOAD_HEARTBEAT_TIMEOUT_S, else 10",
    ),
    gc_timeout: Optional[float] = typer.Option(
        None,
        help="Seconds without heartbeat before a STALE worker is deleted.",
        show_default="PEERLOAD_GC_TIMEOUT_S, else 60",
    ),
    metrics_port: Optional[int] = typer.Option(
        None,
        min=0,
        max=65535,
        help="Serve Prometheus /metrics and the status page (/, /status.json) on this port (0 picks a free one).",
        show_default="off",
    ),
    tls_cert: Optional[str] = typer.Option(
        None,
        help="Serve TLS with this certificate (PEM); needs --tls-key.",
        show_default="PEERLOAD_TLS_CERT, else plaintext",
    ),
    tls_key: Optional[str] = typer.Option(
        None, help="Private key (PEM) of --tls-cert.", show_default="PEERLOAD_TLS_KEY"
    ),
    auth_token_file: Optional[str] = typer.Option(
        None,
        help="Require a bearer token from this file (one per line, re-read on change) on every RPC.",
        show_default="PEERLOAD_ACCEPT_TOKENS_FILE, else no token",
    ),
    auth_write_token_file: Optional[str] = typer.Option(
        None,
        help="Publishing and status updates need a token from this file (others only read).",
        show_default="PEERLOAD_ACCEPT_WRITE_TOKENS_FILE, else any accepted token",
    ),
) -> None:
    """Run the coordinator (ModelExpress-compatible P2P metadata service)."""
    from peerload.coordinator.server import serve as start

    overrides: dict[str, Any] = dict(
        host=host,
        port=port,
        store=store,
        redis_url=redis_url,
        heartbeat_timeout_s=heartbeat_timeout,
        gc_timeout_s=gc_timeout,
        tls_cert=tls_cert,
        tls_key=tls_key,
        accept_tokens_file=auth_token_file,
        accept_write_tokens_file=auth_write_token_file,
    )
    if heartbeat_timeout is not None and heartbeat_timeout > 0:
        # Keep the settings' interval < timeout rule satisfiable when only the timeout is given.
        base = Settings.load()
        if base.heartbeat_interval_s >= heartbeat_timeout:
            overrides["heartbeat_interval_s"] = heartbeat_timeout / 2
    settings = Settings.load(**overrides)
    server = start(settings, metrics_port=metrics_port)
    stop = threading.Event()
    received: list[signal.Signals] = []

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        received.append(signal.Signals(signum))
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    typer.echo(
        f"peerload coordinator listening on {server.address} (store={settings.store}, {server.security.describe()})",
        err=True,
    )
    if server.metrics_port is not None:
        typer.echo(f"metrics on http://{settings.host}:{server.metrics_port}/metrics", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and received[0] is signal.SIGINT:  # stopped cleanly; 130 tells a shell it was Ctrl-C
        raise Interrupted("the coordinator stopped cleanly")
