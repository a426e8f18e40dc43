"""`make airflow-ui` and `make airflow-stop` end standalone Airflow as a whole process group,
also when a member ignores SIGTERM (as the scheduler can, for minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipeline.devtools import airflow_env
from tests.helpers.waiting import wait_until

STUBBORN = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone; so does one reaped
    # between the two looks
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_stop_group_ends_a_group_that_ignores_sigterm():
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    child = int(proc.stdout.readline())
    t = time.monotonic()
    airflow_env.stop_group(proc.pid, grace_seconds=1.0)
    proc.wait(timeout=10)
    assert time.monotonic() - t >= 0.9, "SIGTERM was ignored: SIGKILL only after the grace"
    wait_until(lambda: not _alive(child), 5, "the group's other members are gone too",
               interval=0.05)
    assert not _alive(child), "the group's other members are gone too"


def test_stop_without_a_running_standalone_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert airflow_env.stop() == "no airflow-ui running"
    (tmp_path / "standalone.pgid").write_text("999999999")
    assert airflow_env.stop() == "airflow-ui stopped (process group 999999999)"
    assert not (tmp_path / "standalone.pgid").exists()
