"""Defaults shared by the project's DAGs (owner, retries).

Standard library only: DAG files import it at parse time."""

import datetime as dt

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 1,
    "retry_delay": dt.timedelta(minutes=2),
}
