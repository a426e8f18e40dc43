"""Airflow on the embedded default: SQLite metadata under KMEANS_HOME, the project's DAGs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.io import PRIVATE_FILE_MODE, atomic_write_json, outliving_env
from pipeline.core.settings import (
    LOOPBACK,
    PROJECT_ROOT,
    Settings,
    airflow_reports_url,
    airflow_url,
    load_settings,
)

DAGS_FOLDER = PROJECT_ROOT / "dags"


def prepare(settings: Settings, *, quiet: bool = True, database: str = "airflow.db") -> Path:
    """Set Airflow's environment (before airflow is imported) and migrate its metadata DB.

    ``database`` is the SQLite file under AIRFLOW_HOME (unless AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
    names another): the demo's ``dag.test()`` runs keep their state in a file of their own, so
    the scheduler's history (``make airflow-ui``, airflow.db) holds only its own runs."""
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(settings.home / "airflow")))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    db = home / database
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{db}")
    if quiet:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    home.mkdir(parents=True, exist_ok=True)
    marker = home / f".migrated-{database}"
    if not db.exists() or not marker.exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       env=os.environ.copy(), stdout=subprocess.DEVNULL if quiet else None)
        marker.touch()
    return home


def load_dag(dag_id: str):
    """Parse the project's DAG folder and return one DAG; import errors are raised, not hidden."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise LookupError(f"no DAG {dag_id!r} in {DAGS_FOLDER}; found {sorted(bag.dag_ids)}")
    return dag


#: The LocalExecutor with the pipeline imported in its workers (pipeline/orchestration/executor.py).
PRELOADING_EXECUTOR = "pipeline.orchestration.executor.PreloadingLocalExecutor"


# ---- `make airflow-ui` / `make airflow-stop` ---------------------------------------------------

def _pgid_file() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", PROJECT_ROOT / ".kmeans" / "airflow")) / \
        "standalone.pgid"


def serve_ui(parallelism: int = 4, *, say=print) -> int:
    """``make airflow-ui``: Airflow's scheduler, API server, dag-processor and triggerer on the
    SQLite metadata of AIRFLOW_HOME (:func:`start`, as ``make prod-up`` starts them on
    PostgreSQL), the API server on loopback only, at the settings' ``airflow_port``
    (KMEANS_AIRFLOW_PORT, else AIRFLOW__API__PORT, else from KMEANS_PORT_BASE, else 8080).

    "Airflow is ready" is said once the UI's page and the reports page answer and the DAGs are
    parsed; where the admin password is kept is said at every start (the password itself only
    at the first, when it is generated). Runs until Ctrl-C, SIGTERM or :func:`stop` (from
    another shell), which end the components' process group as a whole (the scheduler can
    ignore SIGTERM for minutes). Returns the exit code."""
    settings = load_settings()
    home = Path(os.environ.get("AIRFLOW_HOME") or settings.home / "airflow")
    conn = (os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
            or f"sqlite:///{home / 'airflow.db'}")
    passwords = home / "passwords.json"
    first_start = not passwords.exists()
    say(f"starting Airflow at {airflow_url(settings.airflow_port)} (logs: "
        f"{home / 'components'}) ...")
    # Ctrl-C (SIGINT) and a polite kill (SIGTERM) both end the whole group.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        running = start(home, sql_alchemy_conn=conn, port=settings.airflow_port,
                        parallelism=parallelism)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as err:
        say(f"Airflow did not start: {err}")
        return 1
    _pgid_file().parent.mkdir(parents=True, exist_ok=True)
    _pgid_file().write_text(str(running.pgid))
    try:
        say(f"Airflow is ready: {running.url} (listening on {LOOPBACK} only)")
        say(f"reports: {running.url}/plugin/kmeans-reports (K-means reports in the navigation)")
        say(f"log in as {running.username}; the password is kept in {passwords}")
        if first_start:
            say(f"the password generated at this first start: {running.password}")
        say("Ctrl-C or `make airflow-stop` (another shell) stops it")
        while _group_alive(running.pgid):
            time.sleep(1.0)
        say(f"Airflow's components exited; see {running.logs}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(running.pgid)
        _pgid_file().unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop() -> str:
    """Stop the Airflow that :func:`serve_ui` started (from another shell)."""
    try:
        pgid = int(_pgid_file().read_text())
    except (OSError, ValueError):
        return "no airflow-ui running"
    stop_group(pgid)
    _pgid_file().unlink(missing_ok=True)
    return f"airflow-ui stopped (process group {pgid})"


def stop_group(pgid: int, grace_seconds: float = 10.0, kill_seconds: float = 10.0) -> str:
    """SIGTERM to the whole process group, SIGKILL to what is left after the grace period; returns
    once the group is gone (or ``kill_seconds`` after the SIGKILL): "terminated", "killed", or
    "survived" (a process in uninterruptible sleep, or a zombie nobody reaps)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return "terminated"
    if _wait_gone(pgid, grace_seconds):
        return "terminated"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return "killed" if _wait_gone(pgid, kill_seconds) else "survived"


def _wait_gone(pgid: int, seconds: float) -> bool:
    """Whether the process group ``pgid`` has no process left within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


# ---- the real components: scheduler, API server, dag-processor, triggerer -------------------

# The components of a LocalExecutor deployment; the triggerer runs the drift review's wait.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class Airflow:
    """A running Airflow (its components in one process group), as :func:`start` returns it."""

    home: Path
    url: str
    username: str
    password: str = field(repr=False)
    pgid: int
    logs: Path

    def token(self, timeout: float = 10.0) -> str:
        """A JWT for the REST API (``Authorization: Bearer ...``), from the simple auth
        manager's ``/auth/token``."""
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return str(json.load(reply)["access_token"])

    def stop(self, grace_seconds: float = 10.0) -> None:
        stop_group(self.pgid, grace_seconds)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def component_env(home: Path, *, sql_alchemy_conn: str, port: int, parallelism: int = 2,
                  base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every component (and every task process) of one deployment shares.

    The JWT and API secrets are generated once per AIRFLOW_HOME and kept in a private file
    there: components that disagree on them reject each other's tokens.

    Every Airflow URL here comes from ``port`` through :func:`airflow_url`: the API server's
    base URL, the tasks' execution API and the review links (KMEANS_REPORTS_URL, unless the
    base environment sets it: a proxy in front, say). The API server listens on loopback only.
    """
    secrets_file = home / "secrets.json"
    if secrets_file.exists():
        keys = json.loads(secrets_file.read_text())
    else:
        keys = {"jwt": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32)}
        atomic_write_json(secrets_file, keys, mode=PRIVATE_FILE_MODE)
    bin_dir = Path(sys.executable).parent
    env = outliving_env(base)
    url = airflow_url(port)
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The LocalExecutor whose workers have the pipeline imported (executor.py): each task
        # process forks with it, instead of importing it again for 5-18 s.
        "AIRFLOW__CORE__EXECUTOR": PRELOADING_EXECUTOR,
        # Sized for a small machine: one task process per core, not 32.
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(port),
        # the tasks' settings (their airflow_port) name the same server
        "KMEANS_AIRFLOW_PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": keys["api"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The scheduler's and triggerer's log servers (8793 and 8794 by default) on free ports:
        # two deployments on one machine (make prod-up beside make test) must not collide.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        # The drift review links its report where the plugin serves it (airflow_plugin.py).
        "KMEANS_REPORTS_URL": env.get("KMEANS_REPORTS_URL") or airflow_reports_url(port),
    })
    if sql_alchemy_conn.startswith("postgresql+psycopg://"):
        # Airflow derives its async engine's URL as asyncpg's; psycopg 3 is async itself.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = sql_alchemy_conn.replace(
            "postgresql+psycopg://", "postgresql+psycopg_async://", 1)
    else:  # SQLite: Airflow derives aiosqlite's URL itself
        env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", None)
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    return env


def start(home: Path, *, sql_alchemy_conn: str, port: int = 8080, parallelism: int = 2,
          base_env: dict[str, str] | None = None, ready_timeout: float = 180.0) -> Airflow:
    """Migrate the metadata DB, then start the scheduler, API server, dag-processor and
    triggerer (LocalExecutor) as one process group, logging to ``<home>/components/``; return
    once the UI's page and the reports page answer and the DAGs are parsed (:func:`_wait_ready`:
    ``ready_timeout`` counts seconds in which the components' logs did not grow).
    :meth:`Airflow.stop` ends them all.

    The admin password is generated into a private file (``<home>/passwords.json``, the simple
    auth manager's), never printed.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = component_env(home, sql_alchemy_conn=sql_alchemy_conn, port=port,
                        parallelism=parallelism, base=base_env)
    passwords = home / "passwords.json"
    if not passwords.exists():
        atomic_write_json(passwords, {"admin": secrets.token_urlsafe(16)},
                          mode=PRIVATE_FILE_MODE)
    logs = home / "components"
    logs.mkdir(exist_ok=True)
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    with open(logs / "db-migrate.log", "ab") as out:
        subprocess.run([airflow_bin, "db", "migrate"], env=env, check=True, stdout=out,
                       stderr=subprocess.STDOUT, timeout=600)
    leader = 0  # the first component leads a new process group; the others join it
    for name in COMPONENTS:
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([airflow_bin, name], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    process_group=leader)
        leader = leader or proc.pid
        (logs / f"{name}.pid").write_text(str(proc.pid))
        # Reap each component when it ends, while this process lives (a test's): a zombie
        # leader would keep the group looking alive. After this process, init does.
        threading.Thread(target=proc.wait, name=f"reap-airflow-{name}", daemon=True).start()
    (home / "components.pgid").write_text(str(leader))
    running = Airflow(home=home, url=airflow_url(port), username="admin",
                      password=json.loads(passwords.read_text())["admin"], pgid=leader,
                      logs=logs)
    try:
        _wait_ready(running, ready_timeout)
    except BaseException:
        running.stop()
        raise
    return running


#: What the UI's page (``GET /``) holds: Airflow's single-page app.
UI_PAGE_MARKERS = ("<title>Airflow</title>", 'id="root"')


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""


def readiness(airflow: Airflow) -> str | None:
    """What is not ready yet (None: all is): the UI's page (GET / answers 200 with the UI's
    html), the reports page the plugin serves, and the project's DAGs parsed."""
    status, page = _get(f"{airflow.url}/")
    if status != 200 or not all(marker in page for marker in UI_PAGE_MARKERS):
        return f"the UI's page answers {status}"
    auth = {"Authorization": f"Bearer {airflow.token()}"}  # the reports are for users only
    status, _ = _get(f"{airflow.url}/kmeans/reports/", auth)
    if status != 200:
        return f"the reports page answers {status}"
    status, listed = _get(f"{airflow.url}/api/v2/dags?limit=100", auth)
    if status != 200:
        return f"the DAG list answers {status}"
    found = {d["dag_id"] for d in json.loads(listed)["dags"]}
    # A file defines the DAG named like it, or several named from it (kmeans_ingest.py:
    # kmeans_ingest_lake, ...).
    if not all(any(d == p.stem or d.startswith(f"{p.stem}_") for d in found)
               for p in DAGS_FOLDER.glob("*.py")):
        return f"DAGs parsed so far: {sorted(found)}"
    return None


def _logs_size(logs: Path) -> int:
    return sum(f.stat().st_size for f in logs.glob("*.log") if f.is_file())


def _wait_ready(airflow: Airflow, timeout: float) -> None:
    """Until :func:`readiness` holds, while the components live (their exit fails the wait at
    once) and make progress: ``timeout`` counts seconds in which their logs did not grow, so a
    loaded machine only makes the wait longer."""
    last, size = "no answer yet", -1
    progressed = time.monotonic()
    while True:
        if not _group_alive(airflow.pgid):
            raise RuntimeError(f"Airflow's components exited; see {airflow.logs}")
        try:
            problem = readiness(airflow)
            if problem is None:
                return
            last = problem
        except (OSError, urllib.error.URLError, KeyError, ValueError) as err:
            last = str(err) or type(err).__name__
        grown = _logs_size(airflow.logs)
        if grown != size:
            size, progressed = grown, time.monotonic()
        elif time.monotonic() - progressed > timeout:
            raise TimeoutError(f"Airflow not ready: its logs did not grow for {timeout:.0f} s "
                               f"({last}); see {airflow.logs}")
        time.sleep(1.0)


if __name__ == "__main__":  # the Makefile's airflow-ui and airflow-stop
    if sys.argv[1:] == ["stop"]:
        print(stop())
    else:
        raise SystemExit(serve_ui(int(os.environ.get("AIRFLOW_PARALLELISM", "4"))))
