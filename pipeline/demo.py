"""`make demo`: sample data, the training DAG end to end, the model served, predictions, one
monitoring window of the predictions."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

import grpc
import httpx
import numpy as np

from pipeline import registry
from pipeline.core.logs import quiet_dependencies
from pipeline.core.settings import Settings
from pipeline.data import features, ingest
from pipeline.data.datagen import default_start, generate_lake
from pipeline.data.features import feature_store, online_features
from pipeline.devtools import airflow_env
from pipeline.engine.session import stop_session
from pipeline.monitoring.window import monitor_window, monitoring_dir
from pipeline.serving import v2proto
from pipeline.serving.server import build_app, running

# The demo's dag.test() run keeps its Airflow state apart from the scheduler's (airflow.db):
# `make airflow-ui` afterwards shows only the runs its own scheduler made.
DAG_TEST_DB = "demo-dag-test.db"


def _say(step: str, text: str) -> None:
    print(f"\n== {step}: {text}", flush=True)


def run_demo(settings: Settings, *, customers: int = 20_000, days: int = 7, seed: int = 7) -> None:
    t0 = time.monotonic()
    airflow_env.prepare(settings, database=DAG_TEST_DB)  # before anything imports airflow
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG  # not `kmeans -v demo`
    if quiet:  # the demo prints its own progress: the stages' INFO lines would say it twice
        logging.getLogger("pipeline").setLevel(logging.WARNING)

    # The data ends yesterday: unpausing kmeans_training today finds its whole window.
    first = default_start(days)
    _say("1/6", f"generating {customers} customers x {days} days ({first} on) into "
                f"{settings.lake_dir}")
    lake = generate_lake(settings.lake_dir, n_customers=customers, start=first, days=days,
                         seed=seed)
    print(f"   {lake.rows} rows in {len(lake.days)} daily partitions")

    end = dt.datetime.combine(first + dt.timedelta(days=days), dt.time(), dt.UTC)
    start = end - dt.timedelta(days=days)
    _say("2/6", "landing the lake in the feature table, feast apply, materialize (SQLite)")
    landed = ingest.ingest_lake(settings, start.date(), end.date()).to_dict()
    print(f"   accepted {landed['accepted']} rows, rejected {landed['rejected']}")
    print(f"   feast objects: {features.apply_repo(settings)}")
    features.materialize(settings, start - dt.timedelta(days=30), end)

    _say("3/6", f"running DAG kmeans_training with dag.test() for the window ending {end:%Y-%m-%d}")
    dag = airflow_env.load_dag("kmeans_training")
    if quiet:
        quiet_dependencies()  # again: importing Airflow reset the warning filters
    run = dag.test(logical_date=end, run_conf={"lookback_days": days, "k_min": 2, "k_max": 8})
    # The train task's Spark session is done with: stopped here, in order, so that nothing
    # Spark writes on its way out lands after the demo's last line (see stop_session).
    stop_session()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print(f"   run {run.run_id}: {run.state}; tasks {json.dumps(states)}")
    if str(run.state) != "success":
        raise SystemExit(f"the training DAG ended {run.state}; see the task logs under "
                         f"{settings.home / 'airflow'}")
    registered = _latest_registration(settings)

    _say("4/6", "serving models:/customer_segments@champion on loopback")
    window = _serve_examples(settings)

    _say("5/6", "monitoring the window of those predictions (what kmeans_monitoring does "
                "each hour)")
    figures = monitor_window(settings, *window)
    print(f"   window {figures['window']}: {figures['status']}, {figures.get('rows', 0)} rows; "
          f"segment PSI {figures.get('segment_psi', float('nan')):.3f}, distance ratio "
          f"{figures.get('distance_ratio', float('nan')):.2f}, ood rate "
          f"{figures.get('ood_rate', float('nan')):.3f}")
    print(f"   report: {monitoring_dir(settings) / figures['report']}")
    print(f"   every window: {monitoring_dir(settings) / 'index.html'}")

    _say("6/6", f"where to look (demo took {time.monotonic() - t0:.0f} s)")
    print(f"   MLflow run {registered['run_id']}, model {settings.model_name} version "
          f"{registered['version']} (k={registered['k']}, silhouette {registered['silhouette']}):")
    if registered["why"]:
        print(f"     why k={registered['k']}: {registered['why']}")
    print(f"     make mlflow-ui   then open http://127.0.0.1:{settings.mlflow_ui_port}")
    print(f"   validation reports: {settings.reports_dir / 'validation'}")
    print(f"   drift reports:      {settings.reports_dir / 'drift'} (Evidently HTML, from the "
          f"second run on; gate figures in MLflow under gates/)")
    print(f"   rejected rows:      {settings.rejected_dir}")
    print(f"   alias audit trail:  {settings.home / 'audit' / 'aliases.jsonl'} (kmeans audit)")
    print(f"   Airflow UI:         make airflow-ui   then open {settings.airflow_url} (the "
          "DAGs of dags/; drift reviews wait there; this demo's dag.test() run is kept "
          f"apart, in airflow/{DAG_TEST_DB})")
    print("   promote, roll back: the kmeans_promote and kmeans_rollback DAGs, or kmeans "
          "promote / kmeans rollback")
    print("   serve and roll out: kmeans serve; kmeans rollout  (docs/serving.md, "
          "docs/promotion.md)")


def _latest_registration(settings: Settings) -> dict:
    version = registry.alias_version(settings, "challenger")
    tags = version.tags or {}
    why = registry.client(settings).get_run(version.run_id).data.tags.get("k_why")
    return {"run_id": version.run_id, "version": version.version, "k": tags.get("k"),
            "silhouette": tags.get("metric_silhouette"), "why": why}


def _grpc_example(settings: Settings, address: str, ids: list[int], headers: dict) -> None:
    """The same customers by id over gRPC (inference.GRPCInferenceService/ModelInfer), as
    KServe's InferenceGRPCClient or tritonclient.grpc would ask."""
    request = v2proto.ModelInferRequest(model_name=settings.model_name)
    request.inputs.add(name="customer_id", datatype="INT64", shape=[len(ids)])
    request.raw_input_contents.append(np.asarray(ids, "<i8").tobytes())
    request.outputs.add(name="cluster")
    metadata = [(k.lower(), v) for k, v in headers.items()]
    with grpc.insecure_channel(address) as channel:
        raw = channel.unary_unary(f"/{v2proto.SERVICE}/ModelInfer")(
            request.SerializeToString(), metadata=metadata, timeout=10)
    reply = v2proto.ModelInferResponse.FromString(raw)
    clusters = np.frombuffer(reply.raw_output_contents[0], "<i8").tolist()
    print(f"   gRPC ModelInfer on {address}  (by customer_id): clusters {clusters}, "
          f"version {reply.model_version}")


def _serve_examples(settings: Settings) -> tuple[dt.datetime, dt.datetime]:
    """A few predictions printed, then 2,000 customers scored by id; returns the interval the
    server's prediction log holds them in."""
    # gRPC on a free port beside REST (the Open Inference Protocol's other half)
    grpc_on = settings.model_copy(update={
        "serving": settings.serving.model_copy(update={"grpc_port": 0})})
    app = build_app(grpc_on)
    feature_names = app.service.feature_names
    headers = {}
    if settings.serving.serving_token:
        headers["Authorization"] = f"Bearer {settings.serving.serving_token.get_secret_value()}"
    ids = [100_001, 100_002, 100_003]
    rows = online_features(feature_store(settings), settings.feature_service, ids)
    # Missing values travel as null and are imputed by the model, as in training.
    vectors = [[None if v != v else float(v) for v in row]
               for row in rows[feature_names].to_numpy().tolist()]
    with running(app) as url, httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        print(f"   server {url}: ready={http.get('/v2/health/ready').json()['ready']}; gRPC on "
              f"127.0.0.1:{app.grpc.port if app.grpc else '-'}")
        body: dict = {"inputs": [{"name": "features", "datatype": "FP64",
                            "shape": [len(vectors), len(vectors[0])], "data": vectors}]}
        reply = http.post(f"/v2/models/{settings.model_name}/infer", json=body).json()
        print("   POST /v2/models/customer_segments/infer  (by feature vector)")
        for out in reply["outputs"]:
            print(f"     {out['name']:>9}: {out['data']}")
        print(f"     answered by version {reply['model_version']}")
        body = {"instances": [{"customer_id": i} for i in [*ids, 999]]}
        reply = http.post(f"/v1/models/{settings.model_name}:predict", json=body).json()
        print("   POST /v1/models/customer_segments:predict  (by customer_id, Feast online store)")
        for cid, pred in zip(body["instances"], reply["predictions"], strict=True):
            print(f"     customer {cid['customer_id']}: {json.dumps(pred)}")
        if app.grpc is not None:
            _grpc_example(settings, f"127.0.0.1:{app.grpc.port}", ids, headers)
        start = dt.datetime.now(dt.UTC)
        for first in range(100_000, 102_000, 250):
            body = {"instances": [{"customer_id": i} for i in range(first, first + 250)]}
            http.post(f"/v1/models/{settings.model_name}:predict", json=body).raise_for_status()
        print("   2,000 customers scored by id (the prediction log keeps what was asked)")
    return start, dt.datetime.now(dt.UTC)  # the log is written when the server stops
