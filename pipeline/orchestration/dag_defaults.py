"""Defaults shared by the project's DAGs (owner, retries, start date, one run at a time).

Standard library only: DAG files import it at parse time."""

import datetime as dt

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
