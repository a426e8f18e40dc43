"""The production profile on one machine: ``make prod-up``, ``prod-status``, ``prod-down``.

:func:`up` brings up, on loopback, what ``KMEANS_PROFILE=production`` names (its settings:
:mod:`pipeline.core.settings`), on this machine's PostgreSQL and Redis:

- the PostgreSQL databases the components declare (``<prefix>_mlflow``, ...), created if missing
  on the server ``KMEANS_POSTGRES_URL`` names (default ``postgresql://postgres@127.0.0.1:5432``;
  a password goes there or in PostgreSQL's own ``PGPASSWORD``/``~/.pgpass``, never in the repo);
- an MLflow tracking server with that PostgreSQL backend store, serving the artifacts (clients
  upload and download through it, into ``<home>/prod/mlartifacts``);
- the Feast repo applied with Redis as the online store (``KMEANS_REDIS_CONNECTION_STRING``,
  project ``KMEANS_FEAST_PROJECT``: its name ends every key, so deployments sharing a Redis keep
  apart);
- the inference server (``python -m pipeline.serving``, as ``kmeans-serve``) with both tokens,
  once the registry has a champion: it cannot serve without one, so until then it is reported
  as waiting and the next :func:`up` starts it.

Each process runs in a process group of its own (``start_new_session``), logs to
``<home>/prod/<name>.log``, and its group, leader and start time are kept in
``<home>/prod/<name>.json``; :func:`down` ends each group as a whole
(:func:`pipeline.devtools.airflow_env.stop_group`). :func:`up` skips what runs already, so
it can be run again (after training, to start the server). The KMEANS_* variables a shell needs
to use the stack, the two generated tokens among them, are written to ``<home>/prod/env``
(0600, ``export`` lines; ``. <home>/prod/env``); the tokens are generated once and kept.

The components are a list of :class:`Component` specs (:data:`COMPONENTS`), started in order,
stopped in reverse. A component is a setup step (``prepare``), a process (``launch``), or both;
``launch`` returns once the component answers and gives back its process group
(:class:`Group`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql
from pydantic import ValidationError

from pipeline import registry
from pipeline.core import preflight
from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    atomic_write_bytes,
    atomic_write_json,
    outliving_env,
    private_dir,
)
from pipeline.core.logs import quiet_dependencies
from pipeline.core.settings import (
    DEPLOYMENT_PATTERN,
    PROJECT_ROOT,
    Settings,
    airflow_url,
    load_settings,
)
from pipeline.data import features
from pipeline.devtools import airflow_env
from pipeline.devtools.airflow_env import stop_group

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
#: The last up's ports and prefix, for prod-status and the next prod-up.
CONFIG_FILE = "stack.json"
LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A component could not be brought up or down (the message names it and its log)."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack listens and what its databases are called."""

    mlflow_port: int = 5050
    serving_port: int = 8090
    #: For the Airflow component's API server (Airflow's usual port).
    airflow_port: int = 8080
    #: Databases are ``<db_prefix>_<component's name for it>``: kmeans_mlflow, kmeans_airflow.
    db_prefix: str = "kmeans"
    #: MLflow's uvicorn workers: one serves this machine's clients (requests run in threads).
    mlflow_workers: int = 1
    #: Longest wait for a component to answer once started.
    start_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not re.fullmatch(DEPLOYMENT_PATTERN, self.db_prefix):
            raise ValueError(f"database prefix {self.db_prefix!r}: lower-case letters, digits "
                             f"and _, starting with a letter (at most 40)")

    @staticmethod
    def from_settings(settings: Settings) -> tuple[dict, dict]:
        """What the deployment's settings give the ports and the prefix: (every such value,
        the part that was set rather than derived). KMEANS_DEPLOYMENT names the databases,
        KMEANS_PORT_BASE moves every port (Airflow +0, MLflow +3, the server +4), Airflow's
        port follows KMEANS_AIRFLOW_PORT and AIRFLOW__API__PORT too."""
        values = {"db_prefix": settings.deployment,
                  "airflow_port": settings.airflow_port,
                  "mlflow_port": settings.deployment_port("prod_mlflow"),
                  "serving_port": settings.deployment_port("prod_serving")}
        explicit = set()
        if settings.explicit("deployment"):
            explicit.add("db_prefix")
        if settings.explicit("port_base"):
            explicit |= {"airflow_port", "mlflow_port", "serving_port"}
        if settings.explicit("airflow_port"):
            explicit.add("airflow_port")
        return values, {k: v for k, v in values.items() if k in explicit}


@dataclass
class Stack:
    """One stack: the settings it was asked for (home, PostgreSQL, Redis, Feast project, model)
    and where it listens."""

    base: Settings
    config: StackConfig = field(default_factory=StackConfig)
    _tokens: dict[str, str] | None = field(default=None, repr=False)

    @property
    def dir(self) -> Path:
        return self.base.home / "prod"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    @property
    def artifacts_dir(self) -> Path:
        return self.dir / "mlartifacts"

    @property
    def postgres_url(self) -> str:
        """The PostgreSQL server (may hold a password: never printed, see :meth:`shown`)."""
        url = self.base.postgres_url
        return url.get_secret_value() if url is not None else DEFAULT_POSTGRES_URL

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.config.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://{LOOPBACK}:{self.config.serving_port}"

    def database(self, name: str) -> str:
        """The name of a component's database: ``<prefix>_<name>``."""
        return f"{self.config.db_prefix}_{name}"

    def database_url(self, name: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of a component's database on the stack's server
        (``postgresql+psycopg://user@host:port/<prefix>_<name>``)."""
        parts = urllib.parse.urlsplit(self.postgres_url)
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return urllib.parse.urlunsplit(parts._replace(scheme=scheme,
                                                      path=f"/{self.database(name)}"))

    @staticmethod
    def shown(url: str) -> str:
        """``url`` without its password, to print."""
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        return urllib.parse.urlunsplit(parts._replace(
            netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))

    def tokens(self) -> dict[str, str]:
        """The serving and admin tokens: those of the environment's settings when set, else
        the ones the env file keeps, else new ones (generated once, kept in the env file)."""
        if self._tokens is None:
            kept = read_env_file(self.env_file)
            tokens = {}
            for key, setting in (("KMEANS_SERVING_TOKEN", self.base.serving.serving_token),
                                 ("KMEANS_ADMIN_TOKEN", self.base.serving.admin_token)):
                tokens[key] = (setting.get_secret_value() if setting is not None
                               else kept.get(key) or secrets.token_urlsafe(32))
            self._tokens = tokens
        return self._tokens

    def env(self) -> dict[str, str]:
        """The KMEANS_* variables of the production profile on this stack (the env file's)."""
        return {
            "KMEANS_PROFILE": "production",
            "KMEANS_HOME": str(self.base.home),
            "KMEANS_MLFLOW_TRACKING_URI": self.mlflow_url,
            "KMEANS_REDIS_CONNECTION_STRING": self.base.redis_connection_string,
            "KMEANS_FEAST_PROJECT": self.base.feast_project,
            # the deployment's names and its Airflow's port (the CLI tells Airflow of its
            # promotions and rollbacks there: pipeline.orchestration.airflow_api)
            "KMEANS_DEPLOYMENT": self.base.deployment,
            "KMEANS_AIRFLOW_PORT": str(self.config.airflow_port),
            "KMEANS_POSTGRES_URL": self.postgres_url,
            **self.tokens(),
            "KMEANS_SERVING_HOST": LOOPBACK,
            "KMEANS_SERVING_PORT": str(self.config.serving_port),
            "KMEANS_SERVING_URL": self.serving_url,
            # `kmeans rollout` and the DAG's rollout task drive this stack's server.
            "KMEANS_ROLLOUT_BACKEND": "local",
            # Spark in the driver's process, one worker thread per core of this machine.
            "KMEANS_SPARK_MASTER": f"local[{os.cpu_count() or 2}]",
        }

    def process_env(self) -> dict[str, str]:
        """The environment of the stack's processes: this one's, with :meth:`env` on top."""
        return {**os.environ, **self.env()}

    def settings(self) -> Settings:
        """The production settings :meth:`env` gives (for the setup steps run in this
        process)."""
        return load_settings(**{k.removeprefix("KMEANS_").lower(): v
                                for k, v in self.env().items()})

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"


class Group(Protocol):
    """What a component's ``launch`` returns: the process group it started, and its log(s)."""

    @property
    def pgid(self) -> int: ...

    @property
    def logs(self) -> Path: ...


@dataclass(frozen=True)
class Process:
    pgid: int
    logs: Path


@dataclass(frozen=True)
class Component:
    """One piece of the stack.

    - ``databases``: names of the PostgreSQL databases it needs (``stack.database_url(name)``
      is the URL of each), created before any component starts;
    - ``prepare``: a setup step run at every :func:`up` before it starts (idempotent);
    - ``launch``: starts its process group and returns it (:class:`Group`) once it answers, or
      raises (having stopped what it started); None for a setup step alone;
    - ``blocked``: why it cannot start yet (None: it can), checked before ``launch``;
    - ``address``: where it answers, for :func:`status` and to refuse a running one that
      answers elsewhere; ``healthy``: whether it answers now, for :func:`status`.
    """

    name: str
    launch: Callable[[Stack], Group] | None = None
    prepare: Callable[[Stack], object] | None = None
    databases: tuple[str, ...] = ()
    blocked: Callable[[Stack], str | None] | None = None
    address: Callable[[Stack], str] | None = None
    healthy: Callable[[Stack], bool] | None = None


# ---- processes ----------------------------------------------------------------------------------

def spawn(stack: Stack, name: str, argv: Sequence[str], *, env: dict[str, str],
          ready: Callable[[], bool], port: int | None = None,
          timeout: float | None = None) -> Process:
    """Start ``argv`` in a process group of its own, logging to ``<prod>/<name>.log``, and
    return once ``ready()`` holds; if the process ends or ``timeout`` passes first, stop its
    group and raise :class:`StackError` naming the log. ``port``: the one it will listen on,
    refused when another program holds it already."""
    if port is not None and _port_taken(port):
        raise StackError(f"{name}: port {port} on {LOOPBACK} is in use by another program; "
                         f"free it or choose another port (make prod-up PROD_..._PORT=...)")
    log = stack.log(name)
    # Owner-only: a server's log may show what its clients sent.
    with open(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE), "ab") as out:
        out.write(f"==== {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} {name}: "
                  f"{shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(list(argv), env=outliving_env(env), stdout=out,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=PROJECT_ROOT)
    timeout = stack.config.start_timeout if timeout is None else timeout
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode} before it "
                                 f"answered; see {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not answer in {timeout:.0f} s; see {log}:\n"
                                 f"{_tail(log)}")
            time.sleep(0.25)
    except BaseException:
        stop_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        raise
    # Reap the leader when it ends, while this process lives (a test's): a zombie leader would
    # keep its group looking alive. After this process, init does.
    threading.Thread(target=proc.wait, name=f"reap-{name}", daemon=True).start()
    return Process(pgid=proc.pid, logs=log)


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((LOOPBACK, port)) == 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _answers(url: str) -> bool:
    return preflight.http_problem(url, timeout=2.0) is None


# ---- the components -----------------------------------------------------------------------------

def _launch_mlflow(stack: Stack) -> Group:
    private_dir(stack.artifacts_dir)
    argv = [str(Path(sys.executable).parent / "mlflow"), "server",
            "--artifacts-destination", str(stack.artifacts_dir), "--serve-artifacts",
            "--host", LOOPBACK, "--port", str(stack.config.mlflow_port),
            "--workers", str(stack.config.mlflow_workers)]
    env = {**os.environ,
           # In the environment, not on the command line: `ps` shows command lines to all.
           "MLFLOW_BACKEND_STORE_URI": stack.database_url("mlflow"),
           # The job runner runs MLflow's GenAI jobs (six more processes): not used here.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return spawn(stack, "mlflow", argv, env=env, port=stack.config.mlflow_port,
                 ready=lambda: _answers(f"{stack.mlflow_url}/health"))


def _apply_feast(stack: Stack) -> list[str]:
    return features.apply_repo(stack.settings())


def _redis_answers(stack: Stack) -> bool:
    host, port, options = preflight.redis_address(stack.base.redis_connection_string)
    return preflight.redis_problem(host, port, options, 2.0) is None


def _no_champion(stack: Stack) -> str | None:
    settings = stack.settings()
    if registry.alias_version(settings, "champion") is not None:
        return None
    return (f"model {settings.model_name!r} has no champion yet: train one (the training DAG, "
            f"or the kmeans commands after `. {stack.env_file}`), then `make prod-up` again")


def _launch_serving(stack: Stack) -> Group:
    argv = [sys.executable, "-m", "pipeline.serving", "--host", LOOPBACK,
            "--port", str(stack.config.serving_port)]
    return spawn(stack, "serving", argv, env=stack.process_env(),
                 port=stack.config.serving_port,
                 ready=lambda: _answers(f"{stack.serving_url}/v2/health/ready"))


def _redis_address(stack: Stack) -> str:
    host, port, _ = preflight.redis_address(stack.base.redis_connection_string)
    return f"redis {host}:{port}, Feast project {stack.base.feast_project}"


def _airflow_url(stack: Stack) -> str:
    return airflow_url(stack.config.airflow_port)


def _launch_airflow(stack: Stack) -> Group:
    """Airflow's scheduler, API server, dag-processor and triggerer (LocalExecutor), with its
    metadata in the stack's PostgreSQL; its tasks get the production profile's environment."""
    if _port_taken(stack.config.airflow_port):
        raise StackError(f"airflow: port {stack.config.airflow_port} on {LOOPBACK} is in use by "
                         f"another program; free it or choose another port "
                         f"(make prod-up PROD_AIRFLOW_PORT=...)")
    try:
        return airflow_env.start(stack.dir / "airflow", port=stack.config.airflow_port,
                                 sql_alchemy_conn=stack.database_url("airflow"),
                                 base_env=stack.process_env(),
                                 ready_timeout=stack.config.start_timeout)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        raise StackError(f"airflow did not start: {err}; see {stack.dir / 'airflow'}") from err


#: The stack, in start order (stopped in reverse). Airflow comes last: its tasks need MLflow
#: and Feast (and the rollout drives the server).
COMPONENTS: tuple[Component, ...] = (
    Component(name="mlflow", databases=("mlflow",), launch=_launch_mlflow,
              address=lambda st: st.mlflow_url,
              healthy=lambda st: _answers(f"{st.mlflow_url}/health")),
    Component(name="feast", prepare=_apply_feast, address=_redis_address,
              healthy=_redis_answers),
    Component(name="serving", launch=_launch_serving, blocked=_no_champion,
              address=lambda st: st.serving_url,
              healthy=lambda st: _answers(f"{st.serving_url}/v2/health/ready")),
    Component(name="airflow", databases=("airflow",), launch=_launch_airflow,
              address=_airflow_url,
              healthy=lambda st: _answers(f"{_airflow_url(st)}/api/v2/monitor/health")),
)


# ---- state --------------------------------------------------------------------------------------

def _state_file(stack: Stack, name: str) -> Path:
    return stack.dir / f"{name}.json"


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pgid"), int) else None


def _leader_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def alive(state: dict) -> bool:
    """Whether the process group of ``state`` still has a process, and is the one recorded
    (a leader with another start time is a new process that reused the number)."""
    pgid = state["pgid"]
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    started = _leader_start(pgid)
    return started is None or state.get("leader_start") in (None, started)


# ---- up, status, down ---------------------------------------------------------------------------

def up(stack: Stack, components: Sequence[Component] = COMPONENTS,
       say: Callable[[str], None] = print) -> list[dict]:
    """Bring up what is not running; returns one report per component (``state``: running,
    started, ready or waiting, with the seconds it took)."""
    private_dir(stack.dir)
    _require_servers(stack)
    atomic_write_json(stack.dir / CONFIG_FILE, asdict(stack.config), mode=PRIVATE_FILE_MODE)
    for component in components:
        for name in component.databases:
            if create_database(stack, name):
                say(f"created database {stack.database(name)} on "
                    f"{stack.shown(stack.postgres_url)}")
    write_env_file(stack)
    reports = []
    for component in components:
        report = _up_one(stack, component)
        reports.append(report)
        say(_line(report))
    return reports


def _up_one(stack: Stack, component: Component) -> dict:
    name = component.name
    address = component.address(stack) if component.address else None
    report: dict = {"name": name, "address": address}
    state = _read_state(_state_file(stack, name))
    if state is not None and alive(state):
        if address is not None and state.get("address") not in (None, address):
            raise StackError(f"{name} runs at {state['address']}, not {address}: "
                             f"`make prod-down` first to move it")
        return {**report, "state": "running", "pgid": state["pgid"], "log": state["log"]}
    t0 = time.monotonic()
    if component.prepare is not None:
        component.prepare(stack)
    if component.launch is None:
        seconds = round(time.monotonic() - t0, 1)
        atomic_write_json(_state_file(stack, name), {  # no pgid: nothing for down to stop
            "name": name, "done_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": seconds, "address": address}, mode=PRIVATE_FILE_MODE)
        return {**report, "state": "ready", "seconds": seconds}
    reason = component.blocked(stack) if component.blocked else None
    if reason:
        return {**report, "state": "waiting", "reason": reason}
    t0 = time.monotonic()
    group = component.launch(stack)
    seconds = round(time.monotonic() - t0, 1)
    atomic_write_json(_state_file(stack, name), {
        "name": name, "pgid": group.pgid, "leader_start": _leader_start(group.pgid),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds_to_ready": seconds, "address": address, "log": str(group.logs)},
        mode=PRIVATE_FILE_MODE)
    return {**report, "state": "started", "pgid": group.pgid, "seconds": seconds,
            "log": str(group.logs)}


def _line(report: dict) -> str:
    where = f" at {report['address']}" if report.get("address") else ""
    match report["state"]:
        case "started":
            return (f"{report['name']}: started{where} in {report['seconds']} s (process group "
                    f"{report['pgid']}, log {report['log']})")
        case "running":
            return f"{report['name']}: already running{where} (process group {report['pgid']})"
        case "ready":
            return f"{report['name']}: ready{where} ({report['seconds']} s)"
        case "waiting":
            return f"{report['name']}: not started: {report['reason']}"
    return f"{report['name']}: {report['state']}{where}"


def _require_servers(stack: Stack) -> None:
    """The machine's PostgreSQL and Redis answer, or a StackError naming which does not."""
    problems = []
    host, port = preflight.postgres_address(stack.postgres_url)
    if problem := preflight.postgres_problem(host, port, preflight.TIMEOUT_SECONDS):
        problems.append(f"PostgreSQL at {host}:{port} (KMEANS_POSTGRES_URL) {problem}")
    host, port, options = preflight.redis_address(stack.base.redis_connection_string)
    if problem := preflight.redis_problem(host, port, options, preflight.TIMEOUT_SECONDS):
        problems.append(f"Redis at {host}:{port} (KMEANS_REDIS_CONNECTION_STRING) {problem}")
    if problems:
        raise StackError("; ".join(problems))


def status(stack: Stack, components: Sequence[Component] = COMPONENTS) -> dict:
    """Each component's state (running with its process group, stopped, or set up), address,
    health and log; the env file."""
    rows = []
    for component in components:
        row: dict = {"name": component.name,
                     "address": component.address(stack) if component.address else None}
        if component.launch is not None:
            state = _read_state(_state_file(stack, component.name))
            if state is not None and alive(state):
                row.update(state="running", pgid=state["pgid"], address=state.get("address"),
                           since=state.get("started_at"), log=state.get("log"))
            else:
                row.update(state="stopped", log=str(stack.log(component.name)))
        elif _state_file(stack, component.name).exists():
            row["state"] = "set up"
        else:
            row["state"] = "not set up"
        if component.healthy is not None and row["state"] in ("running", "set up"):
            row["healthy"] = component.healthy(stack)
        rows.append(row)
    return {"components": rows, "env_file": str(stack.env_file),
            "env_file_exists": stack.env_file.exists()}


def down(stack: Stack) -> list[dict]:
    """Stop every process group the stack recorded, the last started first; the env file (its
    tokens), the logs and the databases are kept."""
    states = [(path, s) for path in stack.dir.glob("*.json") if (s := _read_state(path))]
    states.sort(key=lambda ps: ps[1].get("started_at") or "", reverse=True)
    done = []
    for path, state in states:
        was_alive = alive(state)
        t0 = time.monotonic()
        how = stop_group(state["pgid"]) if was_alive else None
        path.unlink(missing_ok=True)
        done.append({"name": state.get("name", path.stem), "pgid": state["pgid"],
                     "state": "stopped" if was_alive else "was not running", "how": how,
                     "seconds": round(time.monotonic() - t0, 1)})
    return done


def purge(stack: Stack, components: Sequence[Component] = COMPONENTS) -> dict:
    """After :func:`down`: drop the components' databases and remove the Feast project's
    registry and online-store keys (its Redis keys). Refused while a component runs."""
    running = [s["name"] for p in stack.dir.glob("*.json") if (s := _read_state(p)) and alive(s)]
    if running:
        raise StackError(f"{running} still running: `make prod-down` first")
    dropped = [stack.database(n) for c in components for n in c.databases
               if drop_database(stack, n)]
    if stack.env_file.exists():  # the settings hold the tokens only once the env file exists
        features.feature_store(stack.settings()).teardown()
    for component in components:
        if component.launch is None:
            _state_file(stack, component.name).unlink(missing_ok=True)
    return {"dropped_databases": dropped, "feast_project": stack.base.feast_project}


def load_config(home: Path) -> dict:
    """The configuration of the last :func:`up` under ``home`` ({} if none)."""
    try:
        found = json.loads((home / "prod" / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    known = {f.name for f in fields(StackConfig)}
    return {k: v for k, v in found.items() if k in known} if isinstance(found, dict) else {}


# ---- PostgreSQL ---------------------------------------------------------------------------------

def _admin_connection(stack: Stack) -> psycopg.Connection:
    """A connection to the server's maintenance database (the URL's own, else ``postgres``)."""
    parts = urllib.parse.urlsplit(stack.postgres_url)
    dbname = parts.path.lstrip("/") or "postgres"
    url = urllib.parse.urlunsplit(parts._replace(scheme="postgresql", path=""))
    try:
        return psycopg.connect(url, dbname=dbname, autocommit=True, connect_timeout=10)
    except psycopg.Error as err:
        raise StackError(f"PostgreSQL at {stack.shown(url)}: {str(err).strip()}") from err


def create_database(stack: Stack, name: str) -> bool:
    """Create the component database ``name`` unless it exists; True if it was created."""
    db = stack.database(name)
    with _admin_connection(stack) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    return True


def drop_database(stack: Stack, name: str) -> bool:
    """Drop the component database ``name`` (its sessions ended); True if it existed."""
    db = stack.database(name)
    with _admin_connection(stack) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            return False
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
    return True


# ---- the env file -------------------------------------------------------------------------------

def write_env_file(stack: Stack) -> Path:
    """``<prod>/env``, owner-only: ``export KMEANS_...=...`` lines a shell sources."""
    lines = ["# The production profile on this machine (make prod-up); `. <this file>` in a "
             "shell.", *(f"export {k}={shlex.quote(v)}" for k, v in stack.env().items())]
    return atomic_write_bytes(stack.env_file, ("\n".join(lines) + "\n").encode(),
                              mode=PRIVATE_FILE_MODE)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file :func:`write_env_file` wrote ({} if there is none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            out[key] = value
    return out


# ---- `make prod-up`, `make prod-status`, `make prod-down` ---------------------------------------

def _parser() -> argparse.ArgumentParser:
    defaults = StackConfig()
    p = argparse.ArgumentParser(prog="python -m pipeline.devtools.stack",
                                description="The production profile on this machine.")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="Start what is not running (make prod-up); ports and "
                                      "prefix default to the settings' when set "
                                      "(KMEANS_DEPLOYMENT, KMEANS_PORT_BASE, ...), else to the "
                                      "last up's, else these.")
    start.add_argument("--mlflow-port", type=int, help=f"default {defaults.mlflow_port}")
    start.add_argument("--serving-port", type=int, help=f"default {defaults.serving_port}")
    start.add_argument("--airflow-port", type=int, help=f"default {defaults.airflow_port}")
    start.add_argument("--db-prefix",
                       help=f"databases <prefix>_mlflow, <prefix>_airflow (default "
                            f"KMEANS_DEPLOYMENT, {defaults.db_prefix})")
    sub.add_parser("status", help="What runs, where, its log; the env file (make prod-status).")
    sub.add_parser("down", help="Stop every component (make prod-down).")
    return p


def stack_config(settings: Settings, asked: dict | None = None) -> StackConfig:
    """The stack's ports and prefix: those asked for (the command line: make prod-up's PROD_*),
    else the settings' where set (KMEANS_DEPLOYMENT, KMEANS_PORT_BASE, KMEANS_AIRFLOW_PORT,
    AIRFLOW__API__PORT), else the last up's (``<home>/prod/stack.json``), else the settings'
    defaults."""
    derived, explicit = StackConfig.from_settings(settings)
    asked = {k: v for k, v in (asked or {}).items() if k != "command" and v is not None}
    return StackConfig(**{**derived, **load_config(settings.home), **explicit, **asked})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_dependencies()
    try:
        base = load_settings()
        stack = Stack(base, stack_config(base, vars(args)))
        if args.command == "up":
            up(stack)
            print(f"env file: {stack.env_file}  (`. {stack.env_file}` in a shell)")
        elif args.command == "status":
            _print_status(status(stack))
        else:
            stopped = down(stack)
            for row in stopped:
                how = f", {row['how']} in {row['seconds']} s" if row["how"] else ""
                print(f"{row['name']}: {row['state']} (process group {row['pgid']}{how})")
            if stopped:
                print(f"kept: {stack.env_file}, the logs in {stack.dir}, the databases")
            else:
                print(f"nothing of the stack under {stack.dir} was running")
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                             for e in err.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except (StackError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _print_status(found: dict) -> None:
    for row in found["components"]:
        health = {True: ", answers", False: ", DOES NOT ANSWER"}.get(row.get("healthy"), "")
        where = f" at {row['address']}" if row.get("address") else ""
        group = f" (process group {row['pgid']}, since {row['since']})" if "pgid" in row else ""
        log = f"; log {row['log']}" if row.get("log") else ""
        print(f"{row['name']}: {row['state']}{where}{health}{group}{log}")
    note = "" if found["env_file_exists"] else " (not written yet: make prod-up)"
    print(f"env file: {found['env_file']}{note}  (`. {found['env_file']}` in a shell)")


if __name__ == "__main__":
    sys.exit(main())
