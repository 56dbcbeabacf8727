"""The worker's `/metrics` + `/healthz` HTTP endpoint, serving a `Metrics` registry.

Kept apart from `stream_app.metrics` so that `replay` and the unit tests record metrics
without an HTTP server in the import graph. Standard-library `http.server` on a daemon
thread: the scrape load (one request every few seconds) needs nothing more.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder

from stream_app.metrics import Metrics


def parse_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, `:port` (all interfaces) or `port` -> (host, port)."""
    a = addr.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"bad metrics address {addr!r}: expected [host]:port")
        port_s = rest[1:]
    elif ":" in a:
        host, _, port_s = a.rpartition(":")
        host = host or "0.0.0.0"
    else:
        host, port_s = "127.0.0.1", a
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad metrics address {addr!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad metrics address {addr!r}: port out of range")
    return host, port


class MetricsServer:
    """A running `/metrics` + `/healthz` server (see `serve`)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(
    metrics: Metrics,
    addr: str = "127.0.0.1:9108",
    ready: Callable[[], bool] | None = None,
) -> MetricsServer:
    """Start a daemon thread serving `GET /metrics` and `GET /healthz` on `addr`.

    `/healthz` answers 200 `ready` when `ready()` is true, else 503 `not ready` (also when
    `ready()` raises). `ready=None` means always ready. Port 0 picks a free port; the
    returned object has `.port`, `.host`, `.url` and `.close()`.
    """
    host, port = parse_addr(addr)
    registry = metrics.registry
    is_ready = ready if ready is not None else (lambda: True)

    class Handler(BaseHTTPRequestHandler):
        server_version = "chargecap"
        sys_version = ""

        def _send(self, status: int, body: bytes, ctype: str, head: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _handle(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                try:
                    body = encoder(registry)
                except Exception:  # noqa: BLE001 - never let a collector kill the server
                    self._send(500, b"metrics collection failed\n", "text/plain", head)
                    return
                self._send(200, body, ctype, head)
            elif path == "/healthz":
                try:
                    ok = bool(is_ready())
                except Exception:  # noqa: BLE001
                    ok = False
                if ok:
                    self._send(200, b"ready\n", "text/plain; charset=utf-8", head)
                else:
                    self._send(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        b"not ready\n",
                        "text/plain; charset=utf-8",
                        head,
                    )
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._handle(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._handle(head=True)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # no access log: scrapes every 15 s would drown the worker's log

    server_cls = ThreadingHTTPServer
    if ":" in host:

        class _V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_cls = _V6Server
    httpd = server_cls((host, port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever,
        name="chargecap-metrics",
        kwargs={"poll_interval": 0.2},
        daemon=True,
    )
    thread.start()
    return MetricsServer(httpd, thread)
