"""No test data carries a fixed calendar date.

A date written into a test ages: the suite once began failing on the day its sample rows grew
older than the feature view's 30-day TTL. Test data takes its dates from ``tests.helpers.clock``
(relative to today). A literal that is not about the calendar at all (a malformed or
out-of-range timestamp sent as hostile input, say) says so on its line with
``# fixed-date: <why>``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ISO_DATE = re.compile(r"(?<!\d)(1[6-9]|2\d)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?!\d)")
COMPACT_DATE = re.compile(r"(?<![\d.])(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
CALENDAR_CALLS = {"date", "datetime", "Timestamp"}
MARKER = "# fixed-date:"


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def fixed_dates(source: str) -> list[tuple[int, str]]:
    """(line, text) of each calendar date written into ``source``, unless its lines say
    ``# fixed-date:``."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if match := ISO_DATE.search(node.value) or COMPACT_DATE.search(node.value):
                what = match.group(0)
        elif (isinstance(node, ast.Call) and _callee(node) in CALENDAR_CALLS and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, int)
              and 1600 <= node.args[0].value <= 2999):
            what = ast.get_source_segment(source, node)
        if what is None:
            continue
        span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
        if not any(MARKER in line for line in span):
            found.append((node.lineno, what))
    return found


def test_no_test_writes_a_calendar_date():
    offenders = [f"{path.relative_to(TESTS.parent)}:{line}: {what}"
                 for path in sorted(TESTS.rglob("*.py")) if path != Path(__file__).resolve()
                 for line, what in fixed_dates(path.read_text())]
    assert not offenders, ("test data with a fixed calendar date (use tests.helpers.clock, or "
                           f"say '{MARKER} <why>' on the line):\n" + "\n".join(offenders))


def test_the_guard_finds_what_it_should():
    assert fixed_dates('x = "2026-11-01"\n') == [(1, "2026-11-01")]
    assert fixed_dates("x = dt.date(2026, 11, 1)\n") == [(1, "dt.date(2026, 11, 1)")]
    assert fixed_dates("x = dt.datetime(2030, 1, 1, tzinfo=UTC)\n")
    assert fixed_dates('x = pd.Timestamp(2026, 1, 2)\n')
    assert fixed_dates('x = f"day={d}/20261101.parquet"\n') == [(1, "20261101")]
    assert fixed_dates('x = "1677-09-21T00:12:44Z"  # fixed-date: below pandas\' range\n') == []
    assert fixed_dates("x = clock.day(1)\ny = 'port 20261'\nz = '3.20261101'\n") == []
