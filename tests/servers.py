"""Helpers for tests that start a server in a subprocess (a plain module, not a conftest: a
server subprocess may import the test module that uses it)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def wait_ready(proc: subprocess.Popen, url: str, stderr: Path, *, timeout: float = 240.0,
               tail: int = 3000) -> None:
    """Until ``url``'s ``/v2/health/ready`` answers 200; an exit of ``proc`` (with the tail of
    its ``stderr`` file) or the timeout fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, stderr.read_text()[-tail:]
        assert time.monotonic() < deadline, f"not ready in {timeout:.0f} s"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
