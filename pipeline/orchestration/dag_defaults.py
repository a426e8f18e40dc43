"""Defaults shared by the project's DAGs (owner, retries, start date, one run at a time).

Standard library only: DAG files import it at parse time."""

import datetime as dt
from dataclasses import dataclass

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 1,
    "retry_delay": dt.timedelta(minutes=2),
}

#: Keyword arguments every project DAG passes to ``@dag``: no backfill of missed intervals, one
#: active run at a time (a run reads and writes the registry's aliases), the defaults above.
DAG_ARGS = {
    "start_date": dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
}


#: The asset whose events say "the champion may have changed" (a rollout finished, a rollback
#: was done): ``kmeans_publish`` is scheduled on it and republishes every customer's segment.
CHAMPION_ASSET = {"name": "customer_segments_champion",
                  "uri": "kmeans://customer_segments/champion"}

#: The asset whose events say "rows landed in the offline feature table": the ``land`` task of
#: each ``kmeans_ingest_<source>`` DAG emits it, with the source, the interval and the counts in
#: the event's extra; ``kmeans_training`` is scheduled on it as well as daily.
FEATURES_ASSET = {"name": "customer_segments_features",
                  "uri": "kmeans://customer_segments/features"}

@dataclass(frozen=True)
class IngestSource:
    """How a ``kmeans_ingest_<source>`` DAG runs: at the times of ``cron`` (UTC), each run
    landing the ``period`` that ended then; ``doc`` says what it lands."""

    cron: str
    period: dt.timedelta
    doc: str


#: The sources a ``kmeans_ingest_<source>`` DAG lands (dags/kmeans_ingest.py builds one DAG per
#: entry). A run triggered by hand without ``start`` and ``end`` lands the period that ended
#: last, on the same grid (whole days, whole hours).
INGEST_SOURCES = {
    "lake": IngestSource("@daily", dt.timedelta(days=1),
                         "the lake's Parquet day folders (``kmeans ingest``), whole days"),
    "sql": IngestSource("@hourly", dt.timedelta(hours=1),
                        "the PostgreSQL table or query of ``KMEANS_SQL_URL``, "
                        "``KMEANS_SQL_TABLE`` and ``KMEANS_SQL_WATERMARK``, by watermark "
                        "(``kmeans ingest-sql``); skipped while no source is configured"),
    "stream": IngestSource("@hourly", dt.timedelta(hours=1),
                           "the event stream (``KMEANS_STREAM_URL``, ``kmeans consume``), "
                           "drained until caught up or ``KMEANS_STREAM_DRAIN_SECONDS`` passed; "
                           "the rows reported are those landed whose event time is in the "
                           "interval"),
}
