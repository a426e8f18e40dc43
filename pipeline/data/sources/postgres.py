"""PostgreSQL: a table or a query read by a watermark column, landed one interval at a time.

Reading (:func:`read_interval`): the rows with ``start <= watermark < end``, ordered by the
watermark then the key columns (``customer_id, event_timestamp``), come through a server-side
(named) cursor in chunks of ``chunk_rows``, each a pandas frame: memory holds one chunk, not the
table. A table name is quoted as an identifier (``schema.table`` allowed; names are taken as
written, so case-sensitive); a query (``SELECT ...``/``WITH ...``) must parse as one statement on
its own (PostgreSQL's ``EXPLAIN`` of it alone, before anything is read: a query that closes the
subquery early, ``SELECT * FROM ev) AS k --``, is refused) and is wrapped as a subquery on lines
of its own, so a trailing ``-- comment`` ends at its line. The session runs in UTC; a
``timestamp`` without time zone is read as UTC. ``numeric`` columns are read as floats. A value
Python cannot hold (``infinity``, a year BC or past 9999 in a date or timestamp column) fails
the fast read; the landing then reads the interval again with loaders that keep such a value as
PostgreSQL's text, and its row is quarantined with a reason naming the column (when the
landing uses the column; an extra column's text is only kept in the quarantine).

Landing (:func:`land_interval`), the contract of every source (:mod:`pipeline.data.sources`):

- The rows are validated per day of their ``event_timestamp`` by
  :func:`pipeline.data.ingest.split_valid`, the ingest rules (times parsed value by value, ISO
  8601 text without an offset taken as UTC; event days from
  ``Settings.ingest_earliest_event`` to now). Every row read is accepted or rejected
  (:func:`pipeline.data.ingest.check_rows_accounted`, checked before anything is written). A
  relation without a
  ``created_timestamp`` column gets the watermark as creation time: Feast breaks ties by it, so a
  row updated in the database (a later watermark) wins over its earlier landing.
- Accepted rows of each day go to
  ``<offline>/customer_profile/day=<day>/sql-<source>-<start>-<end>.parquet`` (beside the lake
  ingest's ``part-00000.parquet`` and the stream's files; Feast reads them all), sorted by
  ``(customer_id, event_timestamp)``; rejected rows, with every column they arrived with and a
  ``reject_reason``, to ``<rejected>/sql/<source>/<start>-<end>.parquet``.
- Of the rows of one ``(customer_id, event_timestamp)`` in an interval, the one with the
  latest watermark lands, the others are quarantined as duplicates.
- Idempotent per interval: re-landing the same interval rewrites the same files (byte-identical
  for the same rows) and removes those of its earlier landing that the new one no longer has (a
  day whose rows were deleted). An interval that contains earlier intervals of the source
  replaces them; one that partly overlaps an earlier interval is refused (its rows would land
  twice).
- The interval's rows are held in memory while they are validated and written (the cursor
  bounds what the read holds, not the landing): land a large backfill as several intervals.
- More than ``Settings.ingest_max_reject_share`` rows rejected: the interval is refused
  (:class:`IntervalRefused`), its earlier landing kept, the attempt's rejected rows kept under
  ``<rejected>/failed/sql/<source>/``.
- The result: ``source, start, end, rows, accepted, rejected, reasons, days, files, replaced,
  checksum``; ``checksum`` is :func:`checksum` of the accepted rows (sha256 over the offline
  columns, rows sorted by customer, event time and creation time).

Incremental (:func:`land_new`): the source's watermark is stored in
``<home>/sources/<source>.json``, written atomically after the landing succeeded. Each run lands
``[stored watermark, now - lag)`` and stores ``now - lag``. The lag is how late a row may commit
after its watermark value (a transaction open for a while, a replica behind, a writer's clock):
such a row is picked up as long as it is visible before the interval closes at ``now - lag``. A
row that commits later than the lag falls in an interval already landed and is **missed** by the
incremental runs; re-land that interval explicitly (:func:`land_interval`, ``kmeans ingest-sql
--start --end``) to pick it up. The first run starts at ``start``, or else at the relation's
earliest watermark.

Errors are one clear line: :class:`SourceUnavailable` (a ``ConnectionError`` and a
``ValueError``) when the server cannot be reached, ``ValueError`` for a bad name, a missing
table or column, or a query PostgreSQL refuses; the URL is always shown without its password.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader
from psycopg.types.numeric import FloatLoader

from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    StorePath,
    atomic_write_json,
    atomic_write_parquet,
    file_lock,
    private_dir,
    utc_now,
)
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data.ingest import (
    FAILED_FOLDER,
    OFFLINE_COLUMNS,
    OFFLINE_TABLE,
    RowsUnaccounted,
    _reason_counts,
    _rejected_table,
    _text_beyond,
    check_rows_accounted,
    parse_timestamps,
    split_valid,
)

log = logging.getLogger(__name__)

#: Prefix of this source kind's files in the offline table and the quarantine.
KIND = "sql"
DEFAULT_CHUNK_ROWS = 50_000
#: The columns that, after the watermark, order the rows (deterministic chunks and files).
DEFAULT_KEY_COLUMNS = ("customer_id", "event_timestamp")
CONNECT_TIMEOUT_SECONDS = 10
_SOURCE_NAME = re.compile(r"[a-z0-9_]{1,64}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_QUERY = re.compile(r"\s*(\(|select\b|with\b|values\b|table\b)", re.IGNORECASE)
_KEY_FORMAT = "%Y%m%dT%H%M%S%fZ"
_KEY = r"\d{8}T\d{12}Z"
_PASSWORD_ITEM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


class SourceUnavailable(ConnectionError, ValueError):
    """The database cannot be reached (a ``ValueError`` too: the CLI reports it as one line)."""


class IntervalRefused(ValueError):
    """Too many rows of the interval were rejected; its earlier landing is kept."""


class UnreadableValue(ValueError):
    """A value of the relation that Python cannot hold (``infinity``, a year BC or past 9999):
    :func:`read_interval` raises it unless ``lenient``; the landing then reads leniently."""


# ---------------------------------------------------------------- names


def redact(url: str) -> str:
    """``url`` without its password (a URL's ``user:password@``, a ``password=`` item)."""
    text = _PASSWORD_ITEM.sub(r"\1***", url)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def check_source_name(name: str) -> str:
    if not _SOURCE_NAME.fullmatch(name):
        raise ValueError(f"source name {name!r} must be 1 to 64 of a-z, 0-9 and _")
    return name


def default_source_name(query_or_table: str) -> str:
    """A source name derived from a table name (``sales.orders`` -> ``sales_orders``); a query
    has none: it needs an explicit name."""
    if _QUERY.match(query_or_table):
        raise ValueError("a query needs a source name (--source NAME)")
    return check_source_name(re.sub(r"[^a-z0-9_]", "_", query_or_table.strip().lower())[:64])


def _identifier(name: str, what: str) -> sql.Identifier:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a plain identifier (letters, digits, _ and $, "
                         f"not starting with a digit, at most 63 characters)")
    return sql.Identifier(name)


def _relation(query_or_table: str) -> sql.Composable:
    """The relation to read from: a (schema-qualified) table as quoted identifiers, or a query
    as a subquery."""
    if _QUERY.match(query_or_table):
        query = query_or_table.strip().rstrip(";").strip()
        if ";" in query:
            raise ValueError("the query must be a single statement (no ';')")
        # Always run with parameters (the interval): a '%' of the query is itself, not one.
        # On lines of its own: a trailing "-- comment" ends at its line, not at our ')'.
        return sql.SQL("(\n{}\n) AS kmeans_source").format(_query_text(query))
    parts = query_or_table.strip().split(".")
    if len(parts) > 2:
        raise ValueError(f"table {query_or_table!r}: expected table or schema.table")
    for part in parts:
        _identifier(part, "table name part")
    return sql.Identifier(*parts)


def _query_text(query: str) -> sql.SQL:
    return sql.SQL(query.replace("%", "%%"))


def _check_query(conn: psycopg.Connection, query_or_table: str, url: str) -> None:
    """A query must parse as one statement on its own (``EXPLAIN`` of it alone, which plans it
    without running it): one that closes the subquery it is wrapped in early would escape the
    interval's WHERE clause (``SELECT * FROM ev) AS k --``)."""
    if not _QUERY.match(query_or_table):
        return
    query = query_or_table.strip().rstrip(";").strip()
    try:
        conn.execute(sql.SQL("EXPLAIN\n{}\n").format(_query_text(query)), ())
    except psycopg.errors.SyntaxError as err:
        raise ValueError(f"the query {query_or_table!r} does not parse as one statement on its "
                         f"own ({_one_line(err)}): give a table name (schema.table, a view), or "
                         f"one SELECT whose parentheses, quotes and comments close within it"
                         ) from None
    except psycopg.OperationalError as err:
        raise SourceUnavailable(f"lost PostgreSQL at {redact(url)}: {_one_line(err)}") from None
    except psycopg.Error as err:
        raise _refused(err, url, f"reading {query_or_table!r}") from None


def _utc(value: dt.datetime) -> dt.datetime:
    """A naive time is UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time (a date alone is its midnight), naive meaning UTC."""
    try:
        return _utc(dt.datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-30T12:00:00Z)") from None


def _key(value: dt.datetime) -> str:
    return _utc(value).strftime(_KEY_FORMAT)


def _from_key(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _KEY_FORMAT).replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- reading


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _lenient(loader: type[psycopg.adapt.Loader]) -> type[psycopg.adapt.Loader]:
    """``loader`` that gives a value Python cannot hold as PostgreSQL's text of it (pure Python,
    several times slower than the C loaders: only for a re-read)."""

    class Lenient(loader):  # type: ignore[valid-type, misc]
        def load(self, data: Any) -> Any:
            try:
                return super().load(data)
            except psycopg.DataError:
                return bytes(data).decode()

    return Lenient


@contextmanager
def connect(url: str, *, lenient: bool = False) -> Iterator[psycopg.Connection]:
    """A read-only connection in UTC that reads ``numeric`` as float; one clear error if the
    server cannot be reached. ``lenient``: dates and timestamps Python cannot hold are read as
    their text."""
    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.OperationalError as err:
        raise SourceUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: "
                                f"{_one_line(err)}") from None
    except psycopg.ProgrammingError as err:  # a malformed URL or conninfo
        raise ValueError(f"bad PostgreSQL URL {redact(url)}: {_one_line(err)}") from None
    try:
        conn.adapters.register_loader("numeric", FloatLoader)
        if lenient:
            for name, loader in (("timestamptz", TimestamptzLoader),
                                 ("timestamp", TimestampLoader), ("date", DateLoader)):
                conn.adapters.register_loader(name, _lenient(loader))
        conn.read_only = True
        conn.execute("SET TIME ZONE 'UTC'")
        conn.commit()  # the setting stays for the session
        yield conn
    finally:
        conn.close()


def _refused(err: psycopg.Error, url: str, what: str) -> ValueError:
    return ValueError(f"PostgreSQL at {redact(url)} refused {what}: {_one_line(err)}")


def read_interval(url: str, query_or_table: str, watermark_column: str, start: dt.datetime,
                  end: dt.datetime, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                  key_columns: Sequence[str] = DEFAULT_KEY_COLUMNS,
                  lenient: bool = False) -> Iterator[pd.DataFrame]:
    """The rows with ``start <= watermark < end``, ordered by the watermark then
    ``key_columns``, as frames of at most ``chunk_rows`` rows, read through a server-side
    cursor in one read-only transaction (naive times are UTC). A value Python cannot hold
    raises :class:`UnreadableValue`, or with ``lenient`` is read as PostgreSQL's text."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"interval end={end.isoformat()} must be after start={start.isoformat()}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows} must be at least 1")
    watermark = _identifier(watermark_column, "watermark column")
    order = sql.SQL(", ").join([watermark, *(_identifier(k, "key column") for k in key_columns)])
    query = sql.SQL("SELECT * FROM {relation}\nWHERE {wm} >= %s AND {wm} < %s\nORDER BY {order}"
                    ).format(relation=_relation(query_or_table), wm=watermark, order=order)
    with connect(url, lenient=lenient) as conn:
        _check_query(conn, query_or_table, url)
        with conn.cursor(name=f"kmeans_{uuid.uuid4().hex[:12]}") as cur:
            cur.itersize = chunk_rows
            try:
                cur.execute(query, (start, end))
                columns = [d.name for d in cur.description or []]
                while rows := cur.fetchmany(chunk_rows):
                    yield pd.DataFrame.from_records(rows, columns=columns)
            except psycopg.OperationalError as err:
                raise SourceUnavailable(f"lost PostgreSQL at {redact(url)}: "
                                        f"{_one_line(err)}") from None
            except psycopg.DataError as err:
                if err.sqlstate is None:  # raised by a loader on this side, not by the server
                    raise UnreadableValue(
                        f"{query_or_table!r} holds a value Python cannot hold "
                        f"({_one_line(err)}); land_interval quarantines its row") from None
                raise _refused(err, url, f"reading {query_or_table!r}") from None
            except psycopg.Error as err:
                raise _refused(err, url, f"reading {query_or_table!r}") from None


def earliest_watermark(url: str, query_or_table: str,
                       watermark_column: str) -> dt.datetime | None:
    """The smallest watermark of the relation; None when it has no rows."""
    watermark = _identifier(watermark_column, "watermark column")
    query = sql.SQL("SELECT min({wm}) FROM {relation}").format(
        wm=watermark, relation=_relation(query_or_table))
    with connect(url, lenient=True) as conn:
        _check_query(conn, query_or_table, url)
        try:
            row = conn.execute(query, ()).fetchone()  # () like every query: '%' escaped
        except psycopg.Error as err:
            raise _refused(err, url, f"reading {query_or_table!r}") from None
    value = row[0] if row else None
    if isinstance(value, str) and _text_beyond(value):
        raise ValueError(f"watermark column {watermark_column!r} starts at {value!r}, not a "
                         f"time Python can hold: give the first run a start (--start)")
    if value is not None and not isinstance(value, dt.datetime):
        raise ValueError(f"watermark column {watermark_column!r} holds {type(value).__name__}, "
                         f"expected a timestamp")
    return None if value is None else _utc(value)


# ---------------------------------------------------------------- landing


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "customer_id": frame["customer_id"].astype("int64"),
        "event_timestamp": pd.to_datetime(frame["event_timestamp"], utc=True),
        **{name: frame[name].astype("float64") for name in FEATURE_NAMES},
        "created_timestamp": pd.to_datetime(frame["created_timestamp"], utc=True),
    })
    return out.sort_values(["customer_id", "event_timestamp", "created_timestamp"],
                           kind="stable").reset_index(drop=True)


def checksum(frame: pd.DataFrame) -> str:
    """sha256 of rows in the offline columns, whatever their order: rows sorted by customer,
    event time and creation time; integers and times (ns since the epoch, UTC) as int64,
    features as float64 with one NaN."""
    frame = _normalized(frame)
    digest = hashlib.sha256()
    for column in OFFLINE_COLUMNS:
        values = frame[column]
        if column in FEATURE_NAMES:
            data = np.where(np.isnan(values.to_numpy()), np.nan, values.to_numpy())
        elif pd.api.types.is_datetime64_any_dtype(values):
            data = pd.DatetimeIndex(values).tz_convert("UTC").as_unit("ns").asi8
        else:
            data = values.to_numpy()
        digest.update(column.encode() + b"\0" + np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def _file_name(source: str, start: dt.datetime, end: dt.datetime) -> str:
    return f"{KIND}-{source}-{_key(start)}-{_key(end)}.parquet"


def _landed_intervals(settings: Settings, source: str) -> dict[tuple[dt.datetime, dt.datetime],
                                                             list[StorePath]]:
    """The intervals of ``source`` landed so far, each with its files (offline and quarantine)."""
    pattern = re.compile(rf"(?:{KIND}-{re.escape(source)}-)?(?P<s>{_KEY})-(?P<e>{_KEY})\.parquet")
    table_dir = settings.offline_root / OFFLINE_TABLE
    paths = [*table_dir.glob(f"day=*/{KIND}-{source}-*.parquet"),
             *StorePath.at(settings.rejected_dir / KIND / source).glob("*.parquet")]
    found: dict[tuple[dt.datetime, dt.datetime], list[StorePath]] = {}
    for path in sorted(paths):
        match = pattern.fullmatch(path.name)
        if match:
            found.setdefault((_from_key(match["s"]), _from_key(match["e"])), []).append(path)
    return found


def _split_by_day(frame: pd.DataFrame, now: dt.datetime, fallback: dt.date,
                  earliest: dt.date) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Accepted rows per day of their event time, and every rejected row: each row of
    ``frame`` is one or the other. Event times are parsed as split_valid parses them, value by
    value; one that has no day pandas can hold (NaT) is judged with the ``fallback`` day."""
    ts, _ = parse_timestamps(frame["event_timestamp"])  # NaT outside [FIRST_DAY, LAST_DAY)
    days = ts.dt.floor("D")  # not strftime: ten times slower
    accepted: dict[str, pd.DataFrame] = {}
    rejected = []
    for midnight in sorted(days.dropna().unique()):
        day = pd.Timestamp(midnight).date()
        # Newest watermark first: of one key's rows, the latest version lands (as it would,
        # by its creation time, had the versions landed in two intervals).
        rows = frame.loc[days == midnight].iloc[::-1]
        good, bad = split_valid(rows, day, now=now, earliest=earliest)
        if len(good):
            good = good.sort_values(["customer_id", "event_timestamp"], kind="stable")
            accepted[day.isoformat()] = good.reset_index(drop=True)
        rejected.append(bad)
    undated = days.isna()
    if undated.any():  # no day to check them against: rejected for their timestamp
        good, bad = split_valid(frame.loc[undated], fallback, now=now, earliest=earliest)
        if len(good):  # split_valid rejects a row without a time: one here is a bug
            raise RowsUnaccounted(f"{len(good)} rows without an event day were accepted")
        rejected.append(bad)
    parts = [r for r in rejected if len(r)]
    return accepted, (pd.concat(parts) if parts else frame.iloc[:0].assign(reject_reason=""))


def land_interval(settings: Settings, source_name: str, url: str, query_or_table: str,
                  watermark_column: str, start: dt.datetime, end: dt.datetime, *,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, now: dt.datetime | None = None) -> dict:
    """Land the rows with ``start <= watermark < end`` in the offline table (see the module's
    docstring); ``now`` (default: the clock) decides which rows are dated in the future.

    Examples
    --------
    >>> land_interval(load_settings(), "orders", "postgresql://app@db/shop", "public.orders",
    ...               "updated_at", dt.datetime(2026, 11, 1), dt.datetime(2026, 11, 2))
    ... # doctest: +SKIP
    """
    check_source_name(source_name)
    with _source_lock(settings, source_name):
        return _land(settings, source_name, url, query_or_table, watermark_column, _utc(start),
                     _utc(end), chunk_rows=chunk_rows, now=_utc(now or utc_now()))


@contextmanager
def _source_lock(settings: Settings, source: str) -> Iterator[None]:
    with file_lock(private_dir(settings.home / "sources") / f"{source}.lock"):
        yield


def _land(settings: Settings, source: str, url: str, query_or_table: str, watermark_column: str,
          start: dt.datetime, end: dt.datetime, *, chunk_rows: int, now: dt.datetime) -> dict:
    if end <= start:
        raise ValueError(f"interval end={end.isoformat()} must be after start={start.isoformat()}")
    if end > now:
        log.warning("interval [%s, %s) of source %s ends after now: rows may still arrive in "
                    "it, so a later re-read may differ", start, end, source)
    table_dir = settings.offline_root / OFFLINE_TABLE
    landed = _landed_intervals(settings, source)
    replaced = []
    for (s, e) in landed:
        if (s, e) == (start, end) or e <= start or s >= end:
            continue
        if not (start <= s and e <= end):
            raise ValueError(f"interval [{start.isoformat()}, {end.isoformat()}) of source "
                             f"{source} partly overlaps its landed interval [{s.isoformat()}, "
                             f"{e.isoformat()}): re-land exactly that interval, or one that "
                             f"contains it")
        replaced.append((s, e))

    try:
        frames = list(read_interval(url, query_or_table, watermark_column, start, end,
                                    chunk_rows=chunk_rows))
    except UnreadableValue as err:  # a row to quarantine, not a reason to stop the source
        log.warning("source %s: %s; reading [%s, %s) again with such values as text", source,
                    err, start.isoformat(), end.isoformat())
        frames = list(read_interval(url, query_or_table, watermark_column, start, end,
                                    chunk_rows=chunk_rows, lenient=True))
    frame = pd.concat(frames, ignore_index=True) if frames else None
    if frame is None:  # no rows: nothing to validate, earlier files of the interval go
        accepted: dict[str, pd.DataFrame] = {}
        rejected = pd.DataFrame({"reject_reason": pd.Series(dtype=object)})
        rows = 0
    else:
        rows = len(frame)
        if "created_timestamp" not in frame.columns and watermark_column in frame.columns:
            frame["created_timestamp"] = frame[watermark_column]
        accepted, rejected = _split_by_day(frame, now, start.date(),
                                           settings.ingest_earliest_event)
    check_rows_accounted(rows, sum(len(f) for f in accepted.values()), len(rejected),
                         where=f"sql source {source} [{start.isoformat()}, {end.isoformat()})")

    name = _file_name(source, start, end)
    quarantine = StorePath.at(settings.rejected_dir / KIND / source
                              / name.removeprefix(f"{KIND}-{source}-"))
    if rows and len(rejected) / rows > settings.ingest_max_reject_share:
        table = _rejected_table(rejected)
        kept = (settings.rejected_dir / FAILED_FOLDER / KIND / source
                / f"{quarantine.stem}-attempt.parquet")
        atomic_write_parquet(kept, table, mode=PRIVATE_FILE_MODE)
        raise IntervalRefused(
            f"interval [{start.isoformat()}, {end.isoformat()}) of source {source}: "
            f"{len(rejected)} of {rows} rows rejected, share {len(rejected) / rows:.3g} exceeds "
            f"ingest_max_reject_share={settings.ingest_max_reject_share:g} (reasons: "
            f"{_reason_counts(rejected)}); the earlier landing is kept, the rejected rows and "
            f"their reasons are in {kept}")

    files = []
    for day, good in accepted.items():
        path = table_dir / f"day={day}" / name
        path.write_parquet(pa.Table.from_pandas(good, preserve_index=False),
                           mode=PRIVATE_FILE_MODE)
        files.append(path)
    if len(rejected):
        quarantine.write_parquet(_rejected_table(rejected.reset_index(drop=True)),
                                 mode=PRIVATE_FILE_MODE)
        files.append(quarantine)
    # Only now that the new files are in place: what the earlier landing had and this one not.
    for interval in [(start, end), *replaced]:
        for path in landed.get(interval, []):
            if path not in files:
                path.unlink(missing_ok=True)

    good_rows = [*accepted.values()]
    result = {
        "source": source,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "rows": rows,
        "accepted": sum(len(f) for f in good_rows),
        "rejected": len(rejected),
        "reasons": _reason_counts(rejected),
        "days": list(accepted),
        "files": [str(p) for p in files],
        "replaced": [[s.isoformat(), e.isoformat()] for s, e in replaced],
        "checksum": checksum(pd.concat(good_rows) if good_rows else _empty_rows()),
    }
    log.info("landed %s", {k: v for k, v in result.items() if k != "files"})
    return result


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "customer_id" else
                                      "datetime64[ns, UTC]" if c.endswith("timestamp") else
                                      "float64") for c in OFFLINE_COLUMNS})


# ---------------------------------------------------------------- incremental


def state_path(settings: Settings, source_name: str) -> Path:
    return settings.home / "sources" / f"{check_source_name(source_name)}.json"


def stored_state(settings: Settings, source_name: str) -> dict[str, Any] | None:
    path = state_path(settings, source_name)
    return json.loads(path.read_text()) if path.exists() else None


def land_new(settings: Settings, source_name: str, url: str, query_or_table: str,
             watermark_column: str, *, lag: dt.timedelta = dt.timedelta(minutes=5),
             start: dt.datetime | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
             now: dt.datetime | None = None) -> dict:
    """Land ``[stored watermark, now - lag)`` and store ``now - lag`` as the new watermark
    (see the module's docstring). The first run starts at ``start``, or else at the relation's
    earliest watermark; ``start`` on a later run is an error (re-read with
    :func:`land_interval`)."""
    check_source_name(source_name)
    if lag < dt.timedelta(0):
        raise ValueError(f"lag={lag} must not be negative")
    now = _utc(now or utc_now())
    close = now - lag
    path = state_path(settings, source_name)
    with _source_lock(settings, source_name):
        state = stored_state(settings, source_name)
        if state is not None:
            if start is not None:
                raise ValueError(f"source {source_name} already has a stored watermark "
                                 f"{state['watermark']}; start applies to its first run only "
                                 f"(re-read an interval with --start and --end)")
            if (state["relation"], state["watermark_column"]) != (query_or_table,
                                                                   watermark_column):
                raise ValueError(f"source {source_name} stores the watermark of "
                                 f"{state['relation']!r} by {state['watermark_column']!r}, not of "
                                 f"{query_or_table!r} by {watermark_column!r}")
            begin: dt.datetime | None = dt.datetime.fromisoformat(state["watermark"])
        else:
            begin = _utc(start) if start is not None else earliest_watermark(
                url, query_or_table, watermark_column)
        if begin is None or close <= begin:
            why = "the relation has no rows" if begin is None else "nothing new yet"
            return {"source": source_name, "start": begin and begin.isoformat(),
                    "end": close.isoformat(), "rows": 0, "accepted": 0, "rejected": 0,
                    "reasons": {}, "days": [], "files": [], "replaced": [],
                    "checksum": checksum(_empty_rows()), "watermark": begin and
                    begin.isoformat(), "skipped": why}
        result = _land(settings, source_name, url, query_or_table, watermark_column, begin,
                       close, chunk_rows=chunk_rows, now=now)
        atomic_write_json(path, {
            "source": source_name, "relation": query_or_table,
            "watermark_column": watermark_column, "watermark": close.isoformat(),
            "lag_seconds": lag.total_seconds(), "landed_at": now.isoformat(),
            "last": {k: result[k] for k in ("start", "end", "rows", "accepted", "rejected",
                                            "checksum")}}, mode=PRIVATE_FILE_MODE)
        return {**result, "watermark": close.isoformat()}


def ingest_sql(settings: Settings, *, url: str, table: str, watermark: str,
               start: str | None = None, end: str | None = None, incremental: bool = False,
               lag_seconds: float = 300.0, source: str | None = None) -> dict:
    """What ``kmeans ingest-sql`` runs: an explicit interval, or the next incremental one."""
    name = check_source_name(source) if source else default_source_name(table)
    if incremental:
        if end is not None:
            raise ValueError("--incremental lands [stored watermark, now - lag): it takes no "
                             "--end (re-read an interval with --start and --end alone)")
        return land_new(settings, name, url, table, watermark,
                        lag=dt.timedelta(seconds=lag_seconds),
                        start=parse_time(start) if start else None)
    if start is None or end is None:
        raise ValueError("give --start and --end (an explicit interval), or --incremental")
    return land_interval(settings, name, url, table, watermark, parse_time(start),
                         parse_time(end))
