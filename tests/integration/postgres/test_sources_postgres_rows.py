"""Issue 23, the PostgreSQL source against the real local server: no row is lost (3), a value
Python cannot hold quarantines its row instead of stopping the source (8), a query cannot
escape its interval (9), and dates outside the accepted range are quarantined (10).

Each test has its own schema (the ``schema`` fixture), dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from psycopg import sql
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.ingest import OFFLINE_TABLE
from pipeline.data.sources import postgres as pg
from tests.helpers import rows
from tests.helpers.clock import iso_day
from tests.helpers.homes import make_settings
from tests.helpers.sources import DAY0, SERVER, create_table, generated, insert

NOW = DAY0 + dt.timedelta(days=9)  # the clock the landings see
TEXT_COLUMNS = ["customer_id", "event_timestamp", *FEATURE_NAMES, "updated_at"]


def _text_table(schema: str, table: str) -> str:
    """A relation whose event_timestamp is text, as an application that stores what it was
    sent would have it."""
    features = sql.SQL(", ").join(sql.SQL("{} double precision").format(sql.Identifier(n))
                                  for n in FEATURE_NAMES)
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, customer_id bigint, "
                             "event_timestamp text, {}, updated_at timestamptz NOT NULL)"
                             ).format(sql.Identifier(schema, table), features))
    return f"{schema}.{table}"


def _copy(relation: str, frame: pd.DataFrame, columns: list[str]) -> None:
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(*relation.split(".")), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with psycopg.connect(SERVER) as conn, conn.cursor() as cur, cur.copy(copy) as out:
        for row in frame[columns].itertuples(index=False):
            out.write_row([None if pd.isna(v) else v for v in row])


def _execute(statement: str, relation: str, *params) -> None:
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(*relation.split("."))), params)


def _landed_files(settings, source: str) -> list[Path]:
    return sorted((settings.offline_dir / OFFLINE_TABLE).glob(f"day=*/sql-{source}-*.parquet"))


def _quarantine(settings, source: str) -> pd.DataFrame:
    files = sorted((settings.rejected_dir / "sql" / source).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


# ---------------------------------------------------------------- 3: no row lost


def test_text_times_with_and_without_offsets_all_land_from_the_cli(schema, settings):
    """The reproducer: 100 rows whose text event_timestamp mixes +05:00, Z and naive values
    gave {"rows": 100, "accepted": 67, "rejected": 0}: 33 rows were nowhere."""
    relation = _text_table(schema, "events")
    specs = [("valid", 600 * i, ("+05:00", "naive", "Z")[i % 3]) for i in range(100)]
    frame, _ = rows.build(specs, DAY0)
    frame["updated_at"] = [DAY0 + dt.timedelta(seconds=600 * i + 5) for i in range(100)]
    _copy(relation, frame, TEXT_COLUMNS)

    done = CliRunner().invoke(app, ["ingest-sql", "--url", SERVER, "--table", relation,
                                    "--watermark", "updated_at", "--start", iso_day(0),
                                    "--end", iso_day(1), "--source", "text"])

    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert (out["rows"], out["accepted"], out["rejected"]) == (100, 100, 0)
    landed = pd.concat([pd.read_parquet(f) for f in _landed_files(settings, "text")])
    assert sorted(landed["event_timestamp"]) == sorted(rows.instants(frame))


@hsettings(max_examples=15, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=rows.row_specs(max_size=40))
def test_every_sql_row_is_accepted_or_rejected_with_its_reason(schema, specs):
    """Property: random mixes of valid rows (text times with an offset, Z or none) and broken
    ones in a real table: rows read = accepted + rejected, each valid row lands with its
    instant, each broken row is quarantined with its reason."""
    relation = _text_table(schema, f"t_{uuid.uuid4().hex[:10]}")
    frame, expected = rows.build(specs, DAY0)
    frame["updated_at"] = [DAY0 + dt.timedelta(seconds=i) for i in range(len(frame))]
    _copy(relation, frame, TEXT_COLUMNS)
    with tempfile.TemporaryDirectory() as tmp:
        home = make_settings(Path(tmp) / "home", ingest_max_reject_share=1.0)

        out = pg.land_interval(home, "prop", SERVER, relation, "updated_at", DAY0,
                               DAY0 + dt.timedelta(days=1), now=NOW)

        valid = [i for i, why in enumerate(expected) if why is None]
        assert out["rows"] == len(frame) == out["accepted"] + out["rejected"]
        assert out["accepted"] == len(valid)
        wanted: dict[str, int] = {}
        for why in expected:
            if why is not None:
                wanted[why] = wanted.get(why, 0) + 1
        assert out["reasons"] == wanted
        files = _landed_files(home, "prop")
        landed = pd.concat([pd.read_parquet(f) for f in files]) if files else None
        assert (0 if landed is None else len(landed)) == len(valid)
        if landed is not None:
            by_id = dict(zip(landed["customer_id"], landed["event_timestamp"], strict=True))
            good = frame.iloc[valid]
            assert [by_id[c] for c in good["customer_id"]] == rows.instants(good)
        if wanted:
            quarantine = _quarantine(home, "prop")
            assert len(quarantine) == out["rejected"]
            got = dict(zip(quarantine["customer_id"], quarantine["reject_reason"], strict=True))
            assert all(got[i + 1] == why for i, why in enumerate(expected)
                       if why is not None and not pd.isna(frame["customer_id"].iloc[i]))


# ---------------------------------------------------------------- 8: infinity


def test_infinity_is_quarantined_naming_its_column_and_incremental_advances(schema, settings):
    """A timestamptz 'infinity' made every run fail with an error naming neither row nor
    column, and --incremental never advanced. Now its row is quarantined, the rest lands."""
    relation = create_table(schema, "activity")
    _execute("ALTER TABLE {} ADD COLUMN created_timestamp timestamptz, "
             "ADD COLUMN valid_until timestamptz", relation)
    good = generated(days=1, customers=300, seed=4)
    insert(relation, good)
    _execute("UPDATE {} SET event_timestamp = 'infinity' WHERE id = 1", relation)
    _execute("UPDATE {} SET event_timestamp = '-infinity' WHERE id = 2", relation)
    _execute("UPDATE {} SET created_timestamp = '-infinity' WHERE id = 3", relation)
    _execute("UPDATE {} SET valid_until = 'infinity' WHERE id = 4", relation)  # not landed

    one = pg.land_new(settings, "inf", SERVER, relation, "updated_at",
                      lag=dt.timedelta(0), now=NOW)

    assert (one["rows"], one["accepted"], one["rejected"]) == (len(good), len(good) - 3, 3)
    assert one["reasons"] == {"event_timestamp in the future": 1, rows.BEFORE: 1,
                              rows.CREATED_BEFORE: 1}
    assert one["watermark"] == NOW.isoformat()
    quarantine = _quarantine(settings, "inf").sort_values("id")
    assert quarantine["id"].tolist() == [1, 2, 3]
    assert quarantine["event_timestamp"].iloc[0] == "infinity"
    assert quarantine["created_timestamp"].iloc[2] == "-infinity"
    landed = pd.concat([pd.read_parquet(f) for f in _landed_files(settings, "inf")])
    assert good["customer_id"].iloc[3] in set(landed["customer_id"])  # id 4 landed

    later = generated(days=1, customers=100, seed=6, first=NOW + dt.timedelta(days=1))
    insert(relation, later)
    two = pg.land_new(settings, "inf", SERVER, relation, "updated_at", lag=dt.timedelta(0),
                      now=NOW + dt.timedelta(days=3))
    assert two["start"] == NOW.isoformat()
    assert (two["rows"], two["accepted"], two["rejected"]) == (len(later), len(later), 0)


# ---------------------------------------------------------------- 9: a query and its interval


def test_a_query_cannot_escape_its_interval_and_may_end_in_a_comment(schema, settings):
    relation = create_table(schema, "ev")
    good = generated(days=2, customers=200, seed=8)
    insert(relation, good)
    args = ["ingest-sql", "--url", SERVER, "--watermark", "updated_at", "--start", iso_day(0),
            "--end", iso_day(1)]

    escape = CliRunner().invoke(app, [*args, "--table", f"SELECT * FROM {relation}) AS k --",
                                      "--source", "escape"])
    assert escape.exit_code == 2 and "Traceback" not in escape.output
    assert escape.output.startswith(f"error: the query 'SELECT * FROM {relation}) AS k --' "
                                    f"does not parse as one statement on its own (syntax error")
    assert len(escape.output.strip().splitlines()) == 1
    assert not _landed_files(settings, "escape")

    commented = CliRunner().invoke(app, [*args, "--table",
                                         f"SELECT * FROM {relation} -- every row",
                                         "--source", "commented"])
    assert commented.exit_code == 0, commented.output
    out = json.loads(commented.stdout)
    first_day = good[good["updated_at"] < DAY0 + dt.timedelta(days=1)]
    assert (out["rows"], out["accepted"]) == (len(first_day), len(first_day))


# ---------------------------------------------------------------- 10: dates out of range


def test_out_of_range_dates_are_quarantined_without_a_traceback(schema, settings):
    """A time on pandas' first day crashed ingest-sql (its day is out of pandas' bounds);
    sentinel dates (the first day of 1900, of 1700) landed in partitions of their own."""
    relation = create_table(schema, "activity")
    good = generated(days=1, customers=300, seed=7)
    insert(relation, good)
    for i, value in enumerate(["1677-09-21 12:00:00+00",  # fixed-date: pandas' first day
                               "1900-01-01",  # fixed-date: a sentinel value
                               "1700-01-01"], start=1):  # fixed-date: a sentinel value
        _execute("UPDATE {} SET event_timestamp = %s WHERE id = %s", relation, value, i)

    done = CliRunner().invoke(app, ["ingest-sql", "--url", SERVER, "--table", relation,
                                    "--watermark", "updated_at", "--start", iso_day(0),
                                    "--end", iso_day(2), "--source", "dates"])

    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert (out["rows"], out["accepted"], out["rejected"]) == (len(good), len(good) - 3, 3)
    assert out["reasons"] == {rows.BEFORE: 3}
    assert out["days"] == [iso_day(0)]
    assert [f.parent.name for f in _landed_files(settings, "dates")] == [f"day={iso_day(0)}"]
