"""Helpers for tests that run real external services on loopback: a Spark standalone cluster
(master and workers from the pip ``pyspark``) and an S3 server (moto in server mode).

A plain module, not a conftest: a driver subprocess may import it.
Process handling reads ``/proc`` (Linux only): every service is started in a session of its
own, and ending it SIGKILLs every live process of that session. That reaches what a Spark worker
starts (its executor JVMs, and the PySpark daemon, which moves itself to a process group of
its own but stays in the session) and what those start in turn. Processes that outlive their
parent are re-parented to PID 1; where PID 1 does not reap (as in this container), they stay
as zombies (``<defunct>``, no memory, no ports) — the checks here ignore zombies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.net import LOOPBACK, free_port, log_tail  # noqa: F401 (re-exported)
from tests.helpers.waiting import WaitTimeout, wait_until

REPO = Path(__file__).resolve().parents[2]


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, from ``/proc``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def signal_session(sid: int, sig: int) -> int:
    """Send ``sig`` to every live process of session ``sid``; how many got it. SIGSTOP on a
    Spark worker's session freezes the node as a long GC pause or a reclaimed VM would:
    worker, executor JVM and Python workers alike (SIGCONT wakes them)."""
    sent = 0
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent += 1
    return sent


class Throttle:
    """Session ``sid`` held to ``share`` of the time: SIGCONT for ``share`` of every
    ``period`` seconds, SIGSTOP for the rest (a slowed node: a noisy neighbour, a throttled
    container), from :meth:`start` until :meth:`stop`, which leaves it running."""

    def __init__(self, sid: int, share: float, period: float = 0.1) -> None:
        self.sid, self.share, self.period = sid, share, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"throttle-{sid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            signal_session(self.sid, signal.SIGSTOP)
            self._stop.wait(self.period * (1 - self.share))
            signal_session(self.sid, signal.SIGCONT)
            self._stop.wait(self.period * self.share)
        signal_session(self.sid, signal.SIGCONT)

    def start(self) -> Throttle:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        signal_session(self.sid, signal.SIGCONT)


def kill_session_id(sid: int, timeout: float = 30.0) -> None:
    """SIGKILL every live process of session ``sid`` until none is left.

    Killing in rounds also catches a process forked between a scan and the kills.
    """
    def all_gone() -> bool:
        pids = session_pids(sid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_until(all_gone, timeout, f"every process of session {sid} gone", interval=0.05,
               progress=lambda: len(session_pids(sid)))


def kill_session(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """:func:`kill_session_id` of ``proc``'s session (``proc`` was started with
    ``start_new_session=True``), then reap ``proc``."""
    start = time.monotonic()
    kill_session_id(proc.pid, timeout)
    proc.wait(timeout=max(timeout - (time.monotonic() - start), 1.0))


def _start(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``command`` in a session of its own, stdout and stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def _poll(check: Callable[[], Any], alive: Callable[[], str | None], what: str,
          timeout: float, progress: Callable[[], Any] | None = None) -> Any:
    """Call ``check`` until it returns something truthy (HTTP errors count as not yet);
    ``alive`` returns an error message once a process it watches has died."""
    return wait_until(check, timeout, f"{what} ready", alive=alive, progress=progress,
                      ignore=(httpx.HTTPError, ValueError, OSError))


# --- Spark standalone ----------------------------------------------------------------------


def spark_home() -> Path:
    """The Spark distribution inside the pip ``pyspark`` package (it has ``bin/spark-class``)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _loopback_host(index: int) -> str:
    """``127.0.0.(index + 2)`` if it can be bound here (all of 127/8 routes to ``lo`` on
    Linux; macOS only configures 127.0.0.1), else ``127.0.0.1``."""
    host = f"127.0.0.{index + 2}"
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
    except OSError:
        return LOOPBACK
    return host


class SparkCluster:
    """A Spark standalone cluster on loopback: one master and ``workers`` workers, each with
    ``--cores 1 --memory 1g`` (by default), its own work dir and ``SPARK_LOCAL_DIRS``.

    Worker ``i`` binds and advertises ``127.0.0.(i+2)`` (``--host``), so Spark sees one host per
    worker: a speculative copy is never launched on a host where the task already runs, so with
    one shared host there would be no speculation at all; host-level locality and exclusion
    (``spark.excludeOnFailure``) also work per worker. This works on Linux (the whole of 127/8 is
    loopback): the executors come up on those hosts and run PySpark tasks with this interpreter
    (``PYSPARK_PYTHON=sys.executable``). Where such an address cannot be bound (macOS), or with
    ``distinct_hosts=False``, all workers share 127.0.0.1.

    The master gets free ports for its RPC and web UI (its REST submission server, on the fixed
    port 6066 by default, is disabled); workers take random ports (``--webui-port 0``). Spark
    reads ``<root>/conf`` (``SPARK_CONF_DIR``), not the user's configuration. Workers are only
    started once the master is ALIVE: a worker that registers while the master is still
    electing itself gets no answer and retries only after ~10 s.

    Measured here (2 cores, Java 17, pyspark 4.3, machine otherwise idle): master ALIVE ~3 s,
    both workers ALIVE ~8 s after :meth:`start`; then ``spark_session(master_url,
    extra=cluster.spark_conf())`` (``spark.executor.memory=512m``, ``spark.cores.max=2``)
    returns with both executors registered in ~11-13 s (the engine's cluster defaults wait for
    every executor; a local[2] session takes ~6.5 s), and the first PySpark job takes ~3 s more
    (Python daemons start). So ~25 s from nothing to a finished job; about twice that while
    another test run loads the machine. :meth:`stop` takes ~0.2 s.

    Each daemon runs in a session of its own: :meth:`kill_worker` SIGKILLs a worker JVM with its
    executor JVMs and PySpark daemons and workers (a lost worker, as in a node failure);
    :meth:`stop` (and leaving the ``with`` block) does that to every worker and the master. When
    an application ends, the workers delete its directories under ``local_dirs``; its executor
    logs stay under ``work_dirs`` (:meth:`executor_logs`).

    Examples
    --------
    >>> with SparkCluster(tmp_path) as cluster:  # doctest: +SKIP
    ...     spark = spark_session(cluster.master_url, extra=cluster.spark_conf())
    ...     hosts = wait_executors(spark.sparkContext, 2)
    ...     cluster.kill_worker(0)
    """

    def __init__(self, root: Path, workers: int = 2, *, cores: int | Sequence[int] = 1,
                 memory: str = "1g", distinct_hosts: bool = True,
                 python: str = sys.executable) -> None:
        self.root = Path(root)
        # cores per worker: one figure for all, or one per worker (an uneven cluster)
        self.worker_cores = ([cores] * workers if isinstance(cores, int) else list(cores))
        if len(self.worker_cores) != workers:
            raise ValueError(f"cores {cores!r} for {workers} workers")
        self.cores = self.worker_cores[0]
        self.memory = memory
        self.python = python
        self.hosts = [_loopback_host(i) if distinct_hosts else LOOPBACK for i in range(workers)]
        self.port = free_port()
        self.webui_port = free_port()
        self.work_dirs = [self.root / f"worker-{i}" / "work" for i in range(workers)]
        self.local_dirs = [self.root / f"worker-{i}" / "local" for i in range(workers)]
        self.logs: dict[str, Path] = {"master": self.root / "logs" / "master.log"} | {
            f"worker-{i}": self.root / "logs" / f"worker-{i}.log" for i in range(workers)}
        self._master: subprocess.Popen | None = None
        self._workers: list[subprocess.Popen | None] = [None] * workers
        self._killed: set[int] = set()  # workers ended by kill_worker

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:PORT``, the master to give a SparkSession."""
        return f"spark://{LOOPBACK}:{self.port}"

    @property
    def webui_url(self) -> str:
        """The master's web UI (its JSON status is at ``/json/``)."""
        return f"http://{LOOPBACK}:{self.webui_port}"

    def spark_conf(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Driver settings for this cluster (``spark_session(..., extra=...)``): the driver on
        loopback, 512 MiB executors, every core of the cluster; ``extra`` added or overriding."""
        conf = {"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK,
                "spark.executor.memory": "512m",
                "spark.cores.max": str(sum(self.worker_cores))}
        return conf | dict(extra or {})

    def _env(self, host: str, local_dir: Path | None = None) -> dict[str, str]:
        env = dict(os.environ, SPARK_HOME=str(spark_home()), SPARK_CONF_DIR=str(self.root / "conf"),
                   SPARK_LOCAL_IP=host, PYSPARK_PYTHON=self.python)
        for name in ("SPARK_LOCAL_HOSTNAME", "SPARK_PUBLIC_DNS", "SPARK_LOCAL_DIRS"):
            env.pop(name, None)
        if local_dir is not None:
            env["SPARK_LOCAL_DIRS"] = str(local_dir)
        return env

    def _spark_class(self, main: str, *args: str, log: Path, env: dict[str, str]
                     ) -> subprocess.Popen:
        command = [str(spark_home() / "bin" / "spark-class"), f"org.apache.spark.deploy.{main}",
                   *args]
        return _start(command, log, env, self.root)

    def start(self) -> SparkCluster:
        """Start the master, wait until it is ALIVE, then start the workers (not waiting for
        them: :meth:`wait_ready`). Raises with the master's log if it fails to come up."""
        conf = self.root / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "spark-defaults.conf").write_text("spark.master.rest.enabled false\n")
        self._master = self._spark_class(
            "master.Master", "--host", LOOPBACK, "--port", str(self.port),
            "--webui-port", str(self.webui_port), log=self.logs["master"], env=self._env(LOOPBACK))
        try:
            _poll(lambda: self.status().get("status") == "ALIVE", self._dead, "Spark master",
                  timeout=120)
            for i, host in enumerate(self.hosts):
                self.work_dirs[i].mkdir(parents=True, exist_ok=True)
                self.local_dirs[i].mkdir(parents=True, exist_ok=True)
                self._workers[i] = self._spark_class(
                    "worker.Worker", "--host", host, "--webui-port", "0", "--cores",
                    str(self.worker_cores[i]), "--memory", self.memory,
                    "--work-dir", str(self.work_dirs[i]),
                    self.master_url, log=self.logs[f"worker-{i}"],
                    env=self._env(host, self.local_dirs[i]))
        except BaseException:
            self.stop()
            raise
        return self

    def _dead(self) -> str | None:
        """An error message with the log tail of the first daemon that exited, if any."""
        daemons = {"master": self._master} | {
            f"worker-{i}": proc for i, proc in enumerate(self._workers) if i not in self._killed}
        for name, proc in daemons.items():
            if proc is not None and proc.poll() is not None:
                return (f"Spark {name} exited with {proc.returncode}; "
                        f"{self.logs[name]}:\n{log_tail(self.logs[name])}")
        return None

    def status(self) -> dict[str, Any]:
        """The master's JSON status (``workers``, ``aliveworkers``, ``activeapps``, ...)."""
        return httpx.get(f"{self.webui_url}/json/", timeout=5).raise_for_status().json()

    def alive_workers(self) -> list[dict[str, Any]]:
        """The workers the master lists as ALIVE (a killed one turns DEAD when the master
        notices the lost connection)."""
        return [w for w in self.status()["workers"] if w["state"] == "ALIVE"]

    def wait_ready(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Until the master lists every running worker (not killed) as ALIVE; returns them.
        Raises with the log tail of a daemon that exits, or WaitTimeout with every log's tail."""
        expected = sum(proc is not None and i not in self._killed
                       for i, proc in enumerate(self._workers))

        def ready() -> list[dict[str, Any]] | None:
            alive = self.alive_workers()
            return alive if len(alive) >= expected else None

        try:
            return _poll(ready, self._dead, f"{expected} Spark workers", timeout)
        except WaitTimeout as error:
            tails = "\n".join(f"--- {name}:\n{log_tail(path, 1500)}"
                              for name, path in self.logs.items())
            raise WaitTimeout(f"{error}\n{tails}") from None

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` with everything it started (executor JVM, PySpark daemon
        and its Python workers), and wait until they are gone."""
        proc = self._workers[index]
        if proc is not None:
            self._killed.add(index)
            kill_session(proc)

    def pids(self, worker: int | None = None) -> list[int]:
        """Live processes of the cluster (the daemons and everything they started), or of
        worker ``worker`` only."""
        procs = [self._master, *self._workers] if worker is None else [self._workers[worker]]
        return sorted(pid for proc in procs if proc is not None for pid in session_pids(proc.pid))

    def executor_logs(self) -> list[Path]:
        """The executors' ``stderr`` files (``<work dir>/<app id>/<executor id>/stderr``)."""
        return sorted(path for work in self.work_dirs for path in work.glob("*/*/stderr"))

    def stop(self) -> None:
        """SIGKILL the workers (with their executors) and the master; idempotent."""
        for proc in [*self._workers, self._master]:
            if proc is not None:
                kill_session(proc)

    def __enter__(self) -> SparkCluster:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def executor_hosts(sc: Any) -> dict[str, str]:
    """``{executor id: host}`` of the executors active in ``sc`` (the driver left out).

    PySpark's ``StatusTracker`` has no ``getExecutorInfos``, and the JVM's (nor
    ``getExecutorMemoryStatus``) cannot tell the driver's block manager from an executor's, so
    this reads the application's status store (what the UI's executors page shows; updated
    by the listener bus, so a little after the scheduler).
    """
    summaries = sc._jsc.sc().statusStore().executorList(True)
    executors = (summaries.apply(i) for i in range(summaries.size()))
    return {e.id(): e.hostPort().rsplit(":", 1)[0] for e in executors if e.id() != "driver"}


def wait_executors(sc: Any, n: int, timeout: float = 120.0) -> dict[str, str]:
    """Until at least ``n`` executors are active in ``sc``; returns :func:`executor_hosts`."""
    return wait_until(lambda: len(hosts := executor_hosts(sc)) >= n and hosts, timeout,
                      f"{n} executors active", progress=lambda: len(executor_hosts(sc)),
                      interval=0.1)


# --- S3 (moto) -----------------------------------------------------------------------------

MOTO_REQUIREMENT = "moto[server]==5.2.5"
MOTO_VENV = REPO / ".cache" / "moto-venv"


def tool_venv(venv: Path, *requirements: str) -> Path:
    """The Python of a venv of its own at ``venv`` holding ``requirements``, created (or
    brought up to date) on first use, for a tool or a client library that cannot go in the
    project's venv (its pins clash with the lock) or that must be seen as a user installs it.

    ``uv`` (from the project's venv) makes the venv with this interpreter and installs the
    requirements (a second or two from uv's cache); a file lock serialises concurrent test
    runs. ``<venv>/../.gitignore`` keeps git from listing the cache.
    """
    python = venv / "bin" / "python"
    marker = venv / ".requirement"
    wanted = "\n".join(requirements)
    venv.parent.mkdir(parents=True, exist_ok=True)
    ignore = venv.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by tests/helpers/processes.py\n*\n")
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            return python
        uv = Path(sys.executable).with_name("uv")
        if not python.exists():
            subprocess.run([str(uv), "venv", "-q", "-p", sys.executable, str(venv)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python),
                        *requirements], check=True)
        marker.write_text(wanted)
    return python


def moto_server_bin(venv: Path = MOTO_VENV, requirement: str = MOTO_REQUIREMENT) -> Path:
    """``moto_server`` of a venv of its own (:func:`tool_venv`): moto cannot go in the
    project's venv (its botocore needs python-dateutil<3, the lock pins 4.0.0)."""
    return tool_venv(venv, requirement).with_name("moto_server")


class S3Server:
    """moto's S3 in server mode on a free loopback port, as a subprocess (its own venv:
    :func:`moto_server_bin`). Any access key is accepted; :attr:`ACCESS_KEY` is the usual one.

    URIs: ``pyarrow.fs.FileSystem.from_uri`` accepts :meth:`uri` (``s3://bucket/path?
    endpoint_override=127.0.0.1:PORT&scheme=http``, credentials from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``: :meth:`env`), as well as ``endpoint_override=http://HOST:PORT``
    without ``scheme``; the region is found by asking the server (us-east-1). The first S3 call
    of a process takes ~1 s (AWS SDK start-up), later ones a few ms.

    Examples
    --------
    >>> with S3Server(tmp_path) as s3:  # doctest: +SKIP
    ...     s3.create_bucket("lake")
    ...     pq.write_table(table, "lake/t.parquet", filesystem=s3.filesystem())
    """

    ACCESS_KEY = "testing"
    SECRET_KEY = "testing"
    REGION = "us-east-1"

    def __init__(self, root: Path, *, host: str = LOOPBACK) -> None:
        self.root = Path(root)
        self.host = host
        self.port = free_port(host)
        self.log = self.root / "moto.log"
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` (pyarrow's ``endpoint_override``, with ``scheme="http"``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (boto3's ``endpoint_url``)."""
        return f"http://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """AWS variables for a process that uses this server (e.g. Spark executors)."""
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_DEFAULT_REGION": self.REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, path: str) -> str:
        """``s3://path?endpoint_override=HOST:PORT&scheme=http`` for ``FileSystem.from_uri``."""
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http"

    def start(self, timeout: float = 60.0) -> S3Server:
        """Start the server and wait until it answers HTTP (raises with its log if it exits)."""
        self._proc = _start([str(moto_server_bin()), "-H", self.host, "-p", str(self.port)],
                            self.log, dict(os.environ), self.root)

        def dead() -> str | None:
            if self._proc is not None and self._proc.poll() is not None:
                return f"moto_server exited with {self._proc.returncode}:\n{log_tail(self.log)}"
            return None

        try:
            _poll(lambda: httpx.get(f"{self.url}/", timeout=2).status_code == 200, dead,
                  "moto S3 server", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on this server (``create_dir`` of a bucket creates it)."""
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http",
                               access_key=self.ACCESS_KEY, secret_key=self.SECRET_KEY,
                               region=self.REGION, allow_bucket_creation=True)

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``."""
        self.filesystem().create_dir(name)

    def stop(self) -> None:
        """End the server; idempotent."""
        if self._proc is not None:
            kill_session(self._proc)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

