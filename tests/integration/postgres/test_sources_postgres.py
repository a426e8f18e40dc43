"""The PostgreSQL source against the real local server (127.0.0.1:5432, user postgres, trust).

Each test gets its own schema, dropped afterwards. Rows come from the sample-data generator;
the bad ones break each kind of ingest rule a typed table can break.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.settings import FEATURE_NAMES
from pipeline.data import features
from pipeline.data.ingest import OFFLINE_COLUMNS, OFFLINE_TABLE, PART
from pipeline.data.sources import postgres as pg
from tests.helpers.clock import iso, iso_day, partition
from tests.helpers.homes import make_settings
from tests.helpers.sources import DAY0, SERVER, create_table, generated, insert

NOW = DAY0 + dt.timedelta(days=9)  # the clock the landings see


def bad_rows(good: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per rule (built from good rows), and the reasons expected."""
    base = good[good["event_timestamp"] > DAY0 + dt.timedelta(hours=1)].iloc[:9]
    base = base.copy().reset_index(drop=True)
    base["customer_id"] = base["customer_id"].astype("Int64")
    base.loc[0, "total_spend_30d"] = -5.0
    base.loc[1, "customer_id"] = pd.NA
    base.loc[2, "customer_id"] = -3
    base.loc[3, "event_timestamp"] = NOW + dt.timedelta(days=3)
    base.loc[4, FEATURE_NAMES] = np.nan
    base.loc[5, "discount_share"] = 1.5
    base.loc[6, "sessions_30d"] = np.inf
    base.loc[7, "event_timestamp"] = pd.NaT
    # an older version of the key of a good row (an earlier watermark): the latest one lands
    base.loc[8, "updated_at"] = base.loc[8, "updated_at"] - pd.Timedelta(seconds=1)
    base.loc[8, "tenure_days"] = 1.0
    reasons = {"total_spend_30d outside [0, 1e+06]": 1,
               "customer_id missing or not a positive integer": 2,
               "event_timestamp in the future": 1,
               "every feature is missing": 1,
               "discount_share outside [0, 1]": 1,
               "sessions_30d is not finite": 1,
               "event_timestamp missing or not a timestamp": 1,
               "duplicate (customer_id, event_timestamp)": 1}
    return base, reasons


def expected_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """What should land from source rows: the watermark becomes the creation time."""
    return frame.assign(customer_id=frame["customer_id"].astype("int64"),
                        created_timestamp=frame["updated_at"])[OFFLINE_COLUMNS]


def landed(settings, source: str) -> pd.DataFrame:
    files = sorted((settings.offline_dir / OFFLINE_TABLE).glob(f"day=*/sql-{source}-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def digests(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def test_good_rows_land_bad_ones_are_quarantined_and_a_rerun_is_identical(schema, settings):
    relation = create_table(schema, "activity")
    good = generated(days=3, customers=2800, seed=3)
    bad, reasons = bad_rows(good)
    insert(relation, pd.concat([good, bad], ignore_index=True))
    n = len(good) + len(bad)
    assert n > 5000
    lake_file = settings.offline_dir / OFFLINE_TABLE / partition(0) / PART
    lake_file.parent.mkdir(parents=True)
    lake_file.write_bytes(b"the lake ingest's own landing")
    start, end = DAY0, DAY0 + dt.timedelta(days=4)

    out = pg.land_interval(settings, "shop", SERVER, relation, "updated_at", start, end,
                           chunk_rows=1000, now=NOW)

    assert (out["rows"], out["accepted"], out["rejected"]) == (n, len(good), len(bad))
    assert out["reasons"] == reasons and sum(out["reasons"].values()) == out["rejected"]
    assert out["days"] == [iso_day(0), iso_day(1), iso_day(2)]
    assert out["checksum"] == pg.checksum(expected_rows(good))
    rows = landed(settings, "shop")
    assert pg.checksum(rows) == out["checksum"] and len(rows) == len(good)
    assert list(rows.columns) == OFFLINE_COLUMNS
    quarantine = pd.read_parquet(settings.rejected_dir / "sql" / "shop"
                                 / f"{start:%Y%m%dT%H%M%S%fZ}-{end:%Y%m%dT%H%M%S%fZ}.parquet")
    assert quarantine["reject_reason"].value_counts().to_dict() == reasons
    assert {"id", "updated_at"} <= set(quarantine.columns)  # kept as they arrived
    assert lake_file.read_bytes() == b"the lake ingest's own landing"

    before = digests(out["files"])
    again = pg.land_interval(settings, "shop", SERVER, relation, "updated_at", start, end,
                             chunk_rows=777, now=NOW)
    assert again == out and digests(again["files"]) == before

    # Fewer rows on a re-read (a day deleted upstream): its file goes, nothing stale stays.
    with psycopg.connect(SERVER) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE event_timestamp >= %s").format(
            sql.Identifier(*relation.split("."))), (DAY0 + dt.timedelta(days=2),))
    fewer = pg.land_interval(settings, "shop", SERVER, relation, "updated_at", start, end,
                             now=NOW)
    kept = good[good["event_timestamp"] < DAY0 + dt.timedelta(days=2)]
    assert fewer["days"] == [iso_day(0), iso_day(1)]
    assert pg.checksum(landed(settings, "shop")) == pg.checksum(expected_rows(kept))
    assert not list((settings.offline_dir / OFFLINE_TABLE).glob(f"{partition(2)}/*"))


def test_incremental_runs_pick_up_late_rows_without_duplicates(schema, settings):
    relation = create_table(schema, "activity")
    lag = dt.timedelta(hours=1)
    rows = generated(days=2, customers=1500, seed=5)
    now1 = DAY0 + dt.timedelta(days=1)  # the first run closes at now1 - lag
    # Rows committed by now1 (some with a watermark within the lag before it)
    first = rows[rows["updated_at"] < now1]
    insert(relation, first)

    one = pg.land_new(settings, "inc", SERVER, relation, "updated_at", lag=lag, now=now1)
    assert one["end"] == one["watermark"] == (now1 - lag).isoformat()
    assert one["start"] == first["updated_at"].min().isoformat()
    assert one["accepted"] == (first["updated_at"] < now1 - lag).sum()
    state = json.loads((settings.home / "sources" / "inc.json").read_text())
    assert state["watermark"] == (now1 - lag).isoformat()

    # Late rows: their watermark is before now1 (within the lag), they commit after run one.
    late = rows.iloc[:40].assign(
        event_timestamp=now1 - dt.timedelta(minutes=50), updated_at=now1 - dt.timedelta(minutes=30))
    # Too late: a watermark before the stored one, committed after it was stored.
    too_late = rows.iloc[40:41].assign(event_timestamp=now1 - dt.timedelta(hours=3),
                                       updated_at=now1 - dt.timedelta(hours=2))
    second = rows[rows["updated_at"] >= now1]
    insert(relation, pd.concat([late, too_late, second], ignore_index=True))
    now2 = DAY0 + dt.timedelta(days=2, hours=2)
    two = pg.land_new(settings, "inc", SERVER, relation, "updated_at", lag=lag, now=now2)
    assert (two["start"], two["end"]) == ((now1 - lag).isoformat(), (now2 - lag).isoformat())
    assert two["rejected"] == 0

    everything = pd.concat([first, late, second], ignore_index=True)
    got = landed(settings, "inc")
    assert not got.duplicated(["customer_id", "event_timestamp"]).any()
    assert len(got) == len(everything)
    assert pg.checksum(got) == pg.checksum(expected_rows(everything))

    assert pg.land_new(settings, "inc", SERVER, relation, "updated_at", lag=lag,
                       now=now2)["skipped"] == "nothing new yet"
    with pytest.raises(ValueError, match="partly overlaps"):
        pg.land_interval(settings, "inc", SERVER, relation, "updated_at",
                         now1 - dt.timedelta(hours=5), now1, now=now2)
    # The too-late row is picked up by re-reading its interval explicitly.
    redo = pg.land_interval(settings, "inc", SERVER, relation, "updated_at",
                            dt.datetime.fromisoformat(one["start"]), now1 - lag, now=now2)
    assert redo["accepted"] == one["accepted"] + 1
    got = landed(settings, "inc")
    assert len(got) == len(everything) + 1
    assert pg.checksum(got) == pg.checksum(expected_rows(
        pd.concat([everything, too_late], ignore_index=True)))
    # An interval containing landed ones replaces them.
    whole = pg.land_interval(settings, "inc", SERVER, relation, "updated_at",
                             DAY0 - dt.timedelta(days=1), now2 - lag, now=now2)
    assert len(whole["replaced"]) == 2
    assert pg.checksum(landed(settings, "inc")) == whole["checksum"] == pg.checksum(got)


def test_landed_rows_are_read_by_feast(schema, settings):
    relation = create_table(schema, "activity")
    good = generated(days=2, customers=600, seed=9)
    insert(relation, good)
    pg.land_interval(settings, "shop", SERVER, relation, "updated_at", DAY0,
                     DAY0 + dt.timedelta(days=3), now=NOW)
    features.apply_repo(settings)
    end = DAY0 + dt.timedelta(days=2)
    snap = features.training_snapshot(settings, DAY0, end)
    frame = pd.concat([pd.read_parquet(Path(snap.path) / f) for f in snap.files],
                      ignore_index=True)
    assert snap.rows == good["customer_id"].nunique() == len(frame)
    latest = (good.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last")
              .set_index("customer_id").sort_index()[FEATURE_NAMES])
    pd.testing.assert_frame_equal(
        frame.set_index("customer_id").sort_index()[FEATURE_NAMES], latest,
        check_names=False, check_dtype=False)


def test_a_query_source_and_the_cli(schema, settings):
    relation = create_table(schema, "activity")
    good = generated(days=1, customers=300, seed=1)
    insert(relation, good)
    query = (f"SELECT customer_id, event_timestamp, {', '.join(FEATURE_NAMES)}, updated_at "
             f"FROM {relation} WHERE customer_id % 2 = 0")
    done = CliRunner().invoke(app, [
        "ingest-sql", "--url", SERVER, "--table", query, "--watermark", "updated_at",
        "--start", iso_day(0), "--end", iso(1, hours=6), "--source", "even"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    even = good[good["customer_id"] % 2 == 0]
    assert out["accepted"] == len(even) and out["rejected"] == 0
    assert out["checksum"] == pg.checksum(expected_rows(even))

    done = CliRunner().invoke(app, ["ingest-sql", "--url", SERVER, "--table", relation,
                                    "--watermark", "updated_at", "--incremental",
                                    "--lag-seconds", "0"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert out["source"] == relation.replace(".", "_") and out["accepted"] == len(good)


def test_the_cli_takes_the_dags_source_from_the_settings(schema, settings, monkeypatch):
    """Without --url, --table and --watermark: the kmeans_ingest_sql DAG's source, from
    KMEANS_SQL_*; none set: one line naming what to give."""
    done = CliRunner().invoke(app, ["ingest-sql", "--start", iso_day(0), "--end", iso_day(1)])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert done.output.strip() == (
        "error: no SQL source: give --url (or KMEANS_SQL_URL), --table (or KMEANS_SQL_TABLE), "
        "--watermark (or KMEANS_SQL_WATERMARK)")
    relation = create_table(schema, "configured")
    good = generated(days=1, customers=200, seed=2)
    insert(relation, good)
    for name, value in (("URL", SERVER), ("TABLE", relation), ("WATERMARK", "updated_at"),
                        ("SOURCE", "configured")):
        monkeypatch.setenv(f"KMEANS_SQL_{name}", value)
    done = CliRunner().invoke(app, ["ingest-sql", "--start", iso_day(0),
                                    "--end", iso_day(2)])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert (out["source"], out["accepted"], out["rejected"]) == ("configured", len(good), 0)


@pytest.mark.parametrize(("url", "table", "column", "error", "text"), [
    ("postgresql://postgres:s3cret@127.0.0.1:1/postgres", "t", "updated_at",
     pg.SourceUnavailable, "cannot connect to PostgreSQL at "
                           "postgresql://postgres:***@127.0.0.1:1/postgres"),
    (SERVER, "no_such_table", "updated_at", ValueError, "refused reading 'no_such_table'"),
    (SERVER, "a.b.c", "updated_at", ValueError, "expected table or schema.table"),
    (SERVER, "t; DROP TABLE x", "updated_at", ValueError, "not a plain identifier"),
    (SERVER, "SELECT 1; DROP TABLE x", "updated_at", ValueError, "single statement"),
    (SERVER, "pg_class", "bad-name", ValueError, "watermark column 'bad-name'"),
])
def test_bad_sources_give_one_clear_error(url, table, column, error, text):
    with pytest.raises(error) as caught:
        next(pg.read_interval(url, table, column, DAY0, DAY0 + dt.timedelta(days=1)))
    assert text in str(caught.value) and "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_cli_reports_errors_as_one_line(settings):
    done = CliRunner().invoke(app, ["ingest-sql", "--url", "postgresql://u:pw@127.0.0.1:1/x",
                                    "--table", "t", "--watermark", "w", "--start", iso_day(0),
                                    "--end", iso_day(1)])
    assert done.exit_code == 2
    assert done.output.startswith("error: cannot connect to PostgreSQL at "
                                  "postgresql://u:***@127.0.0.1:1/x")
    assert "pw@" not in done.output


def test_redact_hides_passwords():
    assert pg.redact("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert pg.redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_settings_home_is_untouched_by_a_refused_interval(schema, tmp_path):
    s = make_settings(tmp_path / "home", ingest_max_reject_share=0.1)
    relation = create_table(schema, "activity")
    good = generated(days=1, customers=50, seed=2)
    insert(relation, good.assign(total_spend_30d=-1.0))
    with pytest.raises(pg.IntervalRefused, match="exceeds ingest_max_reject_share=0.1"):
        pg.land_interval(s, "shop", SERVER, relation, "updated_at", DAY0,
                         DAY0 + dt.timedelta(days=2), now=NOW)
    assert not list((s.offline_dir / OFFLINE_TABLE).glob("day=*/sql-*"))
    assert list((s.rejected_dir / "failed" / "sql" / "shop").glob("*-attempt.parquet"))
