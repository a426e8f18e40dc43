"""Ports and readiness of servers the tests start on loopback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx

from tests.helpers.waiting import wait_until

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now (the caller binds it soon after; a race is unlikely)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log file ('' if it does not exist)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def answers(url: str, status: int = 200, timeout: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers ``status`` now (a refused connection is a no)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == status
    except httpx.TransportError:
        return False


def wait_ready(proc: subprocess.Popen, url: str, stderr: Path, *, timeout: float = 240.0,
               tail: int = 3000, path: str = "/v2/health/ready") -> None:
    """Until ``url + path`` answers 200; an exit of ``proc`` fails the wait at once, with the
    tail of its ``stderr`` file. ``timeout`` is counted without growth of that file (a server
    that is still writing its start-up log is still making progress)."""

    def dead() -> str | None:
        code = proc.poll()
        return None if code is None else f"exited {code}: {log_tail(stderr, tail)}"

    def size() -> int:
        return stderr.stat().st_size if stderr.exists() else 0

    wait_until(lambda: answers(url + path), timeout, f"{url}{path} ready",
               progress=size, alive=dead, interval=0.25)
