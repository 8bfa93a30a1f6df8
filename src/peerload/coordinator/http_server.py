"""The coordinator's HTTP port: Prometheus /metrics, and the status page (/ and /status.json)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# path -> (content type, body) for one request; `query` is the parsed query string.
Route = Callable[[dict[str, list[str]], dict[str, str]], tuple[int, str, bytes]]


class HttpServer:
    """Serves `routes` (and /metrics from `registry`) on HOST:PORT in a thread; `close()` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, routes: dict[str, Route] | None = None):
        routes = dict(routes or {})
        routes["/metrics"] = lambda query, headers: (200, CONTENT_TYPE_LATEST, generate_latest(registry))
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), _handler(routes))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="peerload-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    from urllib.parse import parse_qs, urlsplit

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            route = routes.get(url.path)
            if route is None:
                self._send(
                    404,
                    "text/plain; charset=utf-8",
                    f"no page at {url.path}; try /, /status.json or /metrics\n".encode(),
                )
                return
            try:
                code, content_type, body = route(parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()})
            except Exception:  # a bug must not kill the server thread; the log has it
                log.exception("HTTP %s failed", url.path)
                code, content_type, body = (
                    500,
                    "text/plain; charset=utf-8",
                    b"internal error; see the coordinator's log\n",
                )
            self._send(code, content_type, body)

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return Handler
