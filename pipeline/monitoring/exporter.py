"""A small Prometheus exporter: ``GET /metrics`` answers the latest monitoring window's
figures (the text file the monitoring DAG writes), for Prometheus to scrape.

Chosen over a Pushgateway: nothing extra to run in the embedded default, and the figures stay
readable after the DAG task that computed them ended. ``kmeans monitor-exporter`` runs it;
``monitoring/prometheus.yml`` scrapes it.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def make_server(metrics_file: Path, host: str = "127.0.0.1", port: int = 9108
                ) -> ThreadingHTTPServer:
    """An HTTP server answering ``/metrics`` from ``metrics_file`` (empty until the first
    window) and ``/-/healthy``; anything else is 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            if self.path == "/metrics":
                try:
                    body = Path(metrics_file).read_bytes()
                except FileNotFoundError:
                    body = b"# no monitoring window yet\n"
                self._reply(200, body, CONTENT_TYPE)
            elif self.path == "/-/healthy":
                self._reply(200, b"ok\n", "text/plain")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet: Prometheus scrapes every few seconds
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(metrics_file: Path, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[ThreadingHTTPServer, str]:
    """Start the exporter on a thread; ``(server, base URL)``; ``server.shutdown()`` ends it."""
    server = make_server(metrics_file, host, port)
    threading.Thread(target=server.serve_forever, name="monitoring-exporter",
                     daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
