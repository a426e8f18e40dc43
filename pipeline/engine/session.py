"""The engine's SparkSession: building it (this interpreter's Python workers, the UI port, the
cluster defaults) and stopping it in order (Python daemons, the context, the JVM).

Nothing here knows of blocks or iterations (:mod:`pipeline.engine.staging`,
:mod:`pipeline.engine.spark`); the session's workers are forked from
:mod:`pipeline.engine.daemon`, with the engine already imported.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Errors only from Spark's JVM on the console (see the file).
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


#: What the engine sets on a cluster (any master but ``local``) unless the caller says
#: otherwise. The first job waits until every requested executor has registered, so the blocks
#: are spread over all of them (by cores, :mod:`pipeline.engine.placement`).
#:
#: A block's task waits up to 10 s (Spark's default: 3 s) for the executor that holds the
#: block when that one is busy: the engine itself moves blocks off late, slow and lost
#: executors (:class:`pipeline.engine.spark.SparkBlockSource`), at once for a lost one and
#: after 1 s or more without progress for a late one, so Spark's own fallback to another
#: executor would only stage blocks a second time on a loaded machine.
#:
#: Spark's speculation stays on as a backstop at a stated threshold: once 75% of a job's tasks
#: have finished, a task still running after 1.5x their median and at least 10 s gets a copy.
#: Spark 4's efficiency-based speculation (on by default) is off: it judges tasks by their
#: input rate, which these tasks do not report (they read their block outside Spark), so it
#: fell back to twice the minimum (the first copy started 21 s into the task).
#:
#: A remote block fetch retries after 1 s instead of 5 s, 10 times instead of 3 (about the
#: same patience for a live executor): every stage's task binary is a broadcast that an
#: executor may fetch from another one, and a survivor fetching it from an executor that had
#: just died waited out the first 5 s retry before Spark found it dead (issue 25).
CLUSTER_DEFAULTS = {
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
    "spark.speculation": "true",
    "spark.speculation.efficiency.enabled": "false",
    "spark.speculation.multiplier": "1.5",
    "spark.speculation.quantile": "0.75",
    "spark.speculation.minTaskRuntime": "10s",
    "spark.locality.wait": "10s",
    "spark.shuffle.io.retryWait": "1s",
    "spark.shuffle.io.maxRetries": "10",
}


#: Spark's UI port is KMEANS_PORT_BASE + this when a base is set: the settings' PORT_OFFSETS
#: (pipeline.core.settings) say the same, which the engine does not import; a test holds them
#: together.
SPARK_UI_PORT_OFFSET = 2


def ui_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Spark's UI settings from the deployment's settings in the environment: the port
    KMEANS_SPARK_UI_PORT names (0: no UI, ``spark.ui.enabled=false``), else KMEANS_PORT_BASE +
    :data:`SPARK_UI_PORT_OFFSET`, else nothing (Spark's 4040, or the next free port).

    Examples
    --------
    >>> ui_conf({"KMEANS_PORT_BASE": "20000"})
    {'spark.ui.port': '20002'}
    >>> ui_conf({"KMEANS_SPARK_UI_PORT": "0", "KMEANS_PORT_BASE": "20000"})
    {'spark.ui.enabled': 'false'}
    """
    env = os.environ if environ is None else environ
    if env.get("KMEANS_SPARK_UI_PORT"):
        port = int(env["KMEANS_SPARK_UI_PORT"])
    elif env.get("KMEANS_PORT_BASE"):
        port = int(env["KMEANS_PORT_BASE"]) + SPARK_UI_PORT_OFFSET
    else:
        return {}
    return {"spark.ui.enabled": "false"} if port == 0 else {"spark.ui.port": str(port)}


def spark_session(master: str = "local[*]", *, app_name: str = "kmeans", driver_memory: str = "2g",
                  extra: dict | None = None, ui_port: int | None = None) -> Any:
    """A SparkSession whose Python workers run this interpreter (not `python3` from PATH).

    Examples
    --------
    >>> spark = spark_session("local[2]", app_name="doc")  # doctest: +SKIP
    >>> spark.sparkContext.master  # doctest: +SKIP
    'local[2]'
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if master:  # empty: spark-submit (or the SparkApplication) already chose the master
        builder = builder.master(master)
    builder = (builder.appName(app_name)
               .config("spark.driver.memory", driver_memory)
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               # Executor <-> Python worker over Unix sockets instead of loopback TCP: halves
               # the fixed cost of a Python job (124 -> 67 ms measured here), paid every
               # iteration.
               .config("spark.python.unix.domain.socket.enabled", "true")
               # workers forked with the engine already imported (pipeline/engine/daemon.py)
               .config("spark.python.daemon.module", "pipeline.engine.daemon"))
    extra = dict(extra or {})
    if master and not master.startswith("local"):
        extra = {**CLUSTER_DEFAULTS, **extra}
    # The driver's UI where the deployment puts it (``ui_port``: the settings' spark_ui_port;
    # None: from the environment, :func:`ui_conf`); the caller's ``extra`` wins.
    ui = (ui_conf() if ui_port is None else
          {"spark.ui.enabled": "false"} if ui_port == 0 else {"spark.ui.port": str(ui_port)})
    for key, value in ui.items():
        extra.setdefault(key, value)
    extra.setdefault("spark.driver.extraJavaOptions",
                     f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}")
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    global _stop_at_exit
    if not _stop_at_exit:  # once per process, whatever the number of sessions
        atexit.register(stop_session)
        _stop_at_exit = True
    return spark


_stop_at_exit = False  # spark_session registered stop_session with atexit

#: What Spark's Python daemons run (the engine's, pipeline/engine/daemon.py, or PySpark's own).
_DAEMON_MODULES = ("pipeline.engine.daemon", "pyspark.daemon")


def stop_session(timeout: float = 60.0) -> None:
    """Stop this process's Spark session, in order: its Python workers, the SparkContext, then
    the JVM; do nothing when no session runs. ``spark_session`` registers it with ``atexit``.

    Left to the interpreter's exit, the JVM learns that the driver is gone when its stdin
    closes and stops Spark from a shutdown hook, while Python has already left: the idle Python
    workers (kept for reuse) find their socket closed, PySpark's worker fails to flush its
    goodbye and prints a ``BrokenPipeError`` traceback per worker, relayed by a JVM on its way
    out, after the command's last line. Here each local daemon is sent SIGTERM first (its own
    clean exit: it hangs up on its workers, which end without a word), then the context stops,
    the py4j gateway closes, and the JVM is waited for, so that whatever Spark still writes
    comes before the caller's next line and nothing after exit. On a cluster the executors'
    daemons are not this machine's: they stop with their executors.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    sc = SparkContext._active_spark_context
    gateway = SparkContext._gateway
    if sc is None and gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    if sc is not None and proc is not None and sc.master.startswith("local"):
        _stop_python_daemons(proc.pid, timeout)
    session = SparkSession.getActiveSession() if sc is not None else None
    try:
        if session is not None:
            session.stop()
        elif sc is not None:
            sc.stop()
    except Exception as err:  # noqa: BLE001 - a JVM already gone: nothing left to stop
        log.warning("Spark did not stop cleanly: %s", err)
    if gateway is None:
        return
    with SparkContext._lock:
        SparkContext._gateway = None
        SparkContext._jvm = None
    try:
        gateway.shutdown()
    except Exception as err:  # noqa: BLE001 - the JVM's end is closed as well below
        log.debug("py4j gateway shutdown: %s", err)
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # the JVM's signal to exit (PythonGatewayServer reads to EOF)
        try:
            proc.wait(timeout)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: do not hang the exit
            log.warning("Spark's JVM (pid %s) did not exit within %.0f s", proc.pid, timeout)


def _stop_python_daemons(jvm_pid: int, timeout: float) -> None:
    """SIGTERM to the Python daemons the local JVM started, and wait until they are gone (each
    sends SIGHUP to its workers and exits: PySpark's own clean shutdown of a daemon)."""
    daemons = [pid for pid, cmd in _children(jvm_pid)
               if any(module in cmd for module in _DAEMON_MODULES)]
    for pid in daemons:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemons and time.monotonic() < deadline:
        daemons = [pid for pid in daemons if _alive(pid)]
        time.sleep(0.02)


def _children(pid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the processes whose parent is ``pid`` (Linux's /proc; none
    elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, already exited, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


