"""The tests' calendar: every date in test data is relative to the real "now".

Test data that carries a calendar date ages: a feature view's TTL, a "no future rows" check or
a monitoring window reads it against the clock, and a suite whose sample days were fixed began
failing the day they aged past the TTL. So no test writes a calendar date. The sample lake's
days are the few days that ended a little before today, and a test that needs another instant
says how far it is from them (``day(1)``, ``at(2, hours=6)``). Under ``faketime`` the whole suite
moves with the clock; ``tests/unit/test_no_fixed_dates.py`` refuses a new literal date.

``NOW`` is read once per process, so a session that crosses midnight keeps one calendar.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC

#: When this test process started, in UTC (the system clock, or faketime's).
NOW = dt.datetime.now(UTC).replace(microsecond=0)
#: Today, in UTC.
TODAY = NOW.date()
#: Days the sample lake covers; its last day ended two days before today, so "the data ends
#: yesterday" holds with a day to spare and every row is well inside a 30-day TTL.
DAYS = 3
#: The sample lake's first day.
START = TODAY - dt.timedelta(days=DAYS + 2)
#: The sample lake's interval as instants: [BEGIN, END), END midnight UTC after its last day.
BEGIN = dt.datetime.combine(START, dt.time(), UTC)
END = BEGIN + dt.timedelta(days=DAYS)


def day(offset: int = 0) -> dt.date:
    """The sample lake's first day moved by ``offset`` days (``day(1)`` is its second day)."""
    return START + dt.timedelta(days=offset)


def iso_day(offset: int = 0) -> str:
    """``day(offset)`` as ``YYYY-MM-DD``."""
    return day(offset).isoformat()


def at(days: float = 0, **delta: float) -> dt.datetime:
    """The instant ``days`` days (and ``hours=``, ``minutes=``, ``seconds=``) after ``BEGIN``,
    timezone-aware."""
    return BEGIN + dt.timedelta(days=days, **delta)


def iso(days: float = 0, **delta: float) -> str:
    """``at(...)`` as ISO 8601 with its offset, e.g. ``YYYY-MM-DDT06:00:00+00:00``."""
    return at(days, **delta).isoformat()


def zulu(days: float = 0, **delta: float) -> str:
    """``at(...)`` as ISO 8601 with ``Z``, as a user would type it into a form."""
    return at(days, **delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def partition(offset: int = 0) -> str:
    """The lake's and offline store's folder name of ``day(offset)``: ``day=YYYY-MM-DD``."""
    return f"day={iso_day(offset)}"
