"""Issue 14, ingest and files: broken lake days meet a real ingest run on a lake in tmp_path.

A type change gets its own reason and, above the reject-share threshold, the day is refused and
keeps its previous landing; a missing day keeps its landing unless --delete-missing says
otherwise; future rows and rows without any feature are rejected with reasons; the files that
hold data or state (landed and rejected rows, the MLflow store and artifacts, the audit trail,
the alias lock, the Feast stores) are owner-only. (The MLflow and Feast files' modes are
checked in ``tests/integration/mlflow/test_registry_file_modes.py`` and
``tests/integration/feast/test_online_store_file_modes.py``.)
"""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.io import append_line, atomic_write_json, file_sha256, make_private, private_dir
from pipeline.core.settings import FEATURE_NAMES, load_settings
from pipeline.data.datagen import generate_lake
from pipeline.data.ingest import (
    FAILED_FOLDER,
    OFFLINE_TABLE,
    IngestRefused,
    ingest_lake,
    split_valid,
    type_problems,
)
from pipeline.data.lake import LAKE_TABLE
from tests.helpers import clock
from tests.helpers.artifacts import file_mode

START, END = clock.day(0), clock.day(2)
FIRST, DAY = clock.iso_day(0), clock.iso_day(1)
#: A day years ahead of the clock: its rows are dated in the future.
FUTURE = clock.day(3650)
runner = CliRunner()




def _lake_part(settings, day=DAY, name="part-00000.parquet"):
    return settings.lake_dir / LAKE_TABLE / f"day={day}" / name


def _landed(settings, day=DAY):
    return settings.offline_dir / OFFLINE_TABLE / f"day={day}" / "part-00000.parquet"


def _rejected(settings, day=DAY):
    return settings.rejected_dir / OFFLINE_TABLE / f"day={day}" / "part-00000.parquet"


def _attempts(settings, day=DAY):
    return sorted((settings.rejected_dir / FAILED_FOLDER / OFFLINE_TABLE / f"day={day}")
                  .glob("*.parquet"))


def _epoch_seconds(ts: pd.Series) -> pd.Series:
    return (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _day_frame(n=4, day=FIRST):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.uniform(0, 1, n) for name in FEATURE_NAMES})
    frame.insert(0, "customer_id", np.arange(1, n + 1))
    frame.insert(1, "event_timestamp", pd.Timestamp(f"{day} 12:00", tz="UTC"))
    return frame


# ---------------------------------------------------------------- defect 9: type changes


def test_a_type_change_gets_its_own_reason_and_keeps_the_previous_landing(settings):
    """The reproducer: event_timestamp as int64 epoch seconds in one day's Parquet."""
    generate_lake(settings.lake_dir, n_customers=300, days=2, start=START, seed=5)
    frame = pq.read_table(_lake_part(settings)).to_pandas()
    frame.loc[:1, "mobile_share"] = 7.0  # so the first landing has rejected rows too
    frame.to_parquet(_lake_part(settings), index=False)
    first = ingest_lake(settings, START, END)
    assert first.days == [FIRST, DAY] and first.rejected == 2
    kept = {p: file_sha256(p) for p in (_landed(settings), _rejected(settings),
                                        _landed(settings, FIRST))}

    frame["event_timestamp"] = _epoch_seconds(frame["event_timestamp"])
    frame.to_parquet(_lake_part(settings), index=False)
    rows = len(frame)
    with pytest.raises(IngestRefused) as refused:
        ingest_lake(settings, START, END)
    message = str(refused.value)
    reason = "event_timestamp has type int64, expected a timestamp"
    assert message.startswith(f"ingest refused 1 day of [{START}, {END}) (1 landed): "
                              f"day={DAY}: {rows} of {rows} rows rejected, share 1 exceeds "
                              f"ingest_max_reject_share=0.2 (reasons: {{'{reason}': {rows}}})")
    assert "outside partition day" not in message
    assert refused.value.result.days == [FIRST]
    assert refused.value.result.failed_days == [DAY]
    assert {p: file_sha256(p) for p in kept} == kept, "the previous landing must stay as it was"

    # Nothing is lost: the refused attempt's rows are kept with their reasons and raw values.
    attempts = _attempts(settings)
    assert len(attempts) == 1 and str(attempts[0]) in message
    attempt = pq.read_table(attempts[0]).to_pandas()
    assert len(attempt) == rows and set(attempt["reject_reason"]) == {reason}
    assert attempt["event_timestamp"].tolist() == frame["event_timestamp"].tolist()
    # Refusing the same data again writes the same attempt file, not another one.
    with pytest.raises(IngestRefused):
        ingest_lake(settings, START, END)
    assert _attempts(settings) == attempts


def test_a_file_of_another_type_is_rejected_alone_and_the_day_lands_under_the_threshold(
        settings):
    """Two files for one day, one with a feature stored as strings (10% of the rows): only that
    file's rows are rejected, with a type reason, and the rest of the day lands."""
    generate_lake(settings.lake_dir, n_customers=300, days=2, start=START, seed=5)
    frame = pq.read_table(_lake_part(settings)).to_pandas()
    n_bad = len(frame) // 10
    good, bad = frame.iloc[n_bad:], frame.iloc[:n_bad].copy()
    bad["total_spend_30d"] = bad["total_spend_30d"].map(lambda v: f"{v:.2f}")
    good.to_parquet(_lake_part(settings), index=False)
    bad.to_parquet(_lake_part(settings, name="part-00001.parquet"), index=False)

    result = ingest_lake(settings, START, END)
    reason = "total_spend_30d has type string, expected a number"
    assert result.reasons == {reason: n_bad} and result.failed_days == []
    assert result.days == [FIRST, DAY]
    landed = pq.read_table(_landed(settings)).to_pandas()
    assert sorted(landed["customer_id"]) == sorted(good["customer_id"])
    rejected = pq.read_table(_rejected(settings)).to_pandas()
    assert (rejected["reject_reason"] == reason).all()
    assert rejected["total_spend_30d"].tolist() == bad["total_spend_30d"].tolist()


def test_a_column_stored_twice_refuses_the_day_in_one_line(settings):
    """Arrow will not read a file with a column twice: the day is refused as unreadable, with a
    one-line message (Arrow's own message spans the whole schema)."""
    generate_lake(settings.lake_dir, n_customers=200, days=2, start=START, seed=5)
    table = pq.read_table(_lake_part(settings))
    epoch = pa.array(_epoch_seconds(table["event_timestamp"].to_pandas()))
    pq.write_table(table.append_column("event_timestamp", epoch), _lake_part(settings))
    with pytest.raises(IngestRefused, match=rf"day={DAY}: 1 of 1 files are not readable "
                                            r"Parquet: .*\(ArrowInvalid: Multiple matches for "
                                            r"FieldRef.Name\(event_timestamp\)") as refused:
        ingest_lake(settings, START, END)
    assert "\n" not in str(refused.value)
    assert _landed(settings, FIRST).exists() and not _landed(settings).exists()


@pytest.mark.parametrize("column, values, reason", [
    ("event_timestamp", lambda f: _epoch_seconds(f["event_timestamp"]),
     "event_timestamp has type int64, expected a timestamp"),
    ("event_timestamp", lambda f: _epoch_seconds(f["event_timestamp"]).astype(float),
     "event_timestamp has type float64, expected a timestamp"),
    ("created_timestamp", lambda f: np.arange(len(f)),
     "created_timestamp has type int64, expected a timestamp"),
    ("customer_id", lambda f: f["customer_id"].astype(str),
     "customer_id has type string, expected an integer"),
    ("orders_30d", lambda f: f["orders_30d"] > 0.5, "orders_30d has type bool, expected a number"),
    ("tenure_days", lambda f: f["event_timestamp"].astype("datetime64[ns, UTC]"),
     "tenure_days has type datetime64[ns, UTC], expected a number"),
    ("mobile_share", lambda f: [{"v": 1.0}] * len(f),
     "mobile_share has type struct, expected a number"),
])
def test_each_type_change_is_named_with_the_type_received_and_expected(column, values, reason):
    frame = _day_frame()
    frame[column] = values(frame)
    assert type_problems(frame) == {column: reason}
    ok, bad = split_valid(frame, clock.day(0))
    assert ok.empty and bad["reject_reason"].tolist() == [reason] * len(frame)


def test_two_type_changes_are_both_named_and_timestamps_as_text_are_parsed():
    frame = _day_frame()
    frame["event_timestamp"] = _epoch_seconds(frame["event_timestamp"])
    frame["discount_share"] = frame["discount_share"].astype(str)
    _, bad = split_valid(frame, clock.day(0))
    assert set(bad["reject_reason"]) == {
        "event_timestamp has type int64, expected a timestamp; "
        "discount_share has type string, expected a number"}
    text = _day_frame()
    text["event_timestamp"] = clock.zulu(0, hours=12)  # a textual timestamp is a timestamp
    ok, bad = split_valid(text, clock.day(0))
    assert len(ok) == len(text) and bad.empty


@pytest.mark.parametrize("extra, lands", [(0, True), (1, False)])
def test_the_reject_share_threshold_is_a_setting_and_inclusive(settings, extra, lands):
    strict = load_settings(home=settings.home, ingest_max_reject_share=0.1)
    generate_lake(strict.lake_dir, n_customers=300, days=2, start=START, seed=5)
    frame = pq.read_table(_lake_part(strict)).to_pandas()
    allowed = int(len(frame) * 0.1)
    assert allowed / len(frame) <= 0.1 < (allowed + 1) / len(frame)
    frame.loc[:allowed + extra - 1, "discount_share"] = 2.0
    frame.to_parquet(_lake_part(strict), index=False)
    if lands:
        result = ingest_lake(strict, START, END)
        assert result.rejected == allowed and result.days == [FIRST, DAY]
        assert pq.read_metadata(_landed(strict)).num_rows == len(frame) - allowed
    else:
        with pytest.raises(IngestRefused, match=rf"day={DAY}: {allowed + 1} of {len(frame)} "
                                                rf"rows rejected, share 0\.\d+ exceeds "
                                                rf"ingest_max_reject_share=0\.1 "):
            ingest_lake(strict, START, END)
        assert not _landed(strict).exists() and _landed(strict, FIRST).exists()
        assert len(pq.read_table(_attempts(strict)[0])) == allowed + 1


def test_an_unreadable_file_refuses_its_day_and_names_the_file(settings):
    generate_lake(settings.lake_dir, n_customers=200, days=2, start=START, seed=5)
    ingest_lake(settings, START, END)
    before = file_sha256(_landed(settings))
    _lake_part(settings).write_bytes(b"PAR1 not really parquet")
    with pytest.raises(IngestRefused, match=rf"day={DAY}: 1 of 1 files are not readable "
                                            rf"Parquet: {_lake_part(settings)} \(Arrow"):
        ingest_lake(settings, START, END)
    assert file_sha256(_landed(settings)) == before


# ---------------------------------------------------------------- defect 10: missing days


def test_the_cli_keeps_a_missing_days_landing_and_deletes_it_only_with_the_flag(settings):
    generate_lake(settings.lake_dir, n_customers=200, days=2, start=START, seed=5)
    args = ["ingest", "--start", str(START), "--end", str(END)]
    assert runner.invoke(app, args).exit_code == 0
    before = file_sha256(_landed(settings))
    moved = settings.lake_dir / "day-moved-away"
    _lake_part(settings).parent.rename(moved)

    kept = runner.invoke(app, args)
    assert kept.exit_code == 0, kept.output
    out = json.loads(kept.stdout)
    assert out["missing_days"] == [DAY] and out["deleted_days"] == []
    assert out["days"] == [FIRST]
    assert file_sha256(_landed(settings)) == before

    deleted = runner.invoke(app, [*args, "--delete-missing"])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.stdout)["deleted_days"] == [DAY]
    assert not _landed(settings).exists()

    moved.rename(_lake_part(settings).parent)  # back after the outage: landed again
    assert json.loads(runner.invoke(app, args).stdout)["days"] == [FIRST, DAY]
    assert file_sha256(_landed(settings)) == before


def test_a_day_emptied_in_the_lake_counts_as_missing(settings):
    generate_lake(settings.lake_dir, n_customers=200, days=2, start=START, seed=5)
    ingest_lake(settings, START, END)
    before = file_sha256(_landed(settings))
    frame = pq.read_table(_lake_part(settings)).to_pandas()
    frame.iloc[:0].to_parquet(_lake_part(settings), index=False)
    result = ingest_lake(settings, START, END)
    assert result.missing_days == [DAY] and file_sha256(_landed(settings)) == before
    assert ingest_lake(settings, START, END, delete_missing=True).deleted_days == [DAY]
    assert not _landed(settings).exists()


# ---------------------------------------------------------------- point 12: future, empty rows


def test_a_partition_dated_years_ahead_is_refused_with_its_reason(settings):
    generate_lake(settings.lake_dir, n_customers=100, days=1, start=FUTURE, seed=5)
    rows = pq.read_metadata(_lake_part(settings, FUTURE)).num_rows
    with pytest.raises(IngestRefused, match=rf"day={FUTURE}: {rows} of {rows} rows rejected, "
                                            rf"share 1 exceeds ingest_max_reject_share=0.2 "
                                            rf"\(reasons: {{'event_timestamp in the future': "
                                            rf"{rows}}}\)"):
        ingest_lake(settings, FUTURE, FUTURE + dt.timedelta(days=1))
    assert not _landed(settings, FUTURE).exists()
    assert len(pq.read_table(_attempts(settings, FUTURE)[0])) == rows


def test_future_rows_are_rejected_against_the_clock():
    day = clock.day(0)
    frame = _day_frame(4)
    frame.loc[1, "event_timestamp"] = pd.Timestamp(clock.at(0, hours=18))
    frame["created_timestamp"] = pd.Timestamp(clock.at(1))  # the day's landing time
    frame.loc[2, "created_timestamp"] = pd.Timestamp(clock.at(3650))  # years ahead
    now = clock.at(0, hours=15)  # the day is still running
    ok, bad = split_valid(frame, day, now=now)
    assert bad["reject_reason"].to_dict() == {1: "event_timestamp in the future",
                                              2: "created_timestamp in the future"}
    assert ok["customer_id"].tolist() == [1, 4]
    ok, bad = split_valid(frame, day, now=clock.at(2).replace(tzinfo=None))  # naive: UTC
    assert bad["reject_reason"].tolist() == ["created_timestamp in the future"]


def test_rows_without_any_feature_are_rejected(settings):
    generate_lake(settings.lake_dir, n_customers=300, days=2, start=START, seed=5)
    frame = pq.read_table(_lake_part(settings)).to_pandas()
    frame.loc[:2, FEATURE_NAMES] = np.nan
    frame.loc[3, FEATURE_NAMES[1:]] = np.nan  # one feature left: still a customer
    frame.to_parquet(_lake_part(settings), index=False)
    result = ingest_lake(settings, START, END)
    assert result.reasons == {"every feature is missing": 3}
    landed = pq.read_table(_landed(settings)).to_pandas()
    assert len(landed) == len(frame) - 3
    assert not landed[FEATURE_NAMES].isna().all(axis=1).any()
    assert frame.loc[3, "customer_id"] in set(landed["customer_id"])


def test_a_rejected_row_does_not_shadow_its_corrected_resend():
    frame = pd.concat([_day_frame(2), _day_frame(1)], ignore_index=True)
    frame.loc[0, "discount_share"] = 1.5  # row 2 resends customer 1, same timestamp, fixed
    ok, bad = split_valid(frame, clock.day(0))
    assert bad["reject_reason"].to_dict() == {0: "discount_share outside [0, 1]"}
    assert sorted(ok["customer_id"]) == [1, 2]


# ---------------------------------------------------------------- point 12: owner-only files


def test_owner_only_helpers(tmp_path, umask_022):
    trail = tmp_path / "audit" / "trail.jsonl"
    trail.parent.mkdir()
    trail.write_text('{"old": 1}\n')
    os.chmod(trail, 0o644)  # left world-readable by an earlier version
    append_line(trail, '{"new": 2}')
    assert file_mode(trail) == 0o600
    assert trail.read_text().splitlines() == ['{"old": 1}', '{"new": 2}']
    assert file_mode(private_dir(tmp_path / "a" / "b")) == 0o700
    assert file_mode(tmp_path / "a") == 0o755, "only the named folder is made private"
    assert file_mode(atomic_write_json(tmp_path / "s.json", {"x": 1}, mode=0o600)) == 0o600
    assert file_mode(atomic_write_json(tmp_path / "p.json", {"x": 1})) == 0o644
    assert make_private(tmp_path / "absent") is False


def test_landed_rejected_and_refused_rows_are_owner_only(settings, umask_022):
    generate_lake(settings.lake_dir, n_customers=200, days=2, start=START, seed=5)
    frame = pq.read_table(_lake_part(settings)).to_pandas()
    frame.loc[:1, "mobile_share"] = 7.0
    frame.to_parquet(_lake_part(settings), index=False)
    ingest_lake(settings, START, END)
    frame["event_timestamp"] = _epoch_seconds(frame["event_timestamp"])
    frame.to_parquet(_lake_part(settings), index=False)
    with pytest.raises(IngestRefused):
        ingest_lake(settings, START, END)
    written = [_landed(settings), _landed(settings, FIRST), _rejected(settings),
               *_attempts(settings)]
    assert len(written) == 4 and {p: file_mode(p) for p in written} == dict.fromkeys(written, 0o600)
