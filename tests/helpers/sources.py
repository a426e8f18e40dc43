"""The sources' shared pieces: rows for the local PostgreSQL, events for the local Redis."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.datagen import generate_customers, period_rows
from tests.helpers.clock import BEGIN

REDIS_URL = "redis://127.0.0.1:6379/0"
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The first day of the SQL source's rows: the sample calendar's.
DAY0 = BEGIN
COLUMNS = ["customer_id", "event_timestamp", *FEATURE_NAMES, "updated_at"]


def event(i: int, customer: int, at: pd.Timestamp, **changes) -> dict:
    """A valid event; ``tenure_days`` = i marks which event a stored row came from. Event ids
    are unique across the module's tests (they share the event index): each test has its own
    customers."""
    values = {name: 1.0 for name in FEATURE_NAMES}
    values.update(tenure_days=float(i), total_spend_30d=10.0 + i % 97, mobile_share=0.5)
    return {"event_id": f"ev-{customer}-{i}", "customer_id": customer,
            "event_timestamp": at.isoformat(), **values, **changes}


def create_table(schema: str, table: str) -> str:
    # total_spend_30d as numeric: read back as float; the rest double precision.
    cols = [sql.SQL("id bigserial PRIMARY KEY"), sql.SQL("customer_id bigint"),
            sql.SQL("event_timestamp timestamptz")]
    cols += [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(
        "numeric(12, 2)" if n == "total_spend_30d" else "double precision"))
        for n in FEATURE_NAMES]
    cols.append(sql.SQL("updated_at timestamptz NOT NULL"))
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(
            sql.Identifier(schema, table), sql.SQL(", ").join(cols)))
    return f"{schema}.{table}"


def insert(relation: str, frame: pd.DataFrame) -> None:
    schema, table = relation.split(".")
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS)))
    with psycopg.connect(SERVER) as conn, conn.cursor() as cur, cur.copy(copy) as out:
        for row in frame[COLUMNS].itertuples(index=False):
            out.write_row([None if v is pd.NA or v is pd.NaT
                           or (isinstance(v, float) and np.isnan(v)) else v for v in row])


def generated(days: int, customers: int, seed: int, *, first: dt.datetime = DAY0,
              spread: float = 600.0) -> pd.DataFrame:
    """Sample rows of ``days`` days; the watermark ``updated_at`` follows the event by up to
    ``spread`` seconds. Times in microseconds, as PostgreSQL keeps them."""
    rng = np.random.default_rng(seed)
    people = generate_customers(customers, rng)
    frames = [period_rows(people, (first + dt.timedelta(days=d)).date(), period=d, seed=seed)
              for d in range(days)]
    frame = pd.concat(frames, ignore_index=True)
    frame["event_timestamp"] = frame["event_timestamp"].dt.floor("us")
    frame["updated_at"] = (frame["event_timestamp"]
                           + pd.to_timedelta(rng.uniform(0, spread, len(frame)), unit="s")
                           ).dt.floor("us")
    return frame[COLUMNS]
