"""kmeans_monitoring: each hour, what production saw against the champion's reference.

The ``window`` task reads the inference server's prediction log for the hour that ended at
the run's logical date (or the ``start`` and ``end`` params, UTC; re-running a run recomputes
the same window) and compares the champion's rows with the reference sample it was trained
on: feature drift (Evidently, the training gate's column test) and cluster-aware drift (the
PSI of the segment shares, mean distance over the reference's, ood rate beyond the
training p99 distance, low-margin share, silhouette on a sample, per-cluster shares, distances
and profile moves). The figures go to a report and to the index of every window, served by
the project's Airflow plugin at ``/kmeans/reports/monitoring/index.html`` (the task's log
prints the report's link), to the MLflow experiment ``customer_segments-monitoring`` (one run
per window) and to the Prometheus exporter (``kmeans monitor-exporter``).

For ``KMEANS_WATCH_HOURS`` after a promotion, the ``watch`` task also judges the new champion:
ood rate, distance ratio and segment-share PSI against its own training (from the window),
error rate and p99 latency (from the server). Past a threshold it is rolled back to
``previous`` (registry lock, audit trail) and the server is told, as ``kmeans_rollback`` does.

A drifted window triggers ``kmeans_training`` with the reason in its conf, at most once per
cooldown (``KMEANS_MONITOR_RETRAIN_COOLDOWN_HOURS``), unless the watch just rolled back; each
action is recorded in ``<home>/audit/monitoring.jsonl`` with the figures that caused it.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from pipeline.data.params import IntervalParams
from pipeline.orchestration.dag_defaults import DAG_ARGS
from pipeline.orchestration.params import dag_params


@dag(
    dag_id="kmeans_monitoring",
    schedule="@hourly",
    **DAG_ARGS,
    tags=["kmeans", "monitoring", "segmentation"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    # The window params come from one typed model (pipeline.data.params).
    params=dag_params(IntervalParams),
)
def kmeans_monitoring():
    @task
    def window(**context) -> dict:
        from pipeline.orchestration import flow

        return flow.monitor(context)

    @task(retries=0)  # a rollback is not retried blindly; the next window judges again
    def watch(figures: dict, run_id=None) -> dict:
        from pipeline.orchestration import flow

        return flow.watch(figures, actor=f"kmeans_monitoring/{run_id}")

    @task.short_circuit
    def retrain_decision(figures: dict, watched: dict, run_id=None) -> dict | None:
        from pipeline.orchestration import flow

        return flow.retrain_decision(figures, actor=f"kmeans_monitoring/{run_id}",
                                     watched=watched)

    figures = window()
    decision = retrain_decision(figures, watch(figures))
    decision >> TriggerDagRunOperator(
        task_id="trigger_training", trigger_dag_id="kmeans_training",
        conf="{{ ti.xcom_pull(task_ids='retrain_decision') }}",
        trigger_run_id="monitoring__{{ run_id }}")


kmeans_monitoring()
