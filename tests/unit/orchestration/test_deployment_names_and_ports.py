"""One deployment's ports and names move together (issue 22, item 6): KMEANS_DEPLOYMENT names
the databases, the Redis stream and group and the Feast project; KMEANS_PORT_BASE moves every
port; Airflow's own AIRFLOW__API__PORT alone moves every Airflow URL (the API server's, the
tasks' execution API, the review links). Pure computation: no service is started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from pipeline.core.settings import PROJECT_ROOT, airflow_url, load_settings
from pipeline.devtools import airflow_env
from pipeline.devtools import stack as st
from pipeline.engine.session import ui_conf
from pipeline.promotion.gates import report_url

MOVED = {"KMEANS_DEPLOYMENT": "blue", "KMEANS_PORT_BASE": "21000"}


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment of deployment settings, on a home of its own."""
    for key in [k for k in os.environ if k.startswith(("KMEANS_", "AIRFLOW__API__"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path / "home"))

    def set_(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
    return set_


def test_the_default_deployment_keeps_its_names_and_ports(env):
    s = load_settings()
    assert (s.deployment, s.feast_project, s.stream.stream_name, s.stream.stream_group) == (
        "kmeans", "customer_segments", "kmeans:customer_events", "kmeans-consumer")
    assert (s.airflow_port, s.mlflow_ui_port, s.spark_ui_port) == (8080, 5000, 4040)
    assert s.airflow_url == "http://127.0.0.1:8080"
    config = st.stack_config(s)
    assert (config.db_prefix, config.airflow_port, config.mlflow_port, config.serving_port) == (
        "kmeans", 8080, 5050, 8090)
    assert ui_conf() == {}, "Spark's own default (4040) when nothing is set"


def test_deployment_and_port_base_move_every_name_and_port(env):
    env(**MOVED)
    s = load_settings()
    assert (s.feast_project, s.stream.stream_name, s.stream.stream_group) == (
        "blue_customer_segments", "blue:customer_events", "blue-consumer")
    assert (s.airflow_port, s.mlflow_ui_port, s.spark_ui_port) == (21000, 21001, 21002)
    stack = st.Stack(s, st.stack_config(s))
    assert (stack.database("mlflow"), stack.database("airflow")) == ("blue_mlflow",
                                                                     "blue_airflow")
    assert (stack.config.airflow_port, stack.mlflow_url, stack.serving_url) == (
        21000, "http://127.0.0.1:21003", "http://127.0.0.1:21004")
    # the engine reads the same settings from the environment (it imports no settings)
    assert ui_conf() == {"spark.ui.port": str(s.spark_ui_port)}
    # the Makefile's mlflow-ui asks the settings for its port
    assert subprocess.run([sys.executable, "-m", "pipeline.core.settings",
                           "mlflow_ui_port"], capture_output=True, text=True, check=True,
                          cwd=PROJECT_ROOT).stdout.strip() == "21001"


def test_a_port_or_name_of_its_own_wins_over_the_derived_one(env):
    env(**MOVED, KMEANS_SPARK_UI_PORT="0", KMEANS_FEAST_PROJECT="shared_project",
        KMEANS_STREAM_NAME="events", KMEANS_MLFLOW_UI_PORT="6100")
    s = load_settings()
    stream = s.stream
    assert (s.feast_project, stream.stream_name, stream.stream_group) == (
        "shared_project", "events", "blue-consumer")
    assert (s.mlflow_ui_port, s.spark_ui_port) == (6100, 0)
    assert ui_conf() == {"spark.ui.enabled": "false"}, "0: no Spark UI at all"


def test_airflows_own_port_alone_moves_every_airflow_url_and_the_review_links(env, tmp_path):
    env(AIRFLOW__API__PORT="18123")
    s = load_settings()
    assert s.airflow_port == 18123 and st.stack_config(s).airflow_port == 18123
    components = airflow_env.component_env(tmp_path / "airflow", port=s.airflow_port,
                                           sql_alchemy_conn="sqlite:///x.db")
    assert components["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert components["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:18123"
    assert components["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://127.0.0.1:18123/execution/")
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC" not in components, "SQLite: Airflow's"
    # A task process of that deployment: its settings, and the review link it writes.
    task = {k: v for k, v in components.items() if k.startswith("KMEANS_")}
    t = load_settings(**{k.removeprefix("KMEANS_").lower(): v for k, v in task.items()})
    assert t.airflow_port == 18123 and t.airflow_url == airflow_url(18123)
    report = t.reports_dir / "drift" / "a-vs-v1.html"
    assert report_url(t, report) == "http://127.0.0.1:18123/kmeans/reports/drift/a-vs-v1.html"


def test_the_stack_takes_the_command_line_then_set_settings_then_the_last_up(env):
    env(KMEANS_DEPLOYMENT="green")
    s = load_settings()
    last = s.home / "prod" / st.CONFIG_FILE
    last.parent.mkdir(parents=True)
    last.write_text('{"db_prefix": "old", "mlflow_port": 6050, "airflow_port": 9090}')
    config = st.stack_config(s)
    assert (config.db_prefix, config.mlflow_port, config.airflow_port) == ("green", 6050, 9090)
    config = st.stack_config(s, {"db_prefix": "cli", "mlflow_port": 7050, "command": "up"})
    assert (config.db_prefix, config.mlflow_port) == ("cli", 7050)
    env(KMEANS_PORT_BASE="22000")
    config = st.stack_config(load_settings())
    assert (config.airflow_port, config.mlflow_port, config.serving_port) == (22000, 22003,
                                                                              22004)


@pytest.mark.parametrize("name", ["Blue", "blue-green", "1st", "a" * 41, ""])
def test_a_deployment_name_that_cannot_name_a_database_is_refused(env, name):
    env(KMEANS_DEPLOYMENT=name)
    with pytest.raises(ValidationError, match="deployment"):
        load_settings()
    with pytest.raises(ValueError, match="database prefix"):
        st.StackConfig(db_prefix=name)


def test_prod_up_without_a_server_refuses_a_bad_prefix_by_its_name(env, capsys):
    assert st.main(["up", "--db-prefix", "no-hyphens"]) == 2
    assert "database prefix 'no-hyphens'" in capsys.readouterr().err


@pytest.mark.parametrize(("target", "variables", "expected"), [
    ("mlflow-ui", {"MLFLOW_UI_PORT": "6001"}, "--host 127.0.0.1 --port 6001"),
    ("mlflow-ui", {"KMEANS_PORT_BASE": "23000"}, "--host 127.0.0.1 --port 23001"),
    ("prod-up", {"PROD_DB_PREFIX": "blue"}, "stack up --db-prefix blue"),
    ("airflow-ui", {"AIRFLOW_PORT": "9999"}, "KMEANS_AIRFLOW_PORT=9999 "),
])
def test_the_make_targets_pass_the_ports_and_prefix_on(env, target, variables, expected):
    """What `make` would run (-n: nothing is run)."""
    args = [f"{k}={v}" for k, v in variables.items() if not k.startswith("KMEANS_")]
    # as from a shell: not a sub-make of `make test-fast` (that prints "make[1]: Leaving ...")
    outer = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    environ = {**{k: v for k, v in os.environ.items() if k not in outer},
               **{k: v for k, v in variables.items() if k.startswith("KMEANS_")}}
    shown = subprocess.run(["make", "--no-print-directory", "-n", target, *args],
                           capture_output=True, text=True,
                           check=True, cwd=PROJECT_ROOT, env=environ).stdout
    line = shown.strip().splitlines()[-1]
    assert expected in " ".join(line.split()), line
