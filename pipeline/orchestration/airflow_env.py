"""Airflow on the embedded default: SQLite metadata under KMEANS_HOME, the project's DAGs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.core.settings import PROJECT_ROOT, Settings

DAGS_FOLDER = PROJECT_ROOT / "dags"


def prepare(settings: Settings, *, quiet: bool = True) -> Path:
    """Set Airflow's environment (before airflow is imported) and migrate its metadata DB."""
    home = Path(os.environ.setdefault("AIRFLOW_HOME", str(settings.home / "airflow")))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    if quiet:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "airflow.db").exists() or not (home / ".migrated").exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                       env=os.environ.copy(), stdout=subprocess.DEVNULL if quiet else None)
        (home / ".migrated").touch()
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


# ---- `make airflow-ui` / `make airflow-stop` ---------------------------------------------------

def _pgid_file() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME", PROJECT_ROOT / ".kmeans" / "airflow")) / \
        "standalone.pgid"


def standalone(parallelism: int = 4) -> int:
    """``airflow standalone`` sized for a small machine (its default is 32 LocalExecutor
    workers), in a process group of its own that Ctrl-C or :func:`stop` ends as a whole (its
    scheduler can ignore SIGTERM for minutes). Returns its exit code."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "AIRFLOW__CORE__PARALLELISM": str(parallelism),
           "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
           "AIRFLOW__API__WORKERS": "1", "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1"}
    _pgid_file().parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(bin_dir / "airflow"), "standalone"], env=env,
                            start_new_session=True)
    # Ctrl-C (SIGINT) and a polite kill (SIGTERM) both end the whole group.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    _pgid_file().write_text(str(proc.pid))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_group(proc.pid)
        _pgid_file().unlink(missing_ok=True)


def stop() -> str:
    """Stop the standalone Airflow that :func:`standalone` started (from another shell)."""
    try:
        pgid = int(_pgid_file().read_text())
    except (OSError, ValueError):
        return "no airflow-ui running"
    stop_group(pgid)
    _pgid_file().unlink(missing_ok=True)
    return f"airflow-ui stopped (process group {pgid})"


def stop_group(pgid: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM to the whole process group, SIGKILL to what is left after the grace period."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":  # the Makefile's airflow-ui and airflow-stop
    if sys.argv[1:] == ["stop"]:
        print(stop())
    else:
        raise SystemExit(standalone(int(os.environ.get("AIRFLOW_PARALLELISM", "4"))))
