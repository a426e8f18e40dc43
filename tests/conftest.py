"""Shared fixtures. The environment is set here, before anything imports airflow or pyspark."""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="kmeans-tests-"))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
# local[2,4]: two cores, and a failed task gets up to four attempts (fault-injection tests).
os.environ["KMEANS_SPARK_MASTER"] = "local[2,4]"
os.environ["KMEANS_SPARK_DRIVER_MEMORY"] = "1g"
os.environ["KMEANS_SPARK_PARTITIONS"] = "3"
os.environ["KMEANS_MIN_ROWS"] = "200"
os.environ["KMEANS_HOME"] = str(_SESSION_DIR / "default-home")
# The S3 tests' server (moto, tests/standalone.py) takes any key. Set before Spark starts, so its
# Python workers have them too; and no AWS SDK call may look for an instance role on the
# network (the metadata address is not loopback).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

START = dt.date(2026, 11, 1)
DAYS = 3
END = dt.datetime(2026, 11, 4, tzinfo=dt.UTC)
BEGIN = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def make_settings(home: Path, **overrides):
    from pipeline.core.settings import load_settings

    return load_settings(home=home, **overrides)


def shifted(frame):
    """Customers who spend three times as much, browse twice as much, wait twice as long between
    orders and stayed a year longer: still valid data, another population (6 of 12 features
    drift), with the same segment structure (shifts in each feature's model space)."""
    return frame.assign(total_spend_30d=frame.total_spend_30d * 3,
                        avg_order_value=frame.avg_order_value * 3,
                        sessions_30d=frame.sessions_30d * 2,
                        categories_browsed_30d=frame.categories_browsed_30d + 6,
                        tenure_days=frame.tenure_days + 365,
                        days_since_last_order=frame.days_since_last_order * 2)


def train_champion(root: Path, *, customers: int = 1200, seed: int = 17, k: int = 4,
                   **overrides):
    """A home with sample data landed, the Feast repo applied and a k-means champion (version
    1) trained on it in-process and registered; its settings (``overrides``: more settings)."""
    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake
    from pipeline.promotion.register import register
    from pipeline.training import stages

    settings = make_settings(root, **overrides)
    generate_lake(settings.lake_dir, n_customers=customers, start=START, days=DAYS, seed=seed)
    ingest_lake(settings, BEGIN.date(), END.date())
    features.apply_repo(settings)
    snap = features.training_snapshot(settings, BEGIN, END)
    trained = stages.train(settings, snap.path, {"k_min": k, "k_max": k, "engine": "local",
                                                 "max_iter": 30, "seed": 3})
    register(settings, trained["run_id"])
    return settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings on a fresh home; also exported so code that reads the environment agrees."""
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))
    return make_settings(tmp_path / "home")


@pytest.fixture(scope="session")
def lake_home():
    """A small lake (1,500 customers x 3 days), landed, applied and materialized, shared."""
    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake

    home = _SESSION_DIR / "lake-home"
    s = make_settings(home)
    generate_lake(s.lake_dir, n_customers=1500, start=START, days=DAYS, seed=11)
    ingest_lake(s, BEGIN.date(), END.date())
    features.apply_repo(s)
    features.materialize(s, BEGIN - dt.timedelta(days=30), END)
    return home


@pytest.fixture(scope="session")
def snapshot_path(lake_home):
    from pipeline.data.features import training_snapshot

    return training_snapshot(make_settings(lake_home), BEGIN, END).path


@pytest.fixture(scope="session")
def spark():
    from pipeline.engine.spark import spark_session

    return spark_session("local[2,4]", app_name="kmeans-tests", driver_memory="1g")


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow metadata DB (SQLite) for dag.test(), migrated once per session."""
    from pipeline.orchestration import airflow_env

    return airflow_env.prepare(make_settings(_SESSION_DIR / "airflow-settings"))
