"""Shared fixtures, and the tier of each test. The environment is set here, before anything
imports airflow or pyspark. Shared functions live in ``tests/helpers/``."""

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
# The S3 tests' server (moto, tests/helpers/processes.py) takes any key. Set before Spark starts,
# so its Python workers have them too; and no AWS SDK call may look for an instance role on the
# network (the metadata address is not loopback).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

from tests.helpers.clock import BEGIN, DAYS, END, START  # noqa: E402
from tests.helpers.homes import make_settings  # noqa: E402

TESTS = Path(__file__).resolve().parent
#: Fixtures that start what a unit test may not: Spark, Airflow's metadata DB.
SERVICE_FIXTURES = {"spark", "airflow_db"}


def pytest_collection_modifyitems(config, items):
    """The tier of a test is the folder it is in: ``tests/integration/<component>/`` starts
    what it needs (``integration``), ``tests/unit/<package>/`` needs no service, no Spark and
    no Airflow DB (``unit``). A test marked against its folder is a collection error."""
    for item in items:
        parts = Path(item.fspath).resolve().relative_to(TESTS).parts
        tier = parts[0] if parts[0] in ("unit", "integration") else None
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit/<package>/ or "
                                    "tests/integration/<component>/")
        if tier == "unit" and item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid} is marked integration but lives in "
                                    "tests/unit/: move it to tests/integration/<component>/")
        if tier == "unit" and (started := SERVICE_FIXTURES & set(item.fixturenames)):
            raise pytest.UsageError(f"{item.nodeid} lives in tests/unit/ but starts "
                                    f"{sorted(started)}: move it to tests/integration/")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def umask_022():
    """The usual umask, so an owner-only mode is the code's doing and not the environment's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


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
    from pipeline.engine.session import spark_session

    return spark_session("local[2,4]", app_name="kmeans-tests", driver_memory="1g")


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow metadata DB (SQLite) for dag.test(), migrated once per session."""
    from pipeline.devtools import airflow_env

    return airflow_env.prepare(make_settings(_SESSION_DIR / "airflow-settings"))
