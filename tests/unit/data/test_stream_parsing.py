"""Issue 23, the stream's poison pills, without a stream: reading one entry never raises.

Each entry that crashed ``kmeans consume`` (and every consumer after it) is read here into a
reason: a 400-digit feature, JSON nested 5,000 to 100,000 deep, a timestamp at pandas' lower
limit; "now" and "today" are not timestamps, and dates far before the platform existed are
outside the accepted range. A batch whose validation raises is split so that only the rows
that raise alone are rejected, and a batch's counts that do not add up stop it before its
acknowledgement. The same consumer against a real Redis stream, as users run it:
``tests/integration/redis/test_sources_stream.py``.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.ingest import RowsUnaccounted
from pipeline.data.sources import stream as st
from tests.helpers import clock


def event(**changes) -> dict:
    values = {name: 1.0 for name in FEATURE_NAMES}
    return {"event_id": "ev-1", "customer_id": 7, "event_timestamp": clock.iso(1, hours=6),
            **values, **changes}


def payload(**changes) -> bytes:
    return json.dumps(event(**changes)).encode()


def too_early(name: str) -> str:
    """The reason of a time before the earliest event day (the setting's default)."""
    return f"{name} before ingest_earliest_event={st._EARLIEST.isoformat()}"


def reason_of(body: bytes | None) -> str:
    row, _, reason = st.parse_event(body)
    assert (row is None) == bool(reason)
    return reason


def test_a_valid_event_is_read_into_a_row():
    row, event_id, reason = st.parse_event(payload(created_timestamp=clock.zulu(1, hours=7)))
    assert (event_id, reason) == ("ev-1", "")
    assert row is not None and row["event_timestamp"] == pd.Timestamp(clock.at(1, hours=6))
    assert row["created_timestamp"] == pd.Timestamp(clock.at(1, hours=7))
    assert [row[name] for name in FEATURE_NAMES] == [1.0] * len(FEATURE_NAMES)


# ---------------------------------------------------------------- the three poison pills


def test_a_feature_given_as_a_400_digit_integer_is_not_finite():
    body = json.dumps(event()).replace('"tenure_days": 1.0', '"tenure_days": ' + "9" * 400)
    assert reason_of(body.encode()) == ("tenure_days is not finite (OverflowError: int too "
                                        "large to convert to float)")


@pytest.mark.parametrize("depth", [5_000, 100_000])
@pytest.mark.parametrize("open_, close", [("[", "]"), ('{"a":', "}")])
def test_json_nested_deeper_than_the_recursion_limit_is_not_valid_json(depth, open_, close):
    top = open_ * depth + "1" + close * depth
    inside = '{"event_id": "ev-1", "nested": ' + top + "}"
    for body in (top, inside):
        reason = reason_of(body.encode())
        assert reason.startswith("event is not valid JSON (RecursionError: maximum recursion")
        assert len(reason) <= st.REASON_CHARS


@pytest.mark.parametrize("ts, reason", [
    ("1677-09-21T00:12:44Z", "before"),  # fixed-date: a second above pandas' ns range
    ("1677-09-21T00:12:43Z", "before"),  # fixed-date: below pandas' ns range
    ("2262-04-11T00:00:00Z", "future"),  # fixed-date: a day below pandas' ns range's end
    ("2262-04-12T00:00:00Z", "future"),  # fixed-date: above pandas' ns range
    ("9999-12-31T23:59:59Z", "future"),  # fixed-date: far beyond it
])
def test_timestamps_at_pandas_limits_are_refused_before_any_arithmetic(ts, reason):
    for name in ("event_timestamp", "created_timestamp"):
        expected = too_early(name) if reason == "before" else f"{name} in the future"
        assert reason_of(payload(**{name: ts})) == expected


# ---------------------------------------------------------------- what a timestamp is


@pytest.mark.parametrize("ts", ["now", "today", "yesterday", "tomorrow", "NOW", " now",
                                "Jan 5", "5/1/2020", "", "T", 1_765_000_000, 1.7e9, None,
                                True, [], {}])
def test_only_iso_8601_is_a_timestamp(ts):
    assert reason_of(payload(event_timestamp=ts)) == st._TS_REASON


@pytest.mark.parametrize("ts", [
    "1900-01-01T00:00:00Z",  # fixed-date: hostile input, a sentinel date
    "1700-01-01",  # fixed-date: hostile input, a sentinel date
    "1999-12-31T23:59:59.999999999Z",  # fixed-date: hostile input, just before the default
    "2000-01-01T00:30:00+01:00",  # fixed-date: hostile input, before it in UTC
])
def test_dates_before_the_earliest_event_day_are_refused(ts):
    assert reason_of(payload(event_timestamp=ts)) == too_early("event_timestamp")
    assert reason_of(payload(created_timestamp=ts)) == too_early("created_timestamp")


def test_the_earliest_day_and_the_clock_are_the_caller_s():
    """The consumer passes ``Settings.ingest_earliest_event`` and its batch's clock."""
    body = payload(event_timestamp=clock.iso(1, hours=6))
    assert st.parse_event(body, earliest=clock.day(1))[2] == ""
    assert st.parse_event(body, earliest=clock.day(2))[2] \
        == f"event_timestamp before ingest_earliest_event={clock.iso_day(2)}"
    # Up to a day ahead is split_valid's to judge (a creation time may be at its day's end).
    assert st.parse_event(body, now=clock.at(0, hours=7))[2] == ""
    assert st.parse_event(body, now=clock.at(0, hours=5))[2] == "event_timestamp in the future"
    first = pd.Timestamp(st._EARLIEST, tz="UTC")
    assert st.parse_event(payload(event_timestamp=first.isoformat()))[2] == ""


@pytest.mark.parametrize("make", [
    lambda: clock.iso(1, hours=6),                       # +00:00
    lambda: clock.zulu(1, hours=6),                      # Z
    lambda: clock.at(1, hours=6).strftime("%Y-%m-%dT%H:%M:%S"),  # naive: UTC
    lambda: clock.at(1, hours=6).strftime("%Y-%m-%d %H:%M:%S.%f+00:00"),  # RFC 3339's space
    lambda: clock.at(1, hours=7).strftime("%Y-%m-%dT%H:%M:%S+0100"),
    lambda: clock.at(1, hours=6).strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
])
def test_iso_8601_forms_are_read_in_utc(make):
    row, _, reason = st.parse_event(payload(event_timestamp=make()))
    assert reason == "" and row is not None
    assert row["event_timestamp"].floor("s") == pd.Timestamp(clock.at(1, hours=6))
    assert str(row["event_timestamp"].tz) == "UTC"


# ---------------------------------------------------------------- other entries


@pytest.mark.parametrize("body, reason", [
    (None, "stream entry has no event"),
    (b"{not json", "event is not valid JSON (JSONDecodeError: "),
    (b"\xff\xfe\x00", "event is not valid JSON (UnicodeDecodeError: "),
    (b"1" * 5000, "event is not valid JSON (ValueError: Exceeds the limit"),
    (b"[1, 2]", "event is a JSON list, expected an object"),
    (json.dumps(event(event_id="\ud800")).encode(), "event_id is not valid Unicode text"),
    (json.dumps(event(event_id=True)).encode(), "event_id missing or not a string"),
    (json.dumps(event(customer_id=2**63)).encode(), st._ID_REASON),
    (json.dumps(event(orders_30d="9")).encode(), "orders_30d is not numeric"),
])
def test_other_broken_entries_have_their_reason(body, reason):
    assert reason_of(body).startswith(reason)


def test_an_error_nobody_foresaw_is_the_entry_s_reason_with_its_type(monkeypatch):
    def broken(value):
        raise ZeroDivisionError("x" * 10_000)

    monkeypatch.setattr(st, "_timestamp", broken)
    row, event_id, reason = st.parse_event(payload())
    assert row is None and event_id == "ev-1"
    assert reason.startswith("event could not be read (ZeroDivisionError: xxx")
    assert len(reason) <= st.REASON_CHARS


JSON = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.integers(min_value=10**300)
    | hs.floats() | hs.text(),
    lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(hs.text(), inner, max_size=3),
    max_leaves=8)
FIELDS = hs.sampled_from(["event_id", "customer_id", "event_timestamp", "created_timestamp",
                          *FEATURE_NAMES])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=hs.dictionaries(FIELDS, JSON, max_size=4), raw=hs.binary(max_size=64))
def test_reading_any_entry_never_raises_and_a_row_is_in_range(changes, raw):
    """Any JSON in any field of an event, and any bytes: a row that the checks after it can
    take (float features, times from the earliest day to a day ahead), or a reason."""
    reason_of(raw)
    body = json.dumps(event(**changes)).encode()
    row, event_id, reason = st.parse_event(body)
    if row is None:
        assert reason and len(reason) <= st.REASON_CHARS
        return
    first = pd.Timestamp(st._EARLIEST, tz="UTC")
    end = pd.Timestamp.now(tz="UTC") + st.FUTURE_HORIZON
    assert reason == "" and isinstance(event_id, str) and event_id
    assert first <= row["event_timestamp"] <= end
    assert row["created_timestamp"] is pd.NaT or first <= row["created_timestamp"] <= end
    assert all(isinstance(row[name], float) for name in FEATURE_NAMES)
    assert isinstance(row["customer_id"], int) and 0 < row["customer_id"] < 2**63


# ---------------------------------------------------------------- the batch


def row_at(ts: pd.Timestamp | str, customer: int) -> dict:
    return {"customer_id": customer, "event_timestamp": pd.Timestamp(ts),
            **{name: 1.0 for name in FEATURE_NAMES}, "created_timestamp": pd.NaT}


def test_a_row_that_makes_the_batch_s_validation_raise_is_rejected_alone():
    """Rows that validation cannot take (as a bug in reading could hand it): the batch is
    validated again without them, and they are rejected with the error's type; the other
    rows are judged by the ingest rules as usual."""
    now = clock.NOW
    rows = [row_at(clock.at(1, hours=1), 1),
            row_at(clock.at(1, hours=1), 2) | {"customer_id": "two"},
            row_at(clock.at(1, hours=2), 3),
            row_at(clock.at(1, hours=2), 4) | {"orders_30d": "many"},
            row_at(clock.at(1, hours=3), 5) | {"orders_30d": -1.0}]
    accepted, rejected = st.validate_rows(rows, now)
    assert sorted(accepted.index) == [0, 2]
    assert sorted(rejected.index) == [1, 3, 4]
    assert accepted.customer_id.tolist() == [1, 3]
    reasons = rejected.reject_reason.to_dict()
    assert reasons[1].startswith("event could not be validated (ValueError: ")
    assert reasons[3].startswith("event could not be validated (ValueError: ")
    assert reasons[4] == "orders_30d outside [0, 1000]"


def test_split_valid_s_invariant_is_checked():
    rows = pd.DataFrame({"x": [1, 2, 3]})
    st._check_split(rows, rows.iloc[:2], rows.iloc[2:], where="here")
    with pytest.raises(RowsUnaccounted, match="1 rows unaccounted for"):
        st._check_split(rows, rows.iloc[:1], rows.iloc[2:], where="here")
    with pytest.raises(RowsUnaccounted, match="-1 rows unaccounted for"):
        st._check_split(rows, rows.iloc[:2], rows.iloc[1:], where="here")
    with pytest.raises(st.StreamInvariantError, match="each once"):
        st._check_split(rows, rows.iloc[:2], rows.iloc[:1], where="here")


def test_a_batch_s_counts_must_add_up():
    ok = st.BatchResult(read=6, landed=2, duplicates=1, repeated=1, rejected=2,
                        reasons={"a": 1, "b": 1})
    ok.check()
    for wrong in (st.BatchResult(read=6, landed=2, rejected=2, reasons={"a": 2}),
                  st.BatchResult(read=4, landed=2, rejected=2, reasons={"a": 1})):
        with pytest.raises(st.StreamInvariantError):
            wrong.check()
    total = st.BatchResult()
    total.add(ok)
    total.add(ok)
    total.check()
