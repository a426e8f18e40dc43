"""kmeans_training: Feast features -> Great Expectations -> Spark K sweep -> MLflow.

Scheduled daily; trigger it by hand with params to change the K range, the sample, the
iterations, the seed or the window. Every task calls one function of ``pipeline.flow``; heavy
libraries are imported inside the tasks so the scheduler parses this file fast.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from pipeline.dag_defaults import DEFAULT_ARGS


@dag(
    dag_id="kmeans_training",
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["kmeans", "training", "segmentation"],
    doc_md=__doc__,
    params={
        "k_min": Param(2, type="integer", minimum=2, maximum=256, description="Smallest K."),
        "k_max": Param(8, type="integer", minimum=2, maximum=256, description="Largest K."),
        "sample_fraction": Param(1.0, type="number", exclusiveMinimum=0, maximum=1,
                                 description="Share of training rows used by the sweep."),
        "max_iter": Param(50, type="integer", minimum=1, maximum=1000,
                          description="Most Lloyd iterations per K."),
        "seed": Param(42, type="integer", minimum=0, description="Seed of init and sampling."),
        "n_init": Param(1, type="integer", minimum=1, maximum=20,
                        description="Initialisations per K (best inertia kept)."),
        "lookback_days": Param(7, type="integer", minimum=1, maximum=365,
                               description="Days of data that end at the interval end."),
        "end_date": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$",
                          description="Optional window end (YYYY-MM-DD); default: interval end."),
        "engine": Param("spark", enum=["spark", "local"], description="Spark or in-process."),
        "init": Param("k-means||", enum=["k-means||", "k-means++"],
                      description="Initialisation: k-means|| over all rows, or k-means++."),
        "empty_cluster": Param("farthest", enum=["farthest", "split"],
                               description="Policy for a centroid that loses all its points."),
    },
)
def kmeans_training():
    @task
    def window(**context) -> tuple[str, str]:
        from pipeline import flow

        return flow.interval(context)

    @task
    def ingest(window: tuple[str, str]) -> dict:
        from pipeline import flow

        return flow.ingest(window)

    @task
    def materialize(window: tuple[str, str]) -> dict:
        from pipeline import flow

        return flow.materialize(window)

    @task
    def snapshot(window: tuple[str, str]) -> str:
        from pipeline import flow

        return flow.snapshot(window)

    @task(retries=0)  # a bad batch stays bad: fail at once, keep the report
    def validate(snapshot_path: str) -> str:
        from pipeline import flow

        return flow.validate(snapshot_path)

    @task
    def train(snapshot_path: str, report: str, params=None) -> dict:
        from pipeline import flow

        return flow.train(snapshot_path, report, params)

    @task
    def evaluate(trained: dict, snapshot_path: str, params=None) -> dict:
        from pipeline import flow

        return flow.evaluate(trained, snapshot_path, params)

    @task
    def register(evaluated: dict) -> dict:
        from pipeline import flow

        return flow.register(evaluated)

    @task
    def ready_to_serve(registered: dict) -> dict:
        from pipeline import flow

        return flow.ready_to_serve(registered)

    span = window()
    landed = ingest(span)
    snap = snapshot(span)
    landed >> [snap, materialize(span)]
    report = validate(snap)
    trained = train(snap, report)
    ready_to_serve(register(evaluate(trained, snap)))


kmeans_training()
