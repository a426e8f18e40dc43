"""Airflow on the embedded default: SQLite metadata under KMEANS_HOME, the project's DAGs."""

from __future__ import annotations

import os
import subprocess
import sys
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
