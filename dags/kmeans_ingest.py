"""kmeans_ingest_<source>: one interval of one source lands in the offline feature table.

One DAG per source (``INGEST_SOURCES`` in ``pipeline/orchestration/dag_defaults.py``), all
built by the factory below, all with one landing contract: the rows of one explicit interval
``[start, end)`` are validated by the ingest rules and land in
``<home>/offline/customer_profile/``, bad rows go to quarantine with the reason, and re-running
an interval gives the same files.

Each run lands the period that ended at its logical date (the data interval: a day for the
lake, an hour for the database and the stream); trigger it by hand with ``start`` and ``end``
(UTC) to (re)land any interval. The ``land`` task's return value and log give the counts
(landed, rejected and why, the quarantine files). Its success emits the features asset
(``kmeans://customer_segments/features``) with the source, the interval and the counts in the
event's extra, and ``kmeans_training`` is scheduled on that asset as well as daily: data
arrival trains. An interval without a row is skipped and emits nothing; so is the SQL source
while none is configured (``KMEANS_SQL_URL``, ``KMEANS_SQL_TABLE``, ``KMEANS_SQL_WATERMARK``).
"""

from __future__ import annotations

from airflow.sdk import Asset, CronTriggerTimetable, dag, task

from pipeline.data.params import IntervalParams
from pipeline.orchestration.dag_defaults import (
    DAG_ARGS,
    FEATURES_ASSET,
    INGEST_SOURCES,
    IngestSource,
)
from pipeline.orchestration.params import dag_params


def ingest_dag(source: str, spec: IngestSource) -> None:
    """The DAG ``kmeans_ingest_<source>``: its one task lands the run's interval."""

    @dag(
        dag_id=f"kmeans_ingest_{source}",
        # Runs at the cron's times, each landing the period that just ended.
        schedule=CronTriggerTimetable(spec.cron, timezone="UTC", interval=spec.period),
        **DAG_ARGS,
        tags=["kmeans", "ingest", source],
        doc_md=f"{__doc__}\nThis DAG lands {spec.doc}.",
        # The interval params come from one typed model (pipeline.data.params).
        params=dag_params(IntervalParams),
    )
    def kmeans_ingest():
        @task(outlets=[Asset(**FEATURES_ASSET)])  # kmeans_training trains on arrival
        def land(**context) -> dict:
            from pipeline.orchestration import flow

            return flow.land(source, context)

        land()

    kmeans_ingest()


for _source, _spec in INGEST_SOURCES.items():
    ingest_dag(_source, _spec)
