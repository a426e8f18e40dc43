"""The DAGs as Airflow's users meet them: the real scheduler, API server, dag-processor and
triggerer (LocalExecutor, one process per task), with the metadata in the local PostgreSQL, every
action through the REST API or the UI in Debian's Chromium (Playwright); not ``dag.test()``.

One deployment serves the whole module, in order; a test whose predecessor failed sets up
what it needs itself (a champion, a challenger) through the pipeline's functions, so one failure
does not fail the tests after it:

1. unpausing ``kmeans_training`` gives a green scheduled run on data that ends yesterday;
2. a run triggered through the REST API with default params, on drifted data, waits at
   ``drift_review``; in the browser, the Required Actions page links the Evidently report
   (served by the project's Airflow plugin) and it opens; the approval, through the REST API,
   registers the challenger; the grid shows the run green;
3. ``kmeans promote`` from a shell creates the champion asset event through the REST API;
   ``kmeans_rollback``, triggered from the UI's form with every param at its default, rolls
   the promotion back; the grid shows it green and its return value says what it did;
4. unpausing ``kmeans_monitoring`` gives a green scheduled run of the last hour's window, whose
   report the plugin serves in the UI's browser session.

The screenshots are kept in ``test-artifacts/airflow-ui/`` (git ignores the folder).

Waits follow progress: a run is waited for while its state, its tasks' states or its task logs
change (a long fit logs a line every few seconds), so a loaded machine only makes it slower.
The data is small (600 customers x 7 days) so that it does not take all day either.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from pipeline.promotion.params import RollbackParams
from tests.helpers import airflow_ui, clock
from tests.helpers.airflow_rest import STALL_TIMEOUT, Rest
from tests.helpers.homes import make_settings, shifted, train_and_register
from tests.helpers.net import free_port
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(1500)

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LAKE_CUSTOMERS, LAKE_DAYS = 600, 7
SCREENSHOTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "airflow-ui"



def paused_try_reported(airflow, dag_id: str, run_id: str, task_id: str) -> None:
    """Until the scheduler has the executor's report of the try that paused for input.

    Airflow 3.3 races here: an answer given before that report arrives resumes the task, and
    the late report of the paused try ("success") then finds the task queued, calls it a
    mismatch and fails the try; the retry asks the reviewer again. The worker reported about
    5 s after the pause on a quiet machine, and a scripted approval was quicker than that. A
    person is not; a script that answers should wait as this does."""
    log = airflow.logs / "scheduler.log"
    said = ("Received executor event with state success for task instance TaskInstanceKey("
            f"dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}'")
    wait_until(lambda: said in log.read_text(errors="replace"), STALL_TIMEOUT,
               f"the scheduler's report of {task_id}'s paused try", interval=0.5)  # a plain
    # limit: the scheduler's log grows with its heartbeats, so its size shows no progress


def ensure_champion(settings) -> str:
    """The champion's version; when an earlier test left none, one trained in-process on the
    deployment's data and registered, so this test does not fail for the earlier one."""
    from pipeline import registry

    if champion := registry.current_aliases(settings)["champion"]:
        return champion
    _train_and_register(settings)
    return registry.current_aliases(settings)["champion"]


def ensure_challenger(settings) -> str:
    """The challenger's version; one registered from an in-process run when there is none."""
    from pipeline import registry

    champion = ensure_champion(settings)
    # the first version is champion and challenger at once: that is not a challenger to promote
    if (challenger := registry.current_aliases(settings)["challenger"]) not in (None, champion):
        return challenger
    _train_and_register(settings)
    return registry.current_aliases(settings)["challenger"]


def _train_and_register(settings) -> None:
    from pipeline.data import features
    from pipeline.data.ingest import ingest_lake

    end = dt.datetime.combine(clock.TODAY, dt.time(), dt.UTC)
    begin = end - dt.timedelta(days=LAKE_DAYS)
    ingest_lake(settings, begin.date(), end.date())
    features.apply_repo(settings)
    # the deployment's own comparison tolerance (its environment, not this process's)
    train_and_register(make_settings(settings.home, gate_comparison_tolerance=1.0), begin, end)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A fresh PostgreSQL database for Airflow's metadata, a KMEANS_HOME with data that ends
    yesterday, and Airflow's components started on it; everything stopped and dropped after."""
    from pipeline.data.datagen import generate_lake
    from pipeline.devtools import airflow_env

    root = tmp_path_factory.mktemp("scheduler")
    database = f"kmeans_airflow_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    settings = make_settings(root / "home")
    generate_lake(settings.lake_dir, n_customers=LAKE_CUSTOMERS, days=LAKE_DAYS, seed=21)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KMEANS_"))}
    env.update({"KMEANS_HOME": str(settings.home), "KMEANS_SPARK_MASTER": "local[2,4]",
                "KMEANS_SPARK_DRIVER_MEMORY": "1g", "KMEANS_ROLLOUT_BACKEND": "none",
                # The drifted population's clusters are looser than the champion's: the
                # comparison gate would refuse the challenger, and it is not what this is about.
                "KMEANS_GATE_COMPARISON_TOLERANCE": "1.0",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
    airflow = airflow_env.start(
        root / "airflow", port=free_port(), parallelism=2, base_env=env,
        sql_alchemy_conn=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        ready_timeout=STALL_TIMEOUT)
    try:
        yield airflow, settings
    finally:
        airflow.stop()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def ui(deployment):
    """Debian's Chromium, logged in to the deployment's UI as admin."""
    airflow, _ = deployment
    with airflow_ui.browser(SCREENSHOTS) as page:
        airflow_ui.log_in(page, airflow.url, airflow.username, airflow.password)
        yield page


def test_unpausing_gives_a_green_scheduled_run(deployment, ui):
    airflow, settings = deployment
    rest = Rest(airflow)
    # The trigger form accepts every default (no field flagged, Trigger enabled).
    airflow_ui.trigger_with_defaults(ui, airflow.url, "kmeans_training", submit=False)
    assert rest("GET", "/api/v2/dags/kmeans_training")["is_paused"] is True
    rest("PATCH", "/api/v2/dags/kmeans_training", {"is_paused": False})
    runs = rest.first_run("kmeans_training")
    assert [r["run_type"] for r in runs] == ["scheduled"], runs
    run_id = runs[0]["dag_run_id"]
    assert rest.wait_run("kmeans_training", run_id) == "success", rest.tasks(
        "kmeans_training", run_id)
    tasks = rest.tasks("kmeans_training", run_id)
    assert tasks.pop("drift_review") == "skipped", "no champion yet: no drift to review"
    assert set(tasks.values()) == {"success"}, tasks
    # The run's params (every default) are the run's conf as the UI shows them.
    from pipeline import registry

    assert registry.current_aliases(settings)["champion"] == "1"
    # Both executor workers imported the pipeline before taking work (executor.py): the task
    # processes forked from them found it imported.
    from pipeline.orchestration.executor import PRELOAD

    said = [line for line in (airflow.logs / "scheduler.log").read_text().splitlines()
            if "LocalExecutor worker preloaded" in line]
    assert len(said) >= 2 and all(f"'{name}'" in line for line in said for name in PRELOAD), said


def test_a_default_run_on_drifted_data_waits_for_review_and_an_approval_registers(deployment,
                                                                                  ui):
    from pipeline import registry

    airflow, settings = deployment
    rest = Rest(airflow)
    champion = ensure_champion(settings)
    for part in sorted(settings.lake_dir.glob("*/day=*/*.parquet")):
        shifted(pd.read_parquet(part)).to_parquet(part, index=False)
    run = rest("POST", "/api/v2/dags/kmeans_training/dagRuns",
               {"logical_date": None, "conf": {}})
    run_id = run["dag_run_id"]
    assert run["run_type"] == "manual"
    state = rest.wait_run("kmeans_training", run_id, task=("drift_review", "awaiting_input"))
    assert state == "running", state
    hitl = (f"/api/v2/dags/kmeans_training/dagRuns/{run_id}/taskInstances/drift_review/-1/"
            "hitlDetails")
    request = rest("GET", hitl)
    # The body links the Evidently report over HTTP, served by Airflow's API server itself.
    link = request["body"].split("[Open the Evidently drift report](")[1].split(")")[0]
    assert link.startswith(f"{airflow.url}/kmeans/reports/drift/") and link.endswith(".html")
    # The reports are for Airflow's users: 401 without a token (the UI's session cookie or a
    # bearer token lets a user in).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{airflow.url}/kmeans/reports/", timeout=30)
    assert refused.value.code == 401
    index = urllib.request.Request(f"{airflow.url}/kmeans/reports/",
                                   headers={"Authorization": f"Bearer {airflow.token()}"})
    with urllib.request.urlopen(index, timeout=30) as reply:
        assert link.rsplit("/", 1)[1] in reply.read().decode()
    # A reviewer opens it from the Required Actions page, in one click.
    opened, content = airflow_ui.open_review_report(ui, airflow.url, "kmeans_training", run_id)
    assert opened == link
    assert content == (settings.reports_dir / "drift" / link.rsplit("/", 1)[1]).read_bytes()

    paused_try_reported(airflow, "kmeans_training", run_id, "drift_review")
    rest("PATCH", hitl, {"chosen_options": ["Approve"], "params_input": {}})
    assert rest.wait_run("kmeans_training", run_id) == "success", rest.tasks(
        "kmeans_training", run_id)
    tasks = rest.tasks("kmeans_training", run_id)
    # no rollout backend here: the challenger waits, the champion did not move, so the
    # rollout is skipped and emits no champion asset event (nothing to republish)
    assert tasks.pop("rollout") == "skipped" and set(tasks.values()) == {"success"}, tasks
    aliases = registry.current_aliases(settings)
    challenger = aliases["challenger"]
    assert aliases == {"champion": champion, "challenger": challenger, "previous": None}
    assert int(challenger) > int(champion)
    entry = registry.read_audit(settings)[-1]
    assert (entry["alias"], entry["to_version"]) == ("challenger", challenger)
    assert entry["figures"]["drift_review"]["chosen"] == ["Approve"]
    airflow_ui.see_run_succeeded_in_grid(ui, airflow.url, "kmeans_training", run_id,
                                         timeout_s=120)


def test_rollback_from_the_ui_form_with_defaults_says_what_it_did(deployment, ui):
    """Every param at its default (a reason is filled in); what happened to the challenger is
    in the task's return value (its keeping is shown in
    tests/integration/mlflow/test_registry.py)."""
    from typer.testing import CliRunner

    from pipeline import registry
    from pipeline.cli import app as cli

    airflow, settings = deployment
    rest = Rest(airflow)
    champion, challenger = ensure_champion(settings), ensure_challenger(settings)
    # `kmeans promote` from a shell of this deployment: the move, then a champion asset event
    # through Airflow's API (kmeans_publish republishes on it, as after the DAGs' moves).
    port = airflow.url.rsplit(":", 1)[1]
    promoted = CliRunner().invoke(cli, ["promote", challenger, "--reason", "canary passed"],
                                  env={"KMEANS_HOME": str(settings.home),
                                       "AIRFLOW_HOME": str(airflow.home),
                                       "KMEANS_AIRFLOW_PORT": port, "AIRFLOW__API__PORT": None})
    assert promoted.exit_code == 0, promoted.output
    publication = json.loads(promoted.stdout)["publication"]
    assert publication["emitted"], publication
    [asset] = [a for a in rest("GET", "/api/v2/assets")["assets"]
               if a["uri"] == "kmeans://customer_segments/champion"]
    events = rest("GET", f"/api/v2/assets/events?asset_id={asset['id']}")["asset_events"]
    [extra] = [e["extra"] for e in events if e["id"] == publication["event_id"]]
    assert {k: extra.get(k) for k in ("operation", "champion", "reason", "via")} == {
        "operation": "promotion", "champion": challenger, "reason": "canary passed",
        "via": "cli"}, extra
    rest("PATCH", "/api/v2/dags/kmeans_rollback", {"is_paused": False})
    run_id = airflow_ui.trigger_with_defaults(ui, airflow.url, "kmeans_rollback")
    assert rest.wait_run("kmeans_rollback", run_id) == "success", rest.tasks(
        "kmeans_rollback", run_id)
    airflow_ui.see_run_succeeded_in_grid(ui, airflow.url, "kmeans_rollback", run_id,
                                         timeout_s=120)
    assert registry.current_aliases(settings) == {"champion": champion, "challenger": None,
                                                  "previous": None}
    done = rest("GET", f"/api/v2/dags/kmeans_rollback/dagRuns/{run_id}/"
                       "taskInstances/rollback/xcomEntries/return_value")
    value = done["value"] if isinstance(done["value"], dict) else json.loads(done["value"])
    assert value["summary"] == f"champion {challenger} -> {champion}; no challenger"
    entry = registry.read_audit(settings)[-1]
    assert entry["reason"] == RollbackParams.model_fields["reason"].default
    assert entry["actor"] == run_id


def test_unpausing_the_monitoring_gives_a_green_hourly_run(deployment, ui):
    """The hourly window of the scheduler's run (no traffic here: too few rows to judge);
    nothing to watch, no retraining; the window's entry is on the index the plugin serves."""
    airflow, settings = deployment
    rest = Rest(airflow)
    champion = ensure_champion(settings)
    rest("PATCH", "/api/v2/dags/kmeans_monitoring", {"is_paused": False})
    runs = rest.first_run("kmeans_monitoring")
    assert [r["run_type"] for r in runs] == ["scheduled"], runs
    run_id = runs[0]["dag_run_id"]
    assert rest.wait_run("kmeans_monitoring", run_id) == "success", rest.tasks(
        "kmeans_monitoring", run_id)
    assert rest.tasks("kmeans_monitoring", run_id) == {
        "window": "success", "watch": "success", "retrain_decision": "success",
        "trigger_training": "skipped"}
    found = rest("GET", f"/api/v2/dags/kmeans_monitoring/dagRuns/{run_id}/"
                        "taskInstances/window/xcomEntries/return_value")
    window = found["value"] if isinstance(found["value"], dict) else json.loads(found["value"])
    assert window["status"] == "too_few_rows" and window["champion_version"] == champion, window
    start = dt.datetime.fromisoformat(window["start"])
    assert dt.datetime.fromisoformat(window["end"]) - start == dt.timedelta(hours=1)
    ui.goto(f"{airflow.url}/kmeans/reports/monitoring/index.html")
    assert ui.get_by_role("link", name=window["window"]).count() == 1
    airflow_ui.screenshot(ui, "monitoring-index")
