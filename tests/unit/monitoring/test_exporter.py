"""The monitoring exporter under idle connections: bounded threads, idle ones closed."""

import socket
import threading
import urllib.request

from pipeline.monitoring import exporter
from tests.helpers.waiting import wait_until


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        return reply.read()


def test_idle_connections_take_bounded_threads_and_are_closed(tmp_path, monkeypatch):
    """2,000 idle sockets once made 2,004 threads, for as long as they stayed open. Now at
    most MAX_CONNECTIONS threads serve them, each idle one is closed after IDLE_SECONDS,
    and scrapes work again once they are gone."""
    monkeypatch.setattr(exporter.BoundedHTTPServer, "max_connections", 8)
    # seconds, set short for the test: the handler class reads it when the server is made
    monkeypatch.setattr(exporter, "IDLE_SECONDS", 1.0)
    metrics = tmp_path / "metrics.prom"
    metrics.write_text("kmeans_up 1\n")
    server, url = exporter.serve_in_thread(metrics)
    before = threading.active_count()
    idle, most = [], [0]

    def threads() -> int:
        most[0] = max(most[0], threading.active_count() - before)
        return most[0]

    try:
        for _ in range(100):
            idle.append(socket.create_connection(server.server_address[:2]))
            threads()
        # the server closes every one of them: at once when no slot was free, after
        # IDLE_SECONDS otherwise; never more threads than slots meanwhile
        closed = [_closed_by_server(sock, threads) for sock in idle]
        assert all(closed)
        assert 0 < most[0] <= 8, most
        wait_until(lambda: threading.active_count() <= before, 60, "idle threads ended",
                   interval=0.1)
        assert _scrape(url) == b"kmeans_up 1\n"
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def _closed_by_server(sock: socket.socket, sample) -> bool:
    """Whether the server ends the connection (within 30 s), sampling the threads meanwhile."""
    sock.settimeout(0.2)
    for _ in range(150):
        sample()
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            continue
    return False
