"""The production profile on real servers, end to end on this machine.

The stack of ``make prod-up`` (:mod:`pipeline.devtools.stack`) on the machine's PostgreSQL
and Redis: an MLflow tracking server with a PostgreSQL backend store in a database of its own
(uniquely named, dropped at the end) serving the artifacts, Feast's online store in Redis under
a Feast project of its own (every key ends with its name; removed at the end), and Airflow on
a database of its own. The stack is brought up by ``python -m pipeline.devtools.stack up``
(what ``make prod-up`` runs) as a process that exits before anything is trained: the training
DAG is then triggered through Airflow's REST API and run by the stack's scheduler in the
production profile, as a user meets it (a task that inherited the exited command's Feast metrics
folder once failed at ``snapshot``). Then the inference server with both tokens, and everything
stopped again. Also: the production profile's preflight names the one piece that is missing.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
import redis
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline import registry
from pipeline.cli import app as cli
from pipeline.core import preflight
from pipeline.core.settings import FEATURE_NAMES, load_settings
from pipeline.data.datagen import generate_lake
from pipeline.data.features import feature_store, online_features
from pipeline.devtools import stack as st
from pipeline.devtools.airflow_env import Airflow
from pipeline.serving.__main__ import main as serve_main
from tests.helpers.airflow_rest import STALL_TIMEOUT, Rest
from tests.helpers.clock import DAYS, END, START
from tests.helpers.net import free_port
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
NAME = "customer_segments"



def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _redis_keys(settings) -> list[bytes]:
    host, port, _ = preflight.redis_address(settings.redis_connection_string)
    with redis.Redis(host=host, port=port) as client:
        return list(client.scan_iter(match=b"*" + settings.feast_project.encode(), count=1000))


def _task_log(home: Path, run_id: str, tasks: dict) -> str:
    """The end of the first failed task's log, for the assertion message."""
    failed = [t for t, state in tasks.items() if state == "failed"]
    if not failed:
        return ""
    logs = sorted((home / "logs" / "dag_id=kmeans_training" / f"run_id={run_id}"
                   / f"task_id={failed[0]}").rglob("*.log"))
    return logs[-1].read_text(errors="replace")[-4000:] if logs else "no log"


def _databases(stack: st.Stack) -> set[str]:
    with psycopg.connect(stack.postgres_url, dbname="postgres", autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A stack on a fresh home, its own databases and Feast project; stopped and purged at
    the end whatever happened."""
    suffix = uuid.uuid4().hex[:10]
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KMEANS_FEAST_PROJECT", f"kmeans_test_{suffix}")
    config = st.StackConfig(mlflow_port=free_port(), serving_port=free_port(),
                            airflow_port=free_port(), db_prefix=f"kmeans_test_{suffix}",
                            start_timeout=240)
    stack = st.Stack(load_settings(), config)
    try:
        yield stack
    finally:
        st.down(stack)
        st.purge(stack)


def test_the_stack_trains_registers_and_serves_in_the_production_profile(stack, monkeypatch):
    figures: dict[str, float] = {}
    t0 = time.monotonic()

    # -- `make prod-up` from a shell, before any model: the command exits, and what it started
    # runs on without it (Feast's metrics folder of that process is gone with it: a task
    # that inherited it failed at `snapshot`). The scheduler creates no run of its own here:
    # the one training run below is triggered.
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.devtools.stack", "up",
         "--mlflow-port", str(stack.config.mlflow_port),
         "--serving-port", str(stack.config.serving_port),
         "--airflow-port", str(stack.config.airflow_port),
         "--db-prefix", stack.config.db_prefix],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"})
    figures["first up"] = time.monotonic() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    up = {r["name"]: r for r in st.status(stack)["components"]}
    assert up["mlflow"]["state"] == "running" and up["mlflow"]["healthy"], up
    assert up["feast"]["state"] == "set up" and up["feast"]["healthy"], up
    assert up["serving"]["state"] == "stopped", "no champion yet: the server waits"
    assert "has no champion yet" in done.stdout + done.stderr
    # Airflow: its metadata in the stack's PostgreSQL, the LocalExecutor, the DAGs parsed.
    assert up["airflow"]["state"] == "running" and up["airflow"]["healthy"], up
    assert {stack.database("mlflow"), stack.database("airflow")} <= _databases(stack)
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600
    env = st.read_env_file(stack.env_file)
    assert {k: env[k] for k in ("KMEANS_PROFILE", "KMEANS_MLFLOW_TRACKING_URI",
                                "KMEANS_FEAST_PROJECT", "KMEANS_SPARK_MASTER")} == {
        "KMEANS_PROFILE": "production", "KMEANS_MLFLOW_TRACKING_URI": stack.mlflow_url,
        "KMEANS_FEAST_PROJECT": stack.base.feast_project, "KMEANS_SPARK_MASTER": "local[2]"}
    serving_token, admin_token = env["KMEANS_SERVING_TOKEN"], env["KMEANS_ADMIN_TOKEN"]
    assert len({serving_token, admin_token}) == 2 and len(serving_token) >= 32

    # -- the shell of the env file, with Spark as the tests run it.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KMEANS_SPARK_MASTER", "local[2,4]")
    settings = load_settings()
    assert settings.profile == "production"
    preflight.check(settings)  # every piece answers

    # -- the preflight names the one piece that is missing, on one line, exit code 2.
    closed = free_port()
    for variable, value, named in (
            ("KMEANS_REDIS_CONNECTION_STRING", f"127.0.0.1:{closed}",
             f"Redis (the Feast online store) at 127.0.0.1:{closed}"),
            ("KMEANS_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}",
             f"MLflow tracking server at http://127.0.0.1:{closed}"),
            ("KMEANS_POSTGRES_URL", f"postgresql://postgres@127.0.0.1:{closed}",
             f"PostgreSQL at 127.0.0.1:{closed}")):
        expected = (f"error: profile=production: {named} ({variable}) refused the connection "
                    f"(nothing listens there)")
        result = CliRunner().invoke(cli, ["audit"], env={variable: value})
        assert (result.exit_code, result.stderr.strip()) == (2, expected), result.output
        with monkeypatch.context() as m:
            m.setenv(variable, value)
            assert serve_main(["--port", "0"]) == 2
    result = CliRunner().invoke(cli, ["audit"], env={"KMEANS_ADMIN_TOKEN": None})
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("profile=production needs KMEANS_ADMIN_TOKEN")
    # kmeans-serve as its own process: the same line, no traceback.
    done = subprocess.run([sys.executable, "-m", "pipeline.serving"], cwd=ROOT, timeout=120,
                          capture_output=True, text=True,
                          env={**os.environ, "KMEANS_REDIS_CONNECTION_STRING":
                               f"127.0.0.1:{closed}"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: profile=production: Redis (the Feast online store) at 127.0.0.1:{closed} "
        f"(KMEANS_REDIS_CONNECTION_STRING) refused the connection (nothing listens there)")

    # -- the training DAG, triggered through the REST API of the stack's Airflow, run by its
    # scheduler and LocalExecutor after prod-up has exited.
    t1 = time.monotonic()
    generate_lake(settings.lake_dir, n_customers=1500, start=START, days=DAYS, seed=11)
    home = stack.dir / "airflow"
    airflow = Airflow(home=home, url=f"http://127.0.0.1:{stack.config.airflow_port}",
                      username="admin",
                      password=json.loads((home / "passwords.json").read_text())["admin"],
                      pgid=up["airflow"]["pgid"], logs=home / "logs")
    rest = Rest(airflow)
    wait_until(lambda: rest("GET", "/api/v2/dags/kmeans_training")["dag_id"], STALL_TIMEOUT,
               "kmeans_training parsed", interval=1, ignore=(OSError, AssertionError))
    rest("PATCH", "/api/v2/dags/kmeans_training", {"is_paused": False})
    run_id = rest("POST", "/api/v2/dags/kmeans_training/dagRuns", {
        "logical_date": None, "conf": {"lookback_days": DAYS, "end_date": END.date().isoformat(),
                                       "k_min": 2, "k_max": 4}})["dag_run_id"]
    state = rest.wait_run("kmeans_training", run_id)
    tasks = rest.tasks("kmeans_training", run_id)
    assert state == "success", (tasks, _task_log(home, run_id, tasks))
    assert tasks.pop("drift_review") == "skipped" and set(tasks.values()) == {"success"}, tasks
    trained = rest("GET", f"/api/v2/dags/kmeans_training/dagRuns/{run_id}/taskInstances/"
                          "train/xcomEntries/return_value")["value"]
    trained = trained if isinstance(trained, dict) else json.loads(trained)
    figures["training DAG"] = time.monotonic() - t1

    # -- in the MLflow server's registry, in PostgreSQL, artifacts uploaded through the server.
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    version = client.get_model_version(NAME, "1")
    assert version.run_id == trained["run_id"]
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"
    with psycopg.connect(stack.database_url("mlflow", driver=""), autocommit=True) as conn:
        rows = conn.execute("SELECT name, version FROM model_versions").fetchall()
    assert rows == [(NAME, 1)]
    served = stack.artifacts_dir / experiment.experiment_id
    logged = sorted(served.glob("models/*/artifacts"))  # the logged model of version 1
    assert len(logged) == 1 and version.source.endswith(logged[0].parent.name), version.source
    model_dir = logged[0]
    for name in ("MLmodel", "artifacts/segment_model/centroids.npy",
                 "artifacts/segment_model/checksums.json"):
        assert (model_dir / name).stat().st_size > 0, name
    assert (served / trained["run_id"] / "artifacts" / "candidate" / "centroids.npy").is_file()
    assert not settings.artifact_root.exists(), "nothing may be written to the local default"
    assert not (settings.home / "mlflow.db").exists()

    # -- the online store: one Redis hash per customer, under this stack's Feast project.
    assert len(_redis_keys(settings)) > 1000

    # -- up again: the champion exists, so the server starts; what ran is left running.
    t2 = time.monotonic()
    again = {r["name"]: r for r in st.up(stack, say=lambda _: None)}
    figures["second up"] = time.monotonic() - t2
    assert again["mlflow"]["state"] == "running" and again["mlflow"]["pgid"] == up["mlflow"][
        "pgid"]
    assert again["serving"]["state"] == "started", again
    figures["serving ready"] = again["serving"]["seconds"]
    status = {r["name"]: r for r in st.status(stack)["components"]}
    assert all(status[n]["state"] == "running" and status[n]["healthy"]
               for n in ("mlflow", "serving", "airflow")), status
    assert status["feast"]["healthy"]

    model, _ = registry.download_model(settings)
    ids = [100_001, 100_002, 100_003]
    online = online_features(feature_store(settings), settings.feature_service, ids)
    vectors = online[FEATURE_NAMES].to_numpy(dtype=float)
    expected = model.assign(vectors)
    auth = {"Authorization": f"Bearer {serving_token}"}
    with httpx.Client(base_url=stack.serving_url, timeout=30) as http:
        by_vector = http.post(f"/v2/models/{NAME}/infer", headers=auth, json={"inputs": [{
            "name": "features", "datatype": "FP64", "shape": list(vectors.shape),
            "data": np.where(np.isnan(vectors), None, vectors).tolist()}]})
        by_id = http.post(f"/v1/models/{NAME}:predict", headers=auth,
                          json={"instances": [{"customer_id": i} for i in ids]})
        no_token = http.post(f"/v1/models/{NAME}:predict", json={"instances": [
            {"customer_id": ids[0]}]})
        wrong_token = http.post(f"/v1/models/{NAME}:predict", json={"instances": [
            {"customer_id": ids[0]}]}, headers={"Authorization": "Bearer not-the-token"})
        admin_as_client = http.get("/admin/state", headers=auth)
        admin = http.get("/admin/state", headers={"Authorization": f"Bearer {admin_token}"})
    assert by_vector.status_code == 200, by_vector.text
    outputs = {o["name"]: o["data"] for o in by_vector.json()["outputs"]}
    assert outputs["cluster"] == expected.cluster.tolist()
    assert by_vector.json()["model_version"] == "1"
    assert by_id.status_code == 200, by_id.text
    predictions = by_id.json()["predictions"]
    assert [p["cluster"] for p in predictions] == expected.cluster.tolist(), predictions
    assert np.allclose([p["distance"] for p in predictions], expected.distance)
    assert (no_token.status_code, wrong_token.status_code) == (401, 403)
    assert (admin_as_client.status_code, admin.status_code) == (403, 200)

    # -- down: every process group of the stack ends; nothing listens any more.
    groups = [r["pgid"] for r in status.values() if "pgid" in r]
    t3 = time.monotonic()
    stopped = st.down(stack)
    figures["down"] = time.monotonic() - t3
    assert sorted(r["name"] for r in stopped) == ["airflow", "mlflow", "serving"]
    assert all(r["state"] == "stopped" for r in stopped)
    print("down:", {r["name"]: (r["how"], r["seconds"]) for r in stopped})
    # SIGTERM or, past the grace period, SIGKILL; either way down returns once the group is gone.
    assert all(r["how"] in ("terminated", "killed") for r in stopped), stopped
    for pgid in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert not _listening(stack.config.mlflow_port)
    assert not _listening(stack.config.serving_port)
    assert not _listening(stack.config.airflow_port)
    assert [r["state"] for r in st.status(stack)["components"]] == ["stopped", "set up",
                                                                    "stopped", "stopped"]

    # -- purge: the databases dropped, the Feast project's keys gone from Redis.
    purged = st.purge(stack)
    assert sorted(purged["dropped_databases"]) == [stack.database("airflow"),
                                                   stack.database("mlflow")]
    assert not {stack.database("mlflow"), stack.database("airflow")} & _databases(stack)
    assert _redis_keys(settings) == []
    assert st.status(stack)["components"][1]["state"] == "not set up"
    figures["total"] = time.monotonic() - t0
    print("figures (s): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))


def test_without_any_server_every_missing_piece_is_named(monkeypatch):
    """Nothing listens: one line naming PostgreSQL, MLflow and Redis, each with its address."""
    ports = [free_port() for _ in range(3)]
    settings = load_settings(profile="production", serving_token="serving-token-1",
                             admin_token="admin-token-2",
                             postgres_url=f"postgresql://u:secret@127.0.0.1:{ports[0]}",
                             mlflow_tracking_uri=f"http://127.0.0.1:{ports[1]}",
                             redis_connection_string=f"127.0.0.1:{ports[2]},password=secret")
    with pytest.raises(preflight.ServiceUnavailable) as err:
        preflight.check(settings)
    message = str(err.value)
    assert message.startswith("profile=production: PostgreSQL at 127.0.0.1:")
    for named in (f"PostgreSQL at 127.0.0.1:{ports[0]} (KMEANS_POSTGRES_URL)",
                  f"MLflow tracking server at http://127.0.0.1:{ports[1]} "
                  f"(KMEANS_MLFLOW_TRACKING_URI)",
                  f"Redis (the Feast online store) at 127.0.0.1:{ports[2]} "
                  f"(KMEANS_REDIS_CONNECTION_STRING)"):
        assert named in message
    assert "secret" not in message and "\n" not in message
    # Only what a command needs is asked, and the local profile asks nothing.
    with pytest.raises(preflight.ServiceUnavailable, match="MLflow") as err:
        preflight.check(settings, needs=("mlflow",))
    assert "Redis" not in str(err.value)
    preflight.check(load_settings(redis_connection_string=f"127.0.0.1:{ports[2]}"))


def test_a_port_held_by_something_else_is_not_taken_for_the_server():
    """Redis on the PostgreSQL port, PostgreSQL on the Redis port: each check speaks its
    server's protocol, so neither passes."""
    assert "does not speak the Redis protocol" in preflight.redis_problem(
        "127.0.0.1", 5432, {}, 5.0)
    assert preflight.http_problem("http://127.0.0.1:6379/health", 5.0) is not None
    assert preflight.redis_problem("127.0.0.1", 6379, {}, 5.0) is None
    assert preflight.postgres_problem("127.0.0.1", 5432, 5.0) is None


def test_the_deployment_name_prefixes_the_databases_on_a_shared_server(tmp_path, monkeypatch):
    """KMEANS_DEPLOYMENT alone (as `make prod-up` reads it; PROD_DB_PREFIX=... on the command
    line wins) gives the stack's databases names of their own on the machine's PostgreSQL:
    two deployments on one server do not share kmeans_mlflow and kmeans_airflow. The
    components' databases only: no process is started."""
    name = f"kmeans_test_{uuid.uuid4().hex[:10]}"
    for key in [k for k in os.environ if k.startswith("KMEANS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KMEANS_DEPLOYMENT", name)
    base = load_settings()
    assert base.feast_project == f"{name}_customer_segments"
    assert base.stream.stream_name == f"{name}:customer_events"
    stack = st.Stack(base, st.stack_config(base))
    databases_only = (st.Component(name="databases", databases=("mlflow", "airflow")),)
    try:
        st.up(stack, databases_only, say=lambda _: None)
        created = {f"{name}_mlflow", f"{name}_airflow"}
        assert created <= _databases(stack)
        assert json.loads((stack.dir / st.CONFIG_FILE).read_text())["db_prefix"] == name
        # the command line (PROD_DB_PREFIX=...) still wins
        assert st.stack_config(base, {"db_prefix": f"{name}_cli"}).db_prefix == f"{name}_cli"
    finally:
        st.purge(stack, databases_only)
    assert not {f"{name}_mlflow", f"{name}_airflow"} & _databases(stack)
