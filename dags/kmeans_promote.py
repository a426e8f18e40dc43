"""kmeans_promote: make a version champion by hand, from the UI.

The model's life in Airflow's UI: ``kmeans_training`` trains and registers a challenger (a
person approves it at the drift review when the data drifted), this DAG promotes it, and
``kmeans_rollback`` takes a promotion back. Trigger it with the defaults to promote the pending
challenger; ``version`` names another registered version. With ``canary`` and a rollout backend
(``KMEANS_ROLLOUT_BACKEND``), the version goes through the rollout's steps (shadow, traffic
shares) and is rolled back automatically at the first failed step; otherwise it is promoted at
once. Every alias move goes to the audit trail with the reason and the run as the actor; the
live server is then told, and ``sync_server`` emits the champion asset so that
``kmeans_publish`` republishes every customer's segment.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline.orchestration.dag_defaults import CHAMPION_ASSET, DAG_ARGS
from pipeline.orchestration.params import dag_params
from pipeline.promotion.params import PromoteParams


@dag(
    dag_id="kmeans_promote",
    schedule=None,
    **DAG_ARGS,
    tags=["kmeans", "promotion", "segmentation"],
    doc_md=__doc__,
    # The params come from one typed model (pipeline.promotion.params).
    params=dag_params(PromoteParams),
)
def kmeans_promote():
    @task  # a refused promotion (no such version, lock held, canary failed) fails at once
    def promote(params=None, run_id=None) -> dict:
        from pipeline.orchestration import flow

        return flow.promote(params or {}, actor=run_id)

    @task
    def ready_to_serve(promoted: dict) -> dict:
        from pipeline.orchestration import flow

        return flow.ready_to_serve({"version": promoted["champion"]})

    @task(outlets=[Asset(**CHAMPION_ASSET)])  # kmeans_publish republishes the segments
    def sync_server(promoted: dict) -> dict:
        from pipeline.orchestration import flow

        return flow.sync_server(promoted)

    promoted = promote()
    ready_to_serve(promoted) >> sync_server(promoted)


kmeans_promote()
