"""kmeans_training: Feast features -> Great Expectations -> Spark K sweep -> gates -> MLflow.

Scheduled daily, and on data arrival: a ``kmeans_ingest_<source>`` run that landed rows emits
the features asset, which triggers a run whose window ends at the newest landing's end (or the
hour the run was queued in); ``window`` logs the landings that triggered it and keeps them in
its XCom ``arrivals``. Trigger it by hand with params to change the K range, the sample, the
iterations, the seed or the window. Every task calls one function of
``pipeline.orchestration.flow``; heavy libraries are imported inside the tasks so the scheduler
parses this file fast.

After evaluate, the gates (data, quality, comparison, drift) run; a refusal fails ``gates`` and
nothing is registered. When the snapshot drifted from the champion's reference over the
threshold, ``drift_review`` waits for a person (Required Actions in the Airflow UI): its body
links the Evidently report, served by the project's Airflow plugin at ``/kmeans/reports/`` (all
reports, newest first: "K-means reports" in the navigation). Approve registers the model, Reject
skips the rest and the run ends cleanly. Under the threshold ``drift_review`` is skipped.

A task waits for what it reads: snapshot after ingest, materialize after snapshot (Feast refuses
reads of a view while it materializes), ready_to_serve after register and materialize. A
misspelt conf key or ``k_min > k_max`` fails ``window`` at once, without retries; a failure of
the infrastructure (an Airflow API call that timed out) is retried. ``rollout`` succeeds, and
so emits the champion asset that republishes the segments, only when the champion moved.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from pipeline.orchestration.dag_defaults import CHAMPION_ASSET, DAG_ARGS, FEATURES_ASSET
from pipeline.orchestration.params import dag_params
from pipeline.training.params import TrainParams, WindowParams


@dag(
    dag_id="kmeans_training",
    # Daily as "@daily" is (midnight UTC, no data interval of its own), or when a kmeans_ingest
    # DAG landed rows.
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC"),
                                 assets=Asset(**FEATURES_ASSET)),
    **DAG_ARGS,
    tags=["kmeans", "training", "segmentation"],
    doc_md=__doc__,
    params={
        # The training params come from typed models (pipeline.training.params): the sweep's,
        # the same that types the CLI's options, then the window's.
        **dag_params(TrainParams),
        **dag_params(WindowParams),
    },
)
def kmeans_training():
    # A bad param fails at once (flow.final: no retry can fix it); an infrastructure failure
    # (an Airflow API call that timed out on a busy box) takes the retries.
    @task
    def window(**context) -> tuple[str, str]:
        from pipeline.orchestration import flow

        return flow.interval(context)

    @task
    def ingest(window: tuple[str, str]) -> dict:
        from pipeline.orchestration import flow

        return flow.ingest(window)

    @task
    def materialize(window: tuple[str, str]) -> dict:
        from pipeline.orchestration import flow

        return flow.materialize(window)

    @task
    def snapshot(window: tuple[str, str]) -> str:
        from pipeline.orchestration import flow

        return flow.snapshot(window)

    @task  # a bad batch stays bad: it fails at once (flow.final), the report kept
    def validate(snapshot_path: str) -> str:
        from pipeline.orchestration import flow

        return flow.validate(snapshot_path)

    @task
    def train(snapshot_path: str, report: str, params=None) -> dict:
        from pipeline.orchestration import flow

        return flow.train(snapshot_path, report, params)

    @task
    def evaluate(trained: dict, snapshot_path: str, params=None) -> dict:
        from pipeline.orchestration import flow

        return flow.evaluate(trained, snapshot_path, params)

    @task  # a refused model stays refused: it fails at once (flow.final), figures logged
    def gates(evaluated: dict, snapshot_path: str, report: str) -> dict:
        from pipeline.orchestration import flow

        return flow.gates(evaluated, snapshot_path, report)

    @task.branch
    def needs_review(gated: dict) -> str:
        return "drift_review" if gated["review"] else "register"

    # Reject (or no answer in a day) skips everything downstream; the run still succeeds.
    drift_review = ApprovalOperator(
        task_id="drift_review",
        subject="Drift review: register the new customer segmentation model?",
        body="{{ ti.xcom_pull(task_ids='gates')['review_body'] }}",
        defaults="Reject",
        response_timeout=dt.timedelta(days=1),
        ignore_downstream_trigger_rules=True,
    )

    @task(trigger_rule="none_failed_min_one_success")  # also when drift_review was skipped
    def register(gated: dict, ti=None) -> dict:
        from pipeline.orchestration import flow

        return flow.register(gated, ti.xcom_pull(task_ids="drift_review"))

    @task
    def ready_to_serve(registered: dict, materialized: dict) -> dict:
        from pipeline.orchestration import flow

        return flow.ready_to_serve(registered)

    # Its success emits the champion asset: kmeans_publish republishes the segments. It succeeds
    # only when the champion moved (else it is skipped: no event); a rolled-back rollout fails
    # at once (flow.final).
    @task(outlets=[Asset(**CHAMPION_ASSET)])
    def rollout(registered: dict) -> dict:
        from pipeline.orchestration import flow

        return flow.rollout(registered)

    # A task waits for what it reads: snapshot reads the offline table ingest wrote; materialize
    # then refreshes the online store (Feast refuses reads of a view while it materializes, so
    # it waits for snapshot) beside validate and train; serving by customer id reads it.
    span = window()
    landed = ingest(span)
    snap = snapshot(span)
    landed >> snap
    online = materialize(span)
    snap >> online
    report = validate(snap)
    trained = train(snap, report)
    gated = gates(evaluate(trained, snap), snap, report)
    registered = register(gated)
    needs_review(gated) >> [drift_review, registered]
    drift_review >> registered
    ready_to_serve(registered, online) >> rollout(registered)


kmeans_training()
