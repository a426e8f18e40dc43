"""kmeans_rollback: move ``champion`` back to ``previous`` (or a named version), by hand.

Triggered by a person (or the monitoring that sees a freshly promoted model degrade) with a
reason; every alias move goes to the audit trail with it. Then the live server is told: where a
rollout backend is configured, the new champion becomes the stable version and any canary goes.

A pending ``challenger`` (registered, perhaps approved at a drift review, not yet rolled out)
is **kept** unless ``drop_challenger`` is set; it is removed anyway when it is the version rolled
back from or to. The ``rollback`` task's return value (XCom) and log say what happened to it.
"""

from __future__ import annotations

from airflow.sdk import Asset, Param, dag, task

from pipeline.orchestration.dag_defaults import CHAMPION_ASSET, DAG_ARGS


@dag(
    dag_id="kmeans_rollback",
    schedule=None,
    **DAG_ARGS,
    tags=["kmeans", "rollback", "segmentation"],
    doc_md=__doc__,
    params={
        "reason": Param("rolled back by hand from Airflow", type="string", minLength=1,
                        description="Why the champion is rolled back (kept in the audit trail)."),
        "to_version": Param(None, type=["null", "string"], pattern=r"^\d+$",
                            description="Version to return to; empty: the 'previous' alias."),
        "drop_challenger": Param(False, type="boolean",
                                 description="Also remove a pending challenger (kept by "
                                             "default)."),
    },
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
