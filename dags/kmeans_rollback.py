"""kmeans_rollback: move ``champion`` back to ``previous`` (or a named version), by hand.

Triggered by a person (or the monitoring that sees a freshly promoted model degrade) with a
reason; every alias move goes to the audit trail with it. Then the live server is told: where a
rollout backend is configured, the new champion becomes the stable version and any canary goes.

A pending ``challenger`` (registered, perhaps approved at a drift review, not yet rolled out)
is **kept** unless ``drop_challenger`` is set; it is removed anyway when it is the version rolled
back from or to. The ``rollback`` task's return value (XCom) and log say what happened to it.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline.orchestration.dag_defaults import CHAMPION_ASSET, DAG_ARGS
from pipeline.orchestration.params import dag_params
from pipeline.promotion.params import RollbackParams


@dag(
    dag_id="kmeans_rollback",
    schedule=None,
    **DAG_ARGS,
    tags=["kmeans", "rollback", "segmentation"],
    doc_md=__doc__,
    # The params come from one typed model (pipeline.promotion.params), the same that
    # types the CLI's options.
    params=dag_params(RollbackParams),
)
def kmeans_rollback():
    @task  # a refused rollback (nothing to return to, lock held) fails at once (flow.final)
    def rollback(params=None, run_id=None) -> dict:
        from pipeline.orchestration import flow

        return flow.rollback(params, actor=run_id)

    @task
    def ready_to_serve(rolled_back: dict) -> dict:
        from pipeline.orchestration import flow

        return flow.ready_to_serve({"version": rolled_back["champion"]})

    @task(outlets=[Asset(**CHAMPION_ASSET)])  # kmeans_publish republishes the segments
    def sync_server(rolled_back: dict) -> dict:
        from pipeline.orchestration import flow

        return flow.sync_server(rolled_back)

    rolled_back = rollback()
    ready_to_serve(rolled_back) >> sync_server(rolled_back)


kmeans_rollback()
