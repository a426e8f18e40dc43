"""Rows for the sources' property tests: valid rows with their event time in every form a
writer uses (an offset, ``Z``, none), mixed in one text column, and broken rows, each with the
reason it must be quarantined for.

A test draws ``specs`` (:func:`row_specs`), builds them with :func:`build` for a day, lands
them through a source, and checks that every valid row is accepted, every broken row rejected
with its reason, and that nothing else happens: rows read = accepted + rejected.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from hypothesis import strategies as st

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.ingest import EARLIEST_EVENT

#: The reasons of a time before the earliest event day (the setting's default).
BEFORE = f"event_timestamp before ingest_earliest_event={EARLIEST_EVENT.isoformat()}"
CREATED_BEFORE = BEFORE.replace("event_timestamp", "created_timestamp", 1)
FUTURE = "event_timestamp in the future"
NOT_A_TIME = "event_timestamp missing or not a timestamp"

#: Event times that are not accepted, whatever the day, and why.
BROKEN_TIMES = {
    "garbage": ("not a time", NOT_A_TIME),
    "missing": (None, NOT_A_TIME),
    "sentinel-1900": ("1900-01-01T00:00:00", BEFORE),  # fixed-date: a sentinel value
    "sentinel-1700": ("1700-01-01", BEFORE),  # fixed-date: a sentinel value
    "pandas-min": ("1677-09-21T12:00:00Z", BEFORE),  # fixed-date: pandas' first day
    "year-1": ("0001-01-01T00:00:00+05:00", BEFORE),
    "infinity": ("infinity", FUTURE),
    "-infinity": ("-infinity", BEFORE),
    "far-future": ("3000-01-01T00:00:00Z", FUTURE),  # fixed-date: beyond pandas' last day
}
#: Rows broken elsewhere than their time (on a valid time).
BROKEN_VALUES = {
    "feature-out-of-range": ("discount_share", 1.5, "discount_share outside [0, 1]"),
    "no-customer": ("customer_id", None, "customer_id missing or not a positive integer"),
    "no-feature": (None, None, "every feature is missing"),
}
#: The forms of a valid time: the instant written with an offset, Z, or none (UTC).
FORMS = ("+05:00", "-03:30", "Z", "naive", "naive-space", "fraction")


def _written(instant: dt.datetime, form: str) -> str:
    if form in ("+05:00", "-03:30"):
        hours, minutes = (int(x) for x in form[1:].split(":"))
        sign = 1 if form[0] == "+" else -1
        zone = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        return instant.astimezone(zone).isoformat()
    if form == "Z":
        return instant.strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == "naive":
        return instant.replace(tzinfo=None).isoformat()
    if form == "naive-space":
        return instant.strftime("%Y-%m-%d %H:%M:%S")
    return instant.replace(microsecond=123456).isoformat()


def row_specs(*, extra_kinds: tuple[str, ...] = (), max_size: int = 60):
    """Lists of ``(kind, second of the day, form)``: ``kind`` is ``valid``, a key of
    :data:`BROKEN_TIMES` or :data:`BROKEN_VALUES`, or one of ``extra_kinds`` (the caller's)."""
    kinds = ["valid", "valid", "valid", *BROKEN_TIMES, *BROKEN_VALUES, *extra_kinds]
    return st.lists(st.tuples(st.sampled_from(kinds), st.integers(0, 86_399),
                              st.sampled_from(FORMS)), min_size=1, max_size=max_size)


def build(specs, day_start: dt.datetime, *,
          extra: dict[str, tuple[str, str]] | None = None) -> tuple[pd.DataFrame, list]:
    """The rows of ``specs`` on the day starting at ``day_start`` (UTC), with customer ids
    1, 2, ... (no two rows share a key), and each row's expected reason (None: accepted).
    ``extra`` maps a caller's kind to (event time as text, reason)."""
    extra = extra or {}
    rows, reasons = [], []
    for i, (kind, second, form) in enumerate(specs):
        instant = day_start + dt.timedelta(seconds=second)
        row = {"customer_id": i + 1, "event_timestamp": _written(instant, form),
               **{name: 0.5 for name in FEATURE_NAMES}}
        reason = None
        if kind in BROKEN_TIMES:
            row["event_timestamp"], reason = BROKEN_TIMES[kind]
        elif kind in extra:
            row["event_timestamp"], reason = extra[kind]
        elif kind in BROKEN_VALUES:
            column, value, reason = BROKEN_VALUES[kind]
            if column is None:
                row.update(dict.fromkeys(FEATURE_NAMES))
            else:
                row[column] = value
        rows.append(row)
        reasons.append(reason)
    frame = pd.DataFrame(rows)
    frame["customer_id"] = frame["customer_id"].astype("Int64")
    frame["event_timestamp"] = frame["event_timestamp"].astype(object)
    return frame.astype({name: "float64" for name in FEATURE_NAMES}), reasons


def instants(frame: pd.DataFrame) -> list[pd.Timestamp]:
    """What the valid rows' times mean: each parsed alone, naive as UTC."""
    out = []
    for text in frame["event_timestamp"]:
        moment = dt.datetime.fromisoformat(text)
        out.append(pd.Timestamp(moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)))
    return out
