"""Issue 23, the lake: every row read is accepted or rejected (3), a file that lacks a column
refuses its day (10), and dates outside the accepted range are quarantined with their reason
(10). Real lake files in a temporary home, landed by ``ingest_lake``."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline.core.io import file_sha256
from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.datagen import generate_lake
from pipeline.data.ingest import (
    FAILED_FOLDER,
    OFFLINE_TABLE,
    IngestRefused,
    RowsUnaccounted,
    check_rows_accounted,
    ingest_lake,
    parse_timestamps,
    split_valid,
)
from pipeline.data.lake import LAKE_TABLE
from tests.helpers import clock, rows
from tests.helpers.homes import make_settings

START, END = clock.day(0), clock.day(2)
FIRST, DAY = clock.iso_day(0), clock.iso_day(1)


def _lake_part(settings, day=FIRST, name="part-00000.parquet") -> Path:
    return settings.lake_dir / LAKE_TABLE / f"day={day}" / name


def _landed(settings, day=FIRST) -> Path:
    return settings.offline_dir / OFFLINE_TABLE / f"day={day}" / "part-00000.parquet"


def _rejected(settings, day=FIRST) -> Path:
    return settings.rejected_dir / OFFLINE_TABLE / f"day={day}" / "part-00000.parquet"


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


# ---------------------------------------------------------------- 3: no row lost


def test_the_invariant_raises_on_rows_unaccounted_for():
    check_rows_accounted(100, 67, 33, where="lake ingest of day=x")
    with pytest.raises(RowsUnaccounted, match=r"lake ingest of day=x: 100 rows read but 67 "
                                              r"accepted \+ 0 rejected = 67: 33 rows "
                                              r"unaccounted for"):
        check_rows_accounted(100, 67, 0, where="lake ingest of day=x")


def test_1200_valid_iso_strings_with_and_without_offsets_all_land(settings):
    """The reproducer: a day's event times as text, a third with +05:00, a third with Z, a
    third naive. pandas took the format of the first and rejected 400 as not timestamps."""
    day_start = clock.at(0)
    seconds = np.arange(1200) * 70  # spread over the day
    moments = [day_start + dt.timedelta(seconds=int(s)) for s in seconds]
    plus5 = dt.timezone(dt.timedelta(hours=5))
    # A naive value right after one with +05:00: pandas' ISO 8601 parser alone reads it in +05.
    text = [m.astimezone(plus5).isoformat() if i % 3 == 0
            else m.replace(tzinfo=None).isoformat() if i % 3 == 1
            else m.strftime("%Y-%m-%dT%H:%M:%SZ") for i, m in enumerate(moments)]
    frame = pd.DataFrame({"customer_id": np.arange(1, 1201), "event_timestamp": text,
                          **{name: 0.5 for name in FEATURE_NAMES}})
    _write(_lake_part(settings), frame)

    result = ingest_lake(settings, START, clock.day(1))

    assert (result.rows, result.accepted, result.rejected) == (1200, 1200, 0)
    assert result.reasons == {} and result.failed_days == []
    landed = pq.read_table(_landed(settings)).to_pandas().sort_values("customer_id")
    assert landed["event_timestamp"].tolist() == [pd.Timestamp(m) for m in moments]
    assert not _rejected(settings).exists()


LAKE_EXTRA = {"other-day": (clock.iso(1, hours=3),
                            f"event_timestamp outside partition day={FIRST}")}


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=rows.row_specs(extra_kinds=tuple(LAKE_EXTRA)), files=st.integers(1, 3))
def test_every_lake_row_is_accepted_or_rejected_with_its_reason(specs, files):
    """Property: random mixes of valid rows (times with an offset, Z or none) and broken ones,
    over 1 to 3 files of one day: each valid row lands with its instant, each broken row is in
    the quarantine with its reason, rows read = accepted + rejected."""
    frame, expected = rows.build(specs, clock.at(0), extra=LAKE_EXTRA)
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp) / "home", ingest_max_reject_share=1.0)
        bounds = np.linspace(0, len(frame), files + 1).astype(int)
        for n, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if hi > lo:
                _write(_lake_part(settings, name=f"part-{n:05d}.parquet"), frame.iloc[lo:hi])

        result = ingest_lake(settings, START, clock.day(1))

        valid = [i for i, why in enumerate(expected) if why is None]
        assert result.rows == len(frame) == result.accepted + result.rejected
        assert (result.accepted, result.rejected) == (len(valid), len(frame) - len(valid))
        wanted: dict[str, int] = {}
        for why in expected:
            if why is not None:
                wanted[why] = wanted.get(why, 0) + 1
        assert result.reasons == wanted
        landed = pq.read_table(_landed(settings)).to_pandas()  # none valid: a day of 0 rows
        assert sorted(landed["customer_id"]) == [i + 1 for i in valid]
        by_id = dict(zip(landed["customer_id"], landed["event_timestamp"], strict=True))
        good = frame.iloc[valid]
        assert [by_id[c] for c in good["customer_id"]] == rows.instants(good)
        if len(valid) < len(frame):
            quarantine = pq.read_table(_rejected(settings)).to_pandas()
            assert len(quarantine) == result.rejected
            ids = pd.to_numeric(quarantine["customer_id"])
            got = dict(zip(ids, quarantine["reject_reason"], strict=True))
            assert {i + 1: got.get(i + 1) for i, why in enumerate(expected)
                    if why is not None and not pd.isna(frame["customer_id"].iloc[i])} == {
                i + 1: why for i, why in enumerate(expected)
                if why is not None and not pd.isna(frame["customer_id"].iloc[i])}


def test_timestamps_are_parsed_each_on_its_own():
    values = pd.Series([clock.iso(0, hours=1), clock.zulu(0, hours=2),
                        clock.at(0, hours=3).replace(tzinfo=None).isoformat(),
                        "1677-09-21T12:00:00Z",  # fixed-date: pandas' first day, not whole
                        "infinity", "-infinity", "0044-03-15 00:00:00+00 BC", "garbage", None,
                        clock.at(0, hours=4), clock.day(0)], dtype=object)
    times, side = parse_timestamps(values)
    assert times.iloc[:3].tolist() == [pd.Timestamp(clock.at(0, hours=h)) for h in (1, 2, 3)]
    assert times.iloc[3:9].isna().all() and side.tolist() == [0, 0, 0, -1, 1, -1, -1, 0, 0,
                                                              0, 0]
    assert times.iloc[9:].tolist() == [pd.Timestamp(clock.at(0, hours=4)),
                                       pd.Timestamp(clock.at(0))]


# ---------------------------------------------------------------- 10: dates out of range


def test_sentinel_and_out_of_range_dates_are_quarantined_not_partitioned(settings):
    """Among a day's rows, sentinel dates (the first day of 1900, of 1700), pandas' first day
    and infinities: each rejected with its reason, no crash, no partition of their own."""
    generate_lake(settings.lake_dir, n_customers=300, days=1, start=START, seed=5)
    frame = pq.read_table(_lake_part(settings)).to_pandas()
    frame["event_timestamp"] = frame["event_timestamp"].map(lambda t: t.isoformat())
    hostile = ["1900-01-01T00:00:00Z",  # fixed-date: a sentinel value
               "1700-01-01",  # fixed-date: a sentinel value
               "1677-09-21T12:00:00Z",  # fixed-date: pandas' first day, not whole
               "infinity", "-infinity", "3000-01-01T00:00:00"]  # fixed-date: beyond pandas
    frame.loc[:len(hostile) - 1, "event_timestamp"] = hostile
    frame.to_parquet(_lake_part(settings), index=False)

    result = ingest_lake(settings, START, clock.day(1))

    assert result.rows == len(frame) == result.accepted + result.rejected
    assert result.reasons == {rows.BEFORE: 4, rows.FUTURE: 2}
    assert [p.parent.name for p in (settings.offline_dir / OFFLINE_TABLE).glob("day=*/*")] \
        == [f"day={FIRST}"]
    quarantine = pq.read_table(_rejected(settings)).to_pandas()
    assert sorted(quarantine["event_timestamp"]) == sorted(hostile)


def test_the_accepted_range_is_a_setting(tmp_path):
    strict = make_settings(tmp_path / "home", ingest_earliest_event=clock.day(1))
    generate_lake(strict.lake_dir, n_customers=100, days=2, start=START, seed=5)
    with pytest.raises(IngestRefused, match=rf"day={FIRST}: \d+ of \d+ rows rejected, share 1 "
                                            rf"exceeds .*'event_timestamp before "
                                            rf"ingest_earliest_event={DAY}'"):
        ingest_lake(strict, START, END)
    assert _landed(strict, DAY).exists() and not _landed(strict).exists()


def test_a_day_pandas_cannot_hold_is_judged_without_a_crash():
    frame = pd.DataFrame({"customer_id": [1, 2], **{n: 0.5 for n in FEATURE_NAMES},
                          "event_timestamp": ["1677-09-21T12:00:00Z",  # fixed-date: hostile
                                              clock.iso(0, hours=1)]})
    ok, bad = split_valid(frame, dt.date(1677, 9, 21))  # fixed-date: pandas' first day
    assert ok.empty and bad["reject_reason"].tolist() == [
        rows.BEFORE, "event_timestamp outside partition day=1677-09-21"]  # fixed-date: same


# ---------------------------------------------------------------- 10: a file lacking a column


def test_a_small_file_lacking_a_column_refuses_the_day_and_keeps_its_landing(settings):
    """One file of a day without a column, under 20% of the day's rows: landing the rest would
    replace the day with fewer rows. The day is refused and keeps its previous landing."""
    generate_lake(settings.lake_dir, n_customers=300, days=2, start=START, seed=5)
    ingest_lake(settings, START, END)
    before = {p: file_sha256(p) for p in (_landed(settings, DAY), _landed(settings))}
    frame = pq.read_table(_lake_part(settings, DAY)).to_pandas()
    late = frame.iloc[:len(frame) // 10].drop(columns=["tenure_days"])
    extra = _lake_part(settings, DAY, "part-00001.parquet")
    late.to_parquet(extra, index=False)

    with pytest.raises(IngestRefused) as refused:
        ingest_lake(settings, START, END)

    message = str(refused.value)
    assert f"day={DAY}: 1 of 2 files lack columns: {extra} lacks columns ['tenure_days'] " \
           f"({len(late)} rows)" in message
    assert "the previous landing is kept" in message
    assert refused.value.result.failed_days == [DAY]
    assert refused.value.result.days == [FIRST]
    assert {p: file_sha256(p) for p in before} == before
    attempts = sorted((settings.rejected_dir / FAILED_FOLDER / OFFLINE_TABLE / f"day={DAY}")
                      .glob("*.parquet"))
    assert len(attempts) == 1 and str(attempts[0]) in message
    kept = pq.read_table(attempts[0]).to_pandas()
    assert len(kept) == len(late)
    assert set(kept["reject_reason"]) == {"file lacks columns ['tenure_days']"}
