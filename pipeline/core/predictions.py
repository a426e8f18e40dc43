"""The prediction log's layout in the lake: one folder of Parquet files per UTC hour, written
by the inference server (:mod:`pipeline.serving.predlog`) and read by the monitoring DAG."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HOUR_FORMAT = "%Y-%m-%dT%H"


def hour_folder(root: str | Path, when: datetime) -> Path:
    """The folder of the hour that holds ``when`` (UTC).

    Examples
    --------
    >>> hour_folder("/lake/predictions", datetime(2026, 11, 30, 14, 5, tzinfo=UTC)).name
    'hour=2026-11-30T14'
    """
    return Path(root) / f"hour={when.astimezone(UTC).strftime(HOUR_FORMAT)}"


def read_window(directory: str | Path, start: datetime, end: datetime) -> pa.Table | None:
    """The logged predictions with ``start <= time < end`` (UTC), or None if there are none.

    Examples
    --------
    >>> read_window("/lake/predictions", datetime(2026, 11, 30, 14, tzinfo=UTC),
    ...             datetime(2026, 11, 30, 15, tzinfo=UTC))  # doctest: +SKIP
    """
    folders = []
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour < end:
        folder = hour_folder(directory, hour)
        if folder.is_dir():
            folders.append(folder)
        hour += timedelta(hours=1)
    files = [f for folder in folders for f in sorted(folder.glob("part-*.parquet"))]
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    when = table["time"]
    keep = pc.and_(pc.greater_equal(when, pa.scalar(start, when.type)),
                   pc.less(when, pa.scalar(end, when.type)))
    table = table.filter(keep)
    return table if table.num_rows else None
