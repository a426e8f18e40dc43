"""The production profile on real servers, end to end on this machine.

The stack of ``make prod-up`` (:mod:`pipeline.orchestration.stack`) on the machine's PostgreSQL
and Redis: an MLflow tracking server with a PostgreSQL backend store in a database of its own
(uniquely named, dropped at the end) serving the artifacts, Feast's online store in Redis under
a Feast project of its own (every key ends with its name; removed at the end), then the training
flow the DAG runs (:mod:`pipeline.orchestration.flow`) in the production profile with Spark on
``local[2,4]``, the inference server with both tokens, and everything stopped again. Also: the
production profile's preflight names the one piece that is missing.
"""

from __future__ import annotations

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
from pipeline.orchestration import flow
from pipeline.orchestration import stack as st
from pipeline.serving.__main__ import main as serve_main
from tests.helpers.clock import DAYS, END, START
from tests.helpers.net import free_port

ROOT = Path(__file__).resolve().parents[3]
NAME = "customer_segments"



def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _redis_keys(settings) -> list[bytes]:
    host, port, _ = preflight.redis_address(settings.redis_connection_string)
    with redis.Redis(host=host, port=port) as client:
        return list(client.scan_iter(match=b"*" + settings.feast_project.encode(), count=1000))


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

    # -- up, before any model: MLflow and Feast; the server waits for a champion.
    up = {r["name"]: r for r in st.up(stack, say=lambda _: None)}
    figures["first up"] = time.monotonic() - t0
    assert up["mlflow"]["state"] == "started", up
    assert up["feast"]["state"] == "ready", up
    assert up["serving"]["state"] == "waiting" and "has no champion yet" in up["serving"][
        "reason"], up
    figures["mlflow ready"], figures["feast apply"] = up["mlflow"]["seconds"], up["feast"][
        "seconds"]
    # Airflow: its metadata in the stack's PostgreSQL, the LocalExecutor, the DAGs parsed.
    assert up["airflow"]["state"] == "started", up
    figures["airflow ready"] = up["airflow"]["seconds"]
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

    # -- the training flow the DAG runs, on the stack.
    t1 = time.monotonic()
    generate_lake(settings.lake_dir, n_customers=1500, start=START, days=DAYS, seed=11)
    window = flow.interval({"params": {"lookback_days": DAYS, "end_date": END.date().isoformat()}})
    assert flow.ingest(window)["rejected"] == 0
    flow.materialize(window)
    snapshot = flow.snapshot(window)
    report = flow.validate(snapshot)
    params = {"k_min": 2, "k_max": 4}
    trained = flow.train(snapshot, report, params)
    gated = flow.gates(flow.evaluate(trained, snapshot, params), snapshot, report)
    registered = flow.register(gated)
    assert registered["version"] == "1" and "champion" in registered["aliases"], registered
    assert flow.ready_to_serve(registered)["version"] == "1"
    figures["training flow"] = time.monotonic() - t1

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
