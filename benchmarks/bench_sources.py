"""The PostgreSQL source: rows per second from a table into the offline store, beside a plain COPY.

Against the local PostgreSQL (127.0.0.1:5432, user postgres): 200,000 sample rows (the
generator's customers and days, ``total_spend_30d`` as ``numeric(12, 2)``, the rest ``double
precision``, an ``updated_at`` watermark) in a table of a schema made for the run and dropped
after it; the offline store in a temporary home. Each figure is the median of 3 runs.

- **land_interval**: what ``kmeans ingest-sql`` runs: the server-side cursor in chunks of 50,000,
  validation by the ingest rules per day, one Parquet file per day, the quarantine, the checksum.
- **read_interval only**: the same cursor read into pandas frames, nothing validated or written
  (where the time of the landing goes).
- **baseline**: what a user would otherwise write: ``COPY (SELECT ... WHERE updated_at in the
  interval) TO STDOUT (FORMAT csv)`` through psycopg's ``cursor.copy``, ``pandas.read_csv`` of
  it, ``DataFrame.to_parquet``: no validation, no quarantine, no idempotence.

    .venv/bin/python benchmarks/bench_sources.py            # about a minute

Writes benchmarks/results/sources.json and benchmarks/SOURCES.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.settings import FEATURE_NAMES, load_settings  # noqa: E402
from pipeline.data.datagen import generate_customers, period_rows  # noqa: E402
from pipeline.data.sources import postgres as pg  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sources.json"
REPORT = ROOT / "benchmarks" / "SOURCES.md"
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = ["customer_id", "event_timestamp", *FEATURE_NAMES, "updated_at"]
DAY0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def sample(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    customers = generate_customers(max(1000, rows // 6), rng)
    frames, total, day = [], 0, 0
    while total < rows:
        frame = period_rows(customers, (DAY0 + dt.timedelta(days=day)).date(), period=day,
                            seed=seed)
        frames.append(frame)
        total += len(frame)
        day += 1
    frame = pd.concat(frames, ignore_index=True).iloc[:rows]
    frame["event_timestamp"] = frame["event_timestamp"].dt.floor("us")
    frame["updated_at"] = (frame["event_timestamp"]
                           + pd.to_timedelta(rng.uniform(0, 600, len(frame)), unit="s")
                           ).dt.floor("us")
    return frame[COLUMNS]


def load(schema: str, frame: pd.DataFrame) -> str:
    cols = [sql.SQL("id bigserial PRIMARY KEY"), sql.SQL("customer_id bigint"),
            sql.SQL("event_timestamp timestamptz")]
    cols += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(
        "numeric(12, 2)" if n == "total_spend_30d" else "double precision"))
        for n in FEATURE_NAMES]
    cols.append(sql.SQL("updated_at timestamptz NOT NULL"))
    table = sql.Identifier(schema, "activity")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S.%f%z")
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(cols)))
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            table, sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
        with conn.cursor() as cur, cur.copy(copy) as out:
            out.write(buffer.getvalue())
        conn.execute(sql.SQL("CREATE INDEX ON {} (updated_at)").format(table))
        conn.execute(sql.SQL("ANALYZE {}").format(table))
    return f"{schema}.activity"


def copy_baseline(relation: str, start: dt.datetime, end: dt.datetime, out: Path) -> int:
    schema, table = relation.split(".")
    query = sql.SQL("COPY (SELECT {} FROM {} WHERE updated_at >= %s AND updated_at < %s) "
                    "TO STDOUT (FORMAT csv, HEADER)").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), sql.Identifier(schema, table))
    buffer = io.BytesIO()
    with psycopg.connect(SERVER) as conn, conn.cursor() as cur:
        with cur.copy(query, (start, end)) as copy:
            for block in copy:
                buffer.write(block)
    buffer.seek(0)
    frame = pd.read_csv(buffer, parse_dates=["event_timestamp", "updated_at"])
    frame.to_parquet(out, index=False)
    return len(frame)


def timed(fn) -> tuple[float, int]:
    began = time.perf_counter()
    rows = fn()
    return time.perf_counter() - began, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    frame = sample(args.rows)
    start, end = DAY0, DAY0 + dt.timedelta(days=int((frame["updated_at"].max() - DAY0).days) + 1)
    schema = f"kmeans_bench_{uuid.uuid4().hex[:8]}"
    relation = load(schema, frame)
    runs: dict[str, list[float]] = {"land": [], "read": [], "copy": []}
    counts: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="kmeans-bench-sources-") as tmp:
            settings = load_settings(home=Path(tmp) / "home")
            now = end + dt.timedelta(days=1)
            for _ in range(args.repeat):
                seconds, rows = timed(lambda: pg.land_interval(
                    settings, "bench", SERVER, relation, "updated_at", start, end,
                    now=now)["rows"])
                runs["land"].append(seconds)
                counts["land"] = rows
                seconds, rows = timed(lambda: sum(len(f) for f in pg.read_interval(
                    SERVER, relation, "updated_at", start, end)))
                runs["read"].append(seconds)
                counts["read"] = rows
                seconds, rows = timed(lambda: copy_baseline(relation, start, end,
                                                            Path(tmp) / "copy.parquet"))
                runs["copy"].append(seconds)
                counts["copy"] = rows
            landed = pg.land_interval(settings, "bench", SERVER, relation, "updated_at", start,
                                      end, now=now)
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    assert len(set(counts.values())) == 1, counts
    rows = counts["land"]
    with psycopg.connect(SERVER) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    results = {
        "rows": rows, "repeat": args.repeat, "accepted": landed["accepted"],
        "rejected": landed["rejected"], "days": len(landed["days"]),
        "chunk_rows": pg.DEFAULT_CHUNK_ROWS,
        "python": platform.python_version(), "postgresql": server,
        "cpus": len(os.sched_getaffinity(0)),
        "runs_seconds": runs,
        **{f"{k}_seconds": statistics.median(v) for k, v in runs.items()},
        **{f"{k}_rows_per_second": rows / statistics.median(v) for k, v in runs.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    REPORT.write_text(report(results))
    print(json.dumps(results, indent=2))


def table(r: dict) -> str:
    what = {
        "land": f"`land_interval` (`kmeans ingest-sql`): server-side cursor in chunks of "
                f"{r['chunk_rows']:,}, validation, Parquet per day, quarantine, checksum",
        "read": "`read_interval` only: the same cursor into pandas frames, nothing validated "
                "or written",
        "copy": "baseline: `COPY (SELECT ...) TO STDOUT (FORMAT csv)`, `pandas.read_csv`, "
                "`to_parquet`",
    }
    lines = ["| what | seconds | rows per second |", "| --- | ---: | ---: |"]
    lines += [f"| {text} | {r[f'{k}_seconds']:.3f} | {r[f'{k}_rows_per_second']:,.0f} |"
              for k, text in what.items()]
    return "\n".join(lines)


def report(r: dict) -> str:
    share = r["land_rows_per_second"] / r["copy_rows_per_second"]
    return f"""# PostgreSQL source: rows per second into the offline store

`benchmarks/bench_sources.py`, against the local PostgreSQL {r['postgresql']}; {r['cpus']} CPUs,
Python {r['python']}. {r['rows']:,} sample rows over {r['days']} days in one table (watermark
`updated_at`, indexed), read as one interval; median of {r['repeat']} runs. Figures in
`results/sources.json`.

{table(r)}

The landing runs at {share:.0%} of the plain COPY. The COPY baseline has no validation, no
quarantine, no per-day files, no checksum and no idempotent re-run. Both hold the interval's rows
in memory while writing (the landing reads them a chunk at a time, then validates and writes per
day).
"""


if __name__ == "__main__":
    main()
