"""DAG integrity, and real dag.test() runs of kmeans_training (success, validation failure, the
drift review rejected and approved) and of kmeans_rollback."""

import ast
import threading
import time
from pathlib import Path

import pytest

from pipeline.core.settings import PROJECT_ROOT
from tests.helpers.clock import BEGIN, DAYS, END, START
from tests.helpers.homes import make_settings, shifted

DAG_FILES = sorted((PROJECT_ROOT / "dags").glob("*.py"))
HEAVY = {"pyspark", "pandas", "numpy", "great_expectations", "mlflow", "evidently", "feast",
         "sklearn", "scipy", "pyarrow"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_import_no_heavy_library_at_top_level(path):
    tree = ast.parse(path.read_text())
    top = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.append(node.module.split(".")[0])
    assert not HEAVY & set(top), f"{path.name} imports {HEAVY & set(top)} at top level"


def test_dagbag_has_no_import_errors_and_every_dag_is_tagged_and_owned(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(PROJECT_ROOT / "dags"))
    assert not bag.import_errors
    assert "kmeans_training" in bag.dag_ids
    for dag_id, dag in bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        owners = {t.owner for t in dag.tasks}
        assert owners and "airflow" not in owners, f"{dag_id} owners {owners}"


def test_training_dag_is_daily_or_on_data_arrival_with_params(airflow_db):
    from airflow.sdk import Asset, AssetOrTimeSchedule

    from pipeline.devtools.airflow_env import load_dag
    from pipeline.orchestration.dag_defaults import FEATURES_ASSET

    dag = load_dag("kmeans_training")
    assert isinstance(dag.schedule, AssetOrTimeSchedule)
    assert dag.schedule.timetable.expression == "0 0 * * *"  # @daily
    assert dag.schedule.asset_condition == Asset(**FEATURES_ASSET)  # a kmeans_ingest landing
    assert {"k_min", "k_max", "sample_fraction", "max_iter", "seed"} <= set(dag.params)


def test_rollback_dag_is_manual_with_a_reason(airflow_db):
    from pipeline.devtools.airflow_env import load_dag

    dag = load_dag("kmeans_rollback")
    assert dag.schedule is None
    assert {"reason", "to_version", "drop_challenger"} <= set(dag.params)
    # Every param has a default the trigger form accepts: a plain "Trigger" works.
    dag.params.validate()
    assert dag.params["drop_challenger"] is False


def _champion_events(run) -> int:
    """How many champion asset events (kmeans_publish's trigger) the DAG run emitted."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from pipeline.orchestration.dag_defaults import CHAMPION_ASSET

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(AssetEvent).join(
            AssetModel, AssetEvent.asset_id == AssetModel.id).where(
            AssetModel.uri == CHAMPION_ASSET["uri"], AssetEvent.source_run_id == run.run_id))


def test_promote_dag_is_manual_and_its_defaults_promote_the_challenger(airflow_db):
    from pipeline.devtools.airflow_env import load_dag

    dag = load_dag("kmeans_promote")
    assert dag.schedule is None
    dag.params.validate()  # a plain "Trigger" works
    assert (dag.params["version"], dag.params["canary"]) == (None, True)
    assert [t.task_id for t in dag.topological_sort()] == ["promote", "ready_to_serve",
                                                           "sync_server"]


def test_training_dag_gates_then_reviews_drift_before_registering(airflow_db):
    from pipeline.devtools.airflow_env import load_dag

    dag = load_dag("kmeans_training")
    assert dag.get_task("gates").upstream_task_ids == {"evaluate", "snapshot", "validate"}
    assert dag.get_task("needs_review").downstream_task_ids == {"drift_review", "register"}
    assert dag.get_task("register").upstream_task_ids == {"gates", "needs_review",
                                                          "drift_review"}
    assert type(dag.get_task("drift_review")).__name__ == "ApprovalOperator"
    assert dag.get_task("ready_to_serve").upstream_task_ids == {"register", "materialize"}


def test_training_dag_tasks_wait_for_what_they_read(airflow_db):
    """No races: snapshot reads what ingest landed, and Feast refuses reads of a feature view
    while it materializes, so materialize waits for snapshot (it once raced it)."""
    from pipeline.devtools.airflow_env import load_dag

    dag = load_dag("kmeans_training")
    assert dag.get_task("snapshot").upstream_task_ids == {"window", "ingest"}
    assert dag.get_task("materialize").upstream_task_ids == {"window", "snapshot"}


def _lake(home: Path, **kw):
    from pipeline.data.datagen import generate_lake

    settings = make_settings(home)
    generate_lake(settings.lake_dir, n_customers=1200, start=START, days=DAYS, seed=21, **kw)
    return settings


def _run(conf=None):
    from pipeline.devtools.airflow_env import load_dag

    run = load_dag("kmeans_training").test(
        logical_date=END, run_conf={"lookback_days": DAYS, "k_min": 2, "k_max": 5,
                                    "max_iter": 25, **(conf or {})})
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_full_dag_run_registers_a_version_with_metrics_and_alias(airflow_db, tmp_path,
                                                                 monkeypatch):
    from pipeline import registry

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    settings = _lake(tmp_path)
    run, states = _run()
    assert str(run.state) == "success", states
    assert states.pop("drift_review") == "skipped", "no champion: no drift to review"
    assert set(states.values()) == {"success"}
    assert _champion_events(run) == 1, "the first version is the champion: publish it"
    champion = registry.alias_version(settings, "champion")
    challenger = registry.alias_version(settings, "challenger")
    assert champion is not None and str(champion.version) == str(challenger.version) == "1"
    assert 2 <= int(champion.tags["k"]) <= 5
    metrics = registry.client(settings).get_run(champion.run_id).data.metrics
    for name in ("chosen_silhouette", "chosen_davies_bouldin", "chosen_calinski_harabasz",
                 "chosen_stability", "chosen_inertia", "holdout_challenger_silhouette"):
        assert name in metrics, name
    nested = registry.client(settings).search_runs(
        [registry.configure(settings)],
        filter_string=f"tags.`mlflow.parentRunId` = '{champion.run_id}'")
    assert len(nested) == 4, "one nested run per K in 2..5"
    assert [e["alias"] for e in registry.read_audit(settings)] == ["challenger", "champion"]
    model, version = registry.download_model(settings, "champion")
    assert version == "1" and model.k == int(champion.tags["k"])

    # A second run over the same interval is idempotent up to the registry: same snapshot,
    # a new challenger version, champion unchanged.
    run2, states2 = _run()
    assert str(run2.state) == "success", states2
    assert str(registry.alias_version(settings, "champion").version) == "1"
    second = registry.alias_version(settings, "challenger")
    assert str(second.version) == "2" and second.tags["data_hash"] == champion.tags["data_hash"]
    # Same data and seed: the challenger's clusters match the champion's one to one.
    second_metrics = registry.client(settings).get_run(second.run_id).data.metrics
    assert second_metrics["holdout_assignment_agreement"] == 1.0
    matched, _ = registry.download_model(settings, "challenger")
    assert matched.metadata["matched_to_version"] == "1"
    assert sorted(matched.cluster_ids.tolist()) == list(range(matched.k))


def test_bad_batch_stops_at_validation_and_registers_nothing(airflow_db, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    from pipeline import registry

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    settings = _lake(tmp_path, missing_share=0.4)  # tracking gap: 40% nulls in four features
    run, states = _run()
    assert str(run.state) == "failed"
    assert states["validate"] == "failed"
    assert states["snapshot"] == "success"
    for task in ("train", "evaluate", "gates", "drift_review", "register", "ready_to_serve"):
        assert states[task] == "upstream_failed", (task, states)
    reports = list((settings.reports_dir / "validation").glob("*.html"))
    assert reports and "FAILED" in reports[0].read_text()
    try:
        versions = registry.client(settings).search_model_versions(
            f"name='{settings.model_name}'")
    except MlflowException:
        versions = []
    assert versions == []


def _shift_lake(settings) -> None:
    """Rewrite the lake's partitions with another population (see ``shifted``)."""
    import pandas as pd

    for part in sorted(settings.lake_dir.glob("*/day=*/*.parquet")):
        shifted(pd.read_parquet(part)).to_parquet(part, index=False)


class _Reviewer(threading.Thread):
    """A person at the Required Actions page: once the run's drift_review task waits for input,
    read the request and answer it through Airflow's own REST API (the api-server's routes in
    process, sharing the test's metadata DB)."""

    def __init__(self, choice: str):
        super().__init__(daemon=True)
        self.choice, self.done, self.request, self.error = choice, threading.Event(), None, None

    def run(self):
        try:
            self._answer()
        except Exception as err:  # reported by the test, not lost in the thread
            self.error = err

    def _waiting_run_id(self):
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        while not self.done.is_set():
            with create_session() as session:
                ti = session.scalar(select(TaskInstance).where(
                    TaskInstance.dag_id == "kmeans_training",
                    TaskInstance.task_id == "drift_review",
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT))
                if ti is not None:
                    return ti.run_id
            time.sleep(0.5)
        return None

    def _answer(self):
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        run_id = self._waiting_run_id()
        if run_id is None:
            return
        url = (f"/api/v2/dags/kmeans_training/dagRuns/{run_id}/taskInstances/drift_review/-1/"
               "hitlDetails")
        with TestClient(create_app(apps="core")) as api:
            self.request = api.get(url).json()
            answer = api.patch(url, json={"chosen_options": [self.choice], "params_input": {}})
            answer.raise_for_status()


def _run_reviewed(choice: str, conf: dict):
    reviewer = _Reviewer(choice)
    reviewer.start()
    try:
        run, states = _run(conf)
    finally:
        reviewer.done.set()
        reviewer.join(60)
    assert reviewer.error is None, reviewer.error
    return run, states, reviewer.request


def test_drift_review_reject_ends_cleanly_approve_registers_and_rollback_dag(
        airflow_db, tmp_path, monkeypatch):
    from pipeline import registry
    from pipeline.data import features
    from pipeline.data.ingest import ingest_lake
    from pipeline.data.validation import validate_snapshot
    from pipeline.devtools.airflow_env import load_dag
    from pipeline.promotion import gates
    from pipeline.promotion.register import register
    from pipeline.training import stages

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    # The shifted population's clusters are looser than the champion's, so the comparison gate
    # may refuse the challenger (it does since greedy seeding); that gate is not the subject.
    monkeypatch.setenv("KMEANS_GATE_COMPARISON_TOLERANCE", "1.0")
    settings = _lake(tmp_path)
    conf = {"engine": "local"}
    # The champion, staged by the same functions the tasks call: version 1 with its reference.
    ingest_lake(settings, BEGIN.date(), END.date())
    features.apply_repo(settings)
    snap = features.training_snapshot(settings, BEGIN, END).path
    report = validate_snapshot(settings, features.Snapshot.load(snap)).report_html
    trained = stages.train(settings, snap, {"k_min": 2, "k_max": 5, "max_iter": 25,
                                            "engine": "local"})
    stages.evaluate(settings, trained["run_id"], snap)
    strict = settings.model_copy(update={"gate_min_silhouette_lo": 0.9})
    with pytest.raises(gates.GateRefused, match=r"quality gate refused: silhouette CI lower "
                                                 r"bound 0\.\d{3} < threshold 0\.9"):
        gates.check(strict, trained["run_id"], snap, report)
    with pytest.raises(gates.GateRefused, match="quality gate refused"):
        register(settings, trained["run_id"])  # the logged refusal stands
    first = gates.check(settings, trained["run_id"], snap, report)
    assert first["passed"] and not first["review"], first["refused"]
    assert register(settings, trained["run_id"])["version"] == "1"

    _shift_lake(settings)  # the next run's customers come from another population

    run, states, request = _run_reviewed("Reject", conf)
    assert str(run.state) == "success", states
    assert states["gates"] == states["needs_review"] == states["drift_review"] == "success"
    assert states["register"] == states["ready_to_serve"] == "skipped"
    assert request["subject"].startswith("Drift review")
    report_path = request["body"].split("Evidently report: `")[1].split("`")[0]
    assert Path(report_path).exists() and Path(report_path).parent == settings.reports_dir / "drift"
    assert "is over the threshold 0.3" in request["body"]
    # the segment profiles of the champion and the challenger, side by side
    profiles = Path(request["body"].split("and of this candidate, side by side: `")[1]
                    .split("`")[0])
    assert profiles == settings.reports_dir / "profiles" / (
        f"run-{request['body'].split('of run `')[1].split('`')[0]}-vs-champion-1.html")
    assert profiles.exists() and 'src="version-1/heatmap.png"' in profiles.read_text()
    assert registry.current_aliases(settings) == {"champion": "1", "challenger": "1",
                                                  "previous": None}

    run, states, request = _run_reviewed("Approve", conf)
    assert str(run.state) == "success", states
    # No rollout backend here: the challenger waits, the champion did not move, so rollout is
    # skipped and emits no champion asset event (no republication of unchanged segments).
    assert states.pop("rollout") == "skipped", states
    assert set(states.values()) == {"success"}, states
    assert _champion_events(run) == 0
    assert registry.current_aliases(settings) == {"champion": "1", "challenger": "2",
                                                  "previous": None}
    version = registry.model_version(settings, "2")
    assert version.tags["gate_drift"] == "review" and version.tags["gate_quality"] == "passed"
    assert version.tags["reference"].endswith("/reference/features.parquet")
    gated = registry.client(settings).get_run(version.run_id)
    assert gated.data.metrics["drift_share"] > 0.3
    assert {a.path for a in registry.client(settings).list_artifacts(version.run_id, "gates")} \
        == {f"gates/{g}.json" for g in ("data", "quality", "comparison", "drift")}
    entry = registry.read_audit(settings)[-1]
    assert (entry["alias"], entry["to_version"]) == ("challenger", "2")
    assert entry["figures"]["drift_review"]["chosen"] == ["Approve"]
    assert entry["figures"]["gates"]["drift"]["drift_share"] > 0.3
    assert entry["figures"]["profile"]["report"] == str(
        settings.reports_dir / "profiles" / "version-2" / "profile.html")

    # The promote DAG with its defaults promotes the challenger (at once: no rollout backend)
    # and emits the champion asset; then the rollback DAG takes it back.
    promoted = load_dag("kmeans_promote").test(run_conf={"reason": "reviewed by the team"})
    assert str(promoted.state) == "success"
    assert registry.current_aliases(settings) == {"champion": "2", "challenger": None,
                                                  "previous": "1"}
    entry = [e for e in registry.read_audit(settings) if e["alias"] == "champion"][-1]
    assert (entry["operation"], entry["to_version"], entry["actor"], entry["reason"]) == (
        "promotion", "2", promoted.run_id, "reviewed by the team")
    assert entry["figures"]["gates"]["drift"]["drift_share"] > 0.3
    assert _champion_events(promoted) == 1
    rollback = load_dag("kmeans_rollback").test(run_conf={"reason": "segment shares jumped"})
    assert str(rollback.state) == "success"
    assert registry.current_aliases(settings) == {"champion": "1", "challenger": None,
                                                  "previous": None}
    entry = registry.read_audit(settings)[-2]
    assert (entry["operation"], entry["alias"], entry["from_version"], entry["to_version"]) == (
        "rollback", "champion", "2", "1")
    assert entry["reason"] == "segment shares jumped" and entry["actor"] == rollback.run_id
