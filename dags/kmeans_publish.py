"""kmeans_publish: every customer's current segment, published for applications.

A Spark job scores each customer's latest features with the champion and writes the
``customer_segment`` feature view (segment, distance, margin, OOD flag, model version, scored
at): the offline table ``<home>/offline/customer_segment/`` and, materialized, the online
store. Applications then read a customer's segment through Feast (``get_online_features`` with
``customer_segment:segment``, or ``feast serve``) without calling the model.

Scheduled on the champion asset (``kmeans://customer_segments/champion``): the training DAG's
``rollout`` (only when the champion moved), the rollback DAG's ``sync_server``, the promote
DAG and ``kmeans promote``/``kmeans rollback`` (through Airflow's API) emit it, so the segments
follow every promotion and rollback; a run for a champion that is published already is
skipped. Trigger it by hand to republish (``version``: score with another
registered version, e.g. to compare). ``kmeans publish-segments`` does the same from a shell.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline.orchestration.dag_defaults import CHAMPION_ASSET, DAG_ARGS
from pipeline.orchestration.params import dag_params
from pipeline.promotion.params import PublishParams


@dag(
    dag_id="kmeans_publish",
    schedule=[Asset(**CHAMPION_ASSET)],
    **DAG_ARGS,
    tags=["kmeans", "segments", "feast"],
    doc_md=__doc__,
    # The params come from one typed model (pipeline.promotion.params), the same that
    # types the CLI's options.
    params=dag_params(PublishParams),
)
def kmeans_publish():
    # A failed publication leaves the previous one online (a retry publishes anew). A run the
    # asset triggered is skipped when the champion is published already.
    @task
    def publish(params=None, **context) -> dict:
        from pipeline.orchestration import flow

        return flow.publish(params or {}, context)

    publish()


kmeans_publish()
