"""The monitoring loop on real components: a champion registered in MLflow, the inference
server on a loopback socket logging its predictions, then monitoring windows over that log
(stationary, then drifted traffic) and the kmeans_monitoring DAG (dag.test) triggering
kmeans_training once per cooldown. And where a window's MLflow run keeps its report: under the
home, never under the working directory."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

import httpx
import numpy as np
import pytest

from pipeline.core.settings import FEATURE_NAMES
from tests.helpers.clock import BEGIN, DAYS, END, START, TODAY, at
from tests.helpers.homes import make_settings, shifted
from tests.helpers.processes import REPO


@pytest.fixture(scope="module")
def home(tmp_path_factory, airflow_db):
    """A lake of 1,500 customers x 3 days, a champion (version 1) trained on it."""
    import os

    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake
    from pipeline.promotion.register import register
    from pipeline.training import stages

    root = tmp_path_factory.mktemp("monitoring-home")
    previous = os.environ.get("KMEANS_HOME")
    os.environ["KMEANS_HOME"] = str(root)
    settings = make_settings(root)
    generate_lake(settings.lake_dir, n_customers=1500, start=START, days=DAYS, seed=5)
    ingest_lake(settings, BEGIN.date(), END.date())
    features.apply_repo(settings)
    features.materialize(settings, BEGIN - dt.timedelta(days=30), END)
    snap = features.training_snapshot(settings, BEGIN, END)
    trained = stages.train(settings, snap.path, {"k_min": 4, "k_max": 4, "engine": "local",
                                                 "max_iter": 30, "seed": 1})
    register(settings, trained["run_id"])
    yield root, snap.path
    if previous is None:
        os.environ.pop("KMEANS_HOME", None)
    else:
        os.environ["KMEANS_HOME"] = previous


def _post_rows(url: str, rows: np.ndarray, batch: int = 100) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for lo in range(0, len(rows), batch):
            part = rows[lo:lo + batch]
            data = [None if v != v else v for v in part.ravel().tolist()]  # NaN: null
            body = {"inputs": [{"name": "features", "datatype": "FP64",
                                "shape": list(part.shape), "data": data}]}
            reply = client.post("/v2/models/customer_segments/infer", json=body)
            assert reply.status_code == 200, reply.text


def test_drift_is_seen_reported_and_triggers_one_retraining(home, airflow_db):
    root, snapshot = home
    from pipeline import registry
    from pipeline.data.features import Snapshot
    from pipeline.devtools.airflow_env import load_dag
    from pipeline.monitoring.actions import read_actions
    from pipeline.monitoring.exporter import serve_in_thread
    from pipeline.monitoring.window import monitor_window, monitoring_dir, prometheus_path
    from pipeline.serving.server import build_app, running

    settings = make_settings(root)
    champion, _ = registry.download_model(settings, "champion")
    frame = Snapshot.load(snapshot).frame()
    rows = frame[FEATURE_NAMES].sample(3000, replace=True, random_state=0)
    app = build_app(settings, with_feast=False)
    app.prediction_log.flush_seconds = 0.2
    # The fixed pauses are gaps between the three windows of traffic, not waits: the server
    # writes every logged row when it stops, before the windows are read.
    with running(app) as url:
        t0 = dt.datetime.now(dt.UTC)
        _post_rows(url, rows.to_numpy(dtype=np.float64))
        time.sleep(0.5)
        t1 = dt.datetime.now(dt.UTC)
        _post_rows(url, shifted(rows).to_numpy(dtype=np.float64))
        time.sleep(0.5)
        t2 = dt.datetime.now(dt.UTC)
        # a new kind of customer, a third of the traffic: four times every figure
        novel = rows.copy()
        novel.iloc[::3] = novel.iloc[::3] * 4
        _post_rows(url, novel.to_numpy(dtype=np.float64))
        time.sleep(0.5)
        t3 = dt.datetime.now(dt.UTC)

    calm = monitor_window(settings, t0, t1)
    assert calm["status"] == "ok" and calm["rows"] == 3000, calm["reasons"]
    assert calm["segment_psi"] < 0.05 and 0.8 < calm["distance_ratio"] < 1.2
    drifted = monitor_window(settings, t1, t2)
    assert drifted["status"] == "drift" and drifted["rows"] == 3000
    assert drifted["feature_drift"]["drift_share"] > 0.3
    assert drifted["reasons"][0].startswith("feature_drift_share")
    assert len(drifted["clusters"]) == champion.k
    # the same segments, shifted: the cluster-aware figures hardly move
    assert drifted["segment_psi"] < 0.1 and drifted["distance_ratio"] < 1.25
    newcomers = monitor_window(settings, t2, t3)  # what feature drift alone underplays
    assert newcomers["status"] == "drift" and newcomers["rows"] == 3000
    assert newcomers["ood_rate"] > 0.2 and newcomers["distance_ratio"] > 1.25
    assert {r.split()[0] for r in newcomers["reasons"]} >= {"ood_rate", "distance_ratio"}
    print(json.dumps({w["window"]: {k: w.get(k) for k in (
        "reasons", "segment_psi", "distance_ratio", "ood_rate", "low_margin_share",
        "silhouette")} for w in (calm, drifted, newcomers)}, indent=1))

    folder = monitoring_dir(settings)
    index = (folder / "index.html").read_text()
    assert all(w["window"] in index for w in (calm, drifted, newcomers))
    assert (folder / drifted["report"]).read_text().count("<tr>") >= 6 + champion.k
    assert (folder / drifted["features_report"]).stat().st_size > 100_000  # Evidently's HTML
    runs = registry.client(settings).search_runs(
        [registry.client(settings).get_experiment_by_name(
            f"{settings.mlflow_experiment}-monitoring").experiment_id])
    assert {r.data.tags["status"] for r in runs} == {"ok", "drift"}
    [run] = [r for r in runs if r.info.run_id == drifted["mlflow_run_id"]]
    assert run.data.tags["report"] == f"monitoring/{drifted['report']}"
    assert _artifact_names(settings, run.info.run_id) == {
        drifted["report"], f"{drifted['window']}.json", drifted["features_report"]}
    _see_in_chromium(folder / "index.html", drifted["window"])
    server, exporter = serve_in_thread(prometheus_path(settings))
    try:
        scraped = httpx.get(f"{exporter}/metrics").text
    finally:
        server.shutdown()
    assert 'kmeans_monitor_drift{model_version="1"} 1.0' in scraped
    assert "kmeans_segment_share{" in scraped and "kmeans_ood_rate{" in scraped

    def run_monitoring():
        run = load_dag("kmeans_monitoring").test(
            logical_date=t2, run_conf={"start": t1.isoformat(), "end": t2.isoformat()})
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}

    first = run_monitoring()
    assert first == {"window": "success", "watch": "success", "retrain_decision": "success",
                     "trigger_training": "success"}, first
    second = run_monitoring()  # the same drift within the cooldown: no second trigger
    assert second["retrain_decision"] == "success" and second["trigger_training"] == "skipped"
    actions = read_actions(settings)
    assert len(actions) == 1 and actions[0]["window"] == drifted["window"]
    assert actions[0]["figures"]["distance_ratio"] == pytest.approx(drifted["distance_ratio"])
    triggered = _training_runs()
    assert [r["conf"]["reason"].startswith(f"monitoring window {drifted['window']} drifted")
            for r in triggered] == [True]


def _training_runs() -> list[dict]:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [{"run_id": r.run_id, "conf": r.conf}
                for r in session.query(DagRun).filter(DagRun.dag_id == "kmeans_training")
                .filter(DagRun.run_id.like("monitoring__%"))]


def _see_in_chromium(index, window: str) -> None:
    """The index and a window's report open in headless Chromium with no console error; the
    screenshots stay in test-artifacts/monitoring/."""
    from tests.helpers.airflow_ui import browser, screenshot

    errors: list[str] = []
    with browser(REPO / "test-artifacts" / "monitoring") as page:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index.as_uri())
        assert page.locator("tr").count() >= 4  # the header and the three windows
        screenshot(page, "index")
        page.get_by_role("link", name=window).click()
        page.wait_for_load_state()
        assert page.get_by_text("Status: drift").count() == 1, page.content()[:2000]
        screenshot(page, "drifted-window")
        page.get_by_role("link", name="Segment profile of version 1").click()
        page.wait_for_load_state()
        images = page.locator("img")
        assert images.count() >= 2  # the heatmap and the silhouette diagram
        assert all(images.nth(i).evaluate("i => i.complete && i.naturalWidth > 300")
                   for i in range(images.count()))
        screenshot(page, "champion-profile")
    assert errors == [], errors


def test_false_alarms_and_detection_delay_per_drift_kind(home):
    """20 stationary windows and 4 windows of each drift kind the generator injects, sent
    through the server and monitored: at most one false alarm; shift, new and vanished segments
    flagged in their first window; the slow trend within its windows."""
    root, _ = home
    from pipeline.data.datagen import generate_customers
    from pipeline.devtools.replay import sensitivity
    from pipeline.serving.server import build_app, running

    settings = make_settings(root)
    customers = generate_customers(1500, np.random.default_rng(5))  # the lake's population
    app = build_app(settings, with_feast=False)
    app.prediction_log.flush_seconds = 0.2
    t0 = time.monotonic()
    with running(app) as url:
        found = sensitivity(settings, url, customers, seed=5, stationary=20, per_kind=4)
    print(json.dumps({k: v for k, v in found.items() if k != "windows"}, indent=1),
          f"{time.monotonic() - t0:.1f} s")
    for w in found["windows"]:
        print(w["kind"], w["status"], w["rows"], "; ".join(w["reasons"]))
    assert found["failed_requests"] == 0
    # ~900 active customers a window; ~760 once the loyal big spenders (15%) are gone
    assert all(w["rows"] >= 700 for w in found["windows"])
    assert found["stationary_windows"] == 20 and found["false_alarms"] <= 1
    delays = found["detection_delay_windows"]
    assert delays["shift"] == delays["new_segment"] == delays["vanished_segment"] == 0, delays
    assert delays["trend"] is not None, delays
    # a vanished segment moves the segment shares far more than stationary noise does
    calm_psi = max(w["segment_psi"] for w in found["windows"] if w["kind"] == "stationary")
    vanished = [w for w in found["windows"] if w["kind"] == "vanished_segment"]
    assert all(w["segment_psi"] > 5 * calm_psi for w in vanished), (calm_psi, vanished)
    newcomers = [w for w in found["windows"] if w["kind"] == "new_segment"]
    assert all("ood_rate" in " ".join(w["reasons"]) for w in newcomers)


def test_a_degrading_new_champion_is_rolled_back_within_its_watch(home, airflow_db,
                                                                    monkeypatch):
    """Version 2 is promoted over version 1 and served; then a new kind of customer arrives.
    The kmeans_monitoring DAG's watch rolls version 2 back to version 1 through the registry
    and the server's admin API, while a client keeps calling: not one request fails."""
    import threading

    root, snapshot = home
    from pipeline import registry
    from pipeline.data.datagen import Drift, generate_customers, period_rows
    from pipeline.devtools.airflow_env import load_dag
    from pipeline.devtools.replay import post_rows, send_windows
    from pipeline.monitoring.actions import read_actions
    from pipeline.promotion.register import register
    from pipeline.serving.server import build_app, running
    from pipeline.training import stages

    admin = "watch-admin-token-0123456789"
    settings = make_settings(root)
    trained = stages.train(settings, snapshot, {"k_min": 5, "k_max": 5, "engine": "local",
                                                "max_iter": 30, "seed": 2})
    version = register(settings, trained["run_id"])["version"]
    registry.promote(settings, version, reason="test: a new champion", actor="test")
    assert registry.current_aliases(settings)["previous"] == "1"

    customers = generate_customers(1500, np.random.default_rng(5))
    day = TODAY  # the generator's timestamps; the server does not read them
    calm = period_rows(customers, day, period=3000, seed=5)[FEATURE_NAMES].to_numpy(float)
    arrivals = period_rows(customers, day, period=3001, seed=5,
                           drift=Drift("new_segment", start=3001))
    app = build_app(make_settings(root, admin_token=admin), with_feast=False,
                    canary_alias=None)
    app.prediction_log.flush_seconds = 0.2
    outcomes: list[int] = []
    stop = threading.Event()

    def keep_calling(url):
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                for lo in range(0, len(calm), 50):
                    failed = post_rows(client, settings.model_name, calm[lo:lo + 50], batch=50)
                    outcomes.append(failed)

    with running(app) as url:
        for name, value in {"KMEANS_ROLLOUT_BACKEND": "local", "KMEANS_ADMIN_TOKEN": admin,
                            "KMEANS_SERVING_URL": url, "KMEANS_WATCH_HOURS": "6"}.items():
            monkeypatch.setenv(name, value)
        state = httpx.get(f"{url}/admin/state",
                          headers={"Authorization": f"Bearer {admin}"}).json()
        assert state["routing"]["stable"] == version
        [sent] = send_windows(settings, url, [arrivals])
        caller = threading.Thread(target=keep_calling, args=(url,), daemon=True)
        caller.start()
        try:
            run = load_dag("kmeans_monitoring").test(
                logical_date=sent.end, run_conf={"start": sent.start.isoformat(),
                                                 "end": sent.end.isoformat()})
            # a fixed 0.5 s of calls after the move, on the restored version (tested below)
            time.sleep(0.5)
        finally:
            stop.set()
            caller.join(timeout=30)
        state = httpx.get(f"{url}/admin/state",
                          headers={"Authorization": f"Bearer {admin}"}).json()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {"window": "success", "watch": "success", "retrain_decision": "success",
                      "trigger_training": "skipped"}, states
    assert state["routing"]["stable"] == "1" and state["routing"]["canary"] is None, state
    assert len(outcomes) > 20 and sum(outcomes) == 0, (len(outcomes), sum(outcomes))
    assert registry.current_aliases(settings)["champion"] == "1"
    [entry] = [e for e in registry.read_audit(settings)
               if e["operation"] == "rollback" and e["alias"] == "champion"]
    assert entry["from_version"] == version and entry["to_version"] == "1"
    assert entry["actor"].startswith("rollout-controller/watch:kmeans_monitoring/")
    assert entry["reason"].startswith(f"watch after promotion: version {version} degraded")
    checks = entry["figures"]["checks"]
    assert not checks["ood_rate"]["ok"] and checks["ood_rate"]["value"] > 0.05
    assert checks["error_rate"]["value"] == 0.0 and checks["error_rate"]["ok"]
    [action] = [a for a in read_actions(settings) if a["action"] == "rollback"]
    assert action["champion_version"] == version and action["rolled_back_to"] == "1"
    assert action["server"]["stable"] == "1"


# ---------------------------------------------------------------- where the runs keep reports

def _artifact_names(settings, run_id: str) -> set[str]:
    from pipeline import registry
    from pipeline.monitoring.tracking import REPORT_ARTIFACTS

    listed = registry.client(settings).list_artifacts(run_id, REPORT_ARTIFACTS)
    return {a.path.removeprefix(f"{REPORT_ARTIFACTS}/") for a in listed}


def _local(uri: str):
    """The folder of a local artifact location: a ``file:`` URI or a plain path."""
    import urllib.parse
    import urllib.request
    from pathlib import Path

    if not uri.startswith("file:"):
        assert uri.startswith("/"), uri
        return Path(uri)
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def test_a_window_run_keeps_its_report_under_the_home_and_links_it(settings, tmp_path,
                                                                    monkeypatch):
    """Run from another working directory, a window's run is in the monitoring experiment
    whose artifacts are under ``<home>/mlartifacts/monitoring``; its artifacts are the window's
    HTML and JSON report (the files the reports app serves, byte for byte) and its tags say
    where the report is served. Nothing is written under the working directory. A re-run of the
    window is the same run with the same artifacts."""
    from pipeline import registry
    from pipeline.monitoring.tracking import REPORT_ARTIFACTS
    from pipeline.monitoring.window import monitor_window, monitoring_dir

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    served = "http://127.0.0.1:8080/kmeans/reports/"
    settings = settings.model_copy(update={"reports_url": served})
    figures = monitor_window(settings, at(1), at(1, hours=1))  # no champion yet: still a run
    assert figures["status"] == "no_champion"

    client = registry.client(settings)
    experiment = client.get_experiment_by_name(f"{settings.mlflow_experiment}-monitoring")
    root = settings.artifact_root / "monitoring"
    assert _local(experiment.artifact_location) == root
    run = client.get_run(figures["mlflow_run_id"])
    assert run.info.experiment_id == experiment.experiment_id
    assert _local(run.info.artifact_uri).is_relative_to(root)
    folder = monitoring_dir(settings)
    wid = figures["window"]
    assert _artifact_names(settings, run.info.run_id) == {f"{wid}.html", f"{wid}.json"}
    for name in (f"{wid}.html", f"{wid}.json"):
        copy = _local(run.info.artifact_uri) / REPORT_ARTIFACTS / name
        assert copy.read_bytes() == (folder / name).read_bytes()
        assert copy.stat().st_mode & 0o077 == 0  # owner-only, as the model's files
    assert json.loads((folder / f"{wid}.json").read_text())["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["report"] == f"monitoring/{wid}.html"
    assert run.data.tags["report_url"] == f"{served}monitoring/{wid}.html"

    again = monitor_window(settings.model_copy(update={"reports_url": None}),
                           at(1), at(1, hours=1))
    assert again["mlflow_run_id"] == run.info.run_id
    assert len(client.search_runs([experiment.experiment_id])) == 1
    rerun = client.get_run(run.info.run_id)
    assert rerun.data.tags["report_url"] == (folder / f"{wid}.html").as_uri()  # not served
    assert _artifact_names(settings, run.info.run_id) == {f"{wid}.html", f"{wid}.json"}
    assert list(cwd.iterdir()) == [], "MLflow wrote under the working directory"


def test_a_misplaced_monitoring_experiment_is_set_aside_and_not_written_to(settings, tmp_path,
                                                                           monkeypatch, caplog):
    """A store from before: its monitoring experiment was created without an artifact location,
    so MLflow put it at ``<cwd>/mlruns/<id>``. The next window renames it aside (its runs stay
    there), says so in a warning, and records its run in a new experiment under the home;
    nothing goes to the old location."""
    from mlflow import MlflowClient

    from pipeline import registry
    from pipeline.monitoring.window import monitor_window

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    name = f"{settings.mlflow_experiment}-monitoring"
    old_client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    old_id = old_client.create_experiment(name)  # what the earlier versions did
    old_location = _local(old_client.get_experiment(old_id).artifact_location)
    assert old_location == cwd / "mlruns" / old_id
    old_run = old_client.create_run(old_id, run_name="an earlier window").info.run_id

    with caplog.at_level(logging.WARNING, logger="pipeline.registry"):
        figures = monitor_window(settings, at(1), at(1, hours=1))

    client = registry.client(settings)
    experiment = client.get_experiment_by_name(name)
    assert experiment.experiment_id != old_id
    assert _local(experiment.artifact_location) == settings.artifact_root / "monitoring"
    aside = client.get_experiment(old_id)
    assert aside.name == f"{name}-misplaced-{old_id}"
    assert [r.info.run_id for r in client.search_runs([old_id])] == [old_run]
    run = client.get_run(figures["mlflow_run_id"])
    assert run.info.experiment_id == experiment.experiment_id
    assert f"{figures['window']}.html" in _artifact_names(settings, run.info.run_id)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pipeline.registry"]
    assert str(old_location) in warning and f"{name}-misplaced-{old_id}" in warning
    assert not (cwd / "mlruns").exists()
    # the next window finds the new experiment in its place: nothing renamed again
    monitor_window(settings, at(1, hours=1), at(1, hours=2))
    assert client.get_experiment_by_name(name).experiment_id == experiment.experiment_id
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert not (cwd / "mlruns").exists()
