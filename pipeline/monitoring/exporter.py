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
#: The exporter's port (``kmeans monitor-exporter --port``; monitoring/prometheus.yml scrapes it).
EXPORTER_PORT = 9108
#: Connections served at once (a thread each); one more is closed at once (a scraper retries).
MAX_CONNECTIONS = 32
#: Seconds a connection may stay idle (before or between requests) before it is closed.
IDLE_SECONDS = 10.0


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` of them: 2,000 idle sockets
    once made 2,004 threads. With the handler's idle timeout, a connection that sends nothing
    gives its slot back after :data:`IDLE_SECONDS`."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed at once, no thread made
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_server(metrics_file: Path, host: str = "127.0.0.1", port: int = EXPORTER_PORT
                ) -> BoundedHTTPServer:
    """An HTTP server answering ``/metrics`` from ``metrics_file`` (empty until the first
    window) and ``/-/healthy``; anything else is 404. At most :data:`MAX_CONNECTIONS`
    connections at once, each closed after :data:`IDLE_SECONDS` without a request."""

    class Handler(BaseHTTPRequestHandler):
        timeout = IDLE_SECONDS  # the socket's: an idle connection is closed, its thread ends

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

    return BoundedHTTPServer((host, port), Handler)


def serve_in_thread(metrics_file: Path, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[BoundedHTTPServer, str]:
    """Start the exporter on a thread; ``(server, base URL)``; ``server.shutdown()`` ends it."""
    server = make_server(metrics_file, host, port)
    threading.Thread(target=server.serve_forever, name="monitoring-exporter",
                     daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
