"""DAG integrity, and real dag.test() runs of kmeans_training (success and validation failure)."""

import ast
import datetime as dt
from pathlib import Path

import pytest

from pipeline.settings import PROJECT_ROOT
from tests.conftest import BEGIN, DAYS, END, START, make_settings

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


def test_training_dag_is_daily_with_params(airflow_db):
    from pipeline.airflow_env import load_dag

    dag = load_dag("kmeans_training")
    assert dag.schedule == "@daily"
    assert {"k_min", "k_max", "sample_fraction", "max_iter", "seed"} <= set(dag.params)


def _lake(home: Path, **kw):
    from pipeline.datagen import generate_lake

    settings = make_settings(home)
    generate_lake(settings.lake_dir, n_customers=1200, start=START, days=DAYS, seed=21, **kw)
    return settings


def _run(conf=None):
    from pipeline.airflow_env import load_dag

    run = load_dag("kmeans_training").test(
        logical_date=END, run_conf={"lookback_days": DAYS, "k_min": 2, "k_max": 5,
                                    "max_iter": 25, **(conf or {})})
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


@pytest.mark.integration
def test_full_dag_run_registers_a_version_with_metrics_and_alias(airflow_db, tmp_path,
                                                                 monkeypatch):
    from pipeline import registry

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    settings = _lake(tmp_path)
    run, states = _run()
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}
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


@pytest.mark.integration
def test_bad_batch_stops_at_validation_and_registers_nothing(airflow_db, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    from pipeline import registry

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    settings = _lake(tmp_path, missing_share=0.4)  # tracking gap: 40% nulls in four features
    run, states = _run()
    assert str(run.state) == "failed"
    assert states["validate"] == "failed"
    assert states["snapshot"] == "success"
    for task in ("train", "evaluate", "register", "ready_to_serve"):
        assert states[task] == "upstream_failed", (task, states)
    reports = list((settings.reports_dir / "validation").glob("*.html"))
    assert reports and "FAILED" in reports[0].read_text()
    try:
        versions = registry.client(settings).search_model_versions(
            f"name='{settings.model_name}'")
    except MlflowException:
        versions = []
    assert versions == []
