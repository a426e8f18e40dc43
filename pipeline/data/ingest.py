"""Ingest: land one data interval of the lake in the offline feature table.

Rows that break a rule are not dropped silently: they go to ``<home>/rejected/<table>/day=...``
with a ``reject_reason`` column. Every partition is overwritten as a whole, so re-running an
interval gives the same files.

A day replaces its earlier landing only when it can be trusted:

- A column of the wrong type (``event_timestamp`` stored as int64 epoch seconds, a feature stored
  as strings) rejects the rows of its file with a reason naming the type received and the type
  expected, not a misleading one about the values.
- When more than ``Settings.ingest_max_reject_share`` of a day's rows are rejected, or one of its
  files is not readable Parquet, the day is refused: its landed partition and rejected rows stay
  as they were, the rejected rows of the attempt are kept with their reasons under
  ``<home>/rejected/failed/<table>/day=.../``, the other days are landed, and
  :class:`IngestRefused` names each refused day, its share and the threshold.
- A day gone from the lake (no files, or files without rows) keeps its landing, with a warning
  and the day in ``missing_days``: an outage of the lake must not delete data. Only
  ``delete_missing=True`` (``kmeans ingest --delete-missing``) deletes it. An interval of which
  no day has files is an error and deletes nothing.
- A file that lacks columns refuses its day like an unreadable file (whatever its share of
  the day's rows: landing the rest would replace the day with fewer rows); its rows are kept with
  the reason under ``<home>/rejected/failed/...``.
- Timestamps are parsed value by value (:func:`parse_timestamps`): ISO 8601 text with any offset
  or ``Z``, or without one (taken as UTC), mixed freely in one column, and timestamp types.
- Rows dated in the future (beyond this host's clock plus :data:`FUTURE_TOLERANCE`), before
  ``Settings.ingest_earliest_event`` (sentinel dates such as 1900-01-01), or beyond what pandas
  holds, and rows whose features are all missing are rejected with their reasons.
- Every row read is accepted or rejected: :func:`check_rows_accounted` raises
  :class:`RowsUnaccounted` (a bug, never a data problem) before anything is written otherwise.

Landed partitions and rejected rows hold customer data: they are written owner-only (0600).
The offline table may be in an object store (``KMEANS_OFFLINE_URI``, :class:`StorePath`): each
file is then one object, written whole; rejected rows stay on the local disk.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    StorePath,
    arrow_filesystem,
    atomic_write_parquet,
    table_hash,
    utc_now,
)
from pipeline.core.settings import FEATURE_NAMES, FEATURES, Settings
from pipeline.data.lake import LAKE_TABLE

log = logging.getLogger(__name__)

OFFLINE_TABLE = "customer_profile"
KEY_COLUMNS = ["customer_id", "event_timestamp"]
OFFLINE_COLUMNS = [*KEY_COLUMNS, *FEATURE_NAMES, "created_timestamp"]
TIMESTAMP_COLUMNS = ("event_timestamp", "created_timestamp")
PART = "part-00000.parquet"
#: Clock skew allowed between the lake's writers and this host before a row counts as future.
FUTURE_TOLERANCE = pd.Timedelta(minutes=5)
#: Folder of ``rejected_dir`` that keeps the rejected rows of refused days.
FAILED_FOLDER = "failed"
#: The earliest event day accepted when the caller gives none (``Settings.ingest_earliest_event``).
EARLIEST_EVENT: dt.date = Settings.model_fields["ingest_earliest_event"].default
#: The days pandas timestamps (nanoseconds) hold whole, [first, last): a time outside them has no
#: day pandas can compute, so it is rejected before any day arithmetic.
FIRST_DAY = pd.Timestamp(pd.Timestamp.min.ceil("D").date(), tz="UTC")
LAST_DAY = pd.Timestamp(pd.Timestamp.max.floor("D").date(), tz="UTC")


class SchemaError(ValueError):
    """A source partition lacks columns the platform needs."""


class RowsUnaccounted(RuntimeError):
    """The rows read are not the rows accepted plus the rows rejected: a bug in the landing,
    raised before anything is written, so no row is ever lost (or doubled) silently."""


def check_rows_accounted(read: int, accepted: int, rejected: int, *, where: str) -> None:
    """Every source's invariant: each row read is accepted or rejected, once. Raises
    :class:`RowsUnaccounted` naming ``where`` (the source and interval) otherwise.

    Examples
    --------
    >>> check_rows_accounted(100, 67, 33, where="sql source shop [start, end)")
    """
    if read != accepted + rejected:
        raise RowsUnaccounted(
            f"{where}: {read} rows read but {accepted} accepted + {rejected} rejected = "
            f"{accepted + rejected}: {read - accepted - rejected} rows unaccounted for (a bug: "
            f"nothing was written)")


@dataclass
class IngestResult:
    start: str
    end: str
    days: list[str] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    missing_days: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    #: Days refused (reject share over the threshold, unreadable file): landing kept.
    failed_days: list[str] = field(default_factory=list)
    #: Missing days whose landing was deleted (``delete_missing=True`` only).
    deleted_days: list[str] = field(default_factory=list)
    #: Rows read from the landed days: always ``accepted + rejected``.
    rows: int = 0
    #: Rows of the days whose landing changed: a day landed again with the same rows adds
    #: none (its day is in ``unchanged_days``), so landing it twice starts no second training.
    new: int = 0
    unchanged_days: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class IngestRefused(ValueError):
    """Some days of the interval were refused and kept their previous landing; the other days
    were landed. ``result`` is what was landed, ``failures`` maps each refused day to why."""

    def __init__(self, result: IngestResult, failures: dict[str, str]):
        self.result = result
        self.failures = failures
        days = len(failures)
        super().__init__(
            f"ingest refused {days} day{'s' if days > 1 else ''} of [{result.start}, "
            f"{result.end}) ({len(result.days)} landed): "
            + "; ".join(f"day={day}: {why}" for day, why in failures.items()))


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """Days of the half-open interval [start, end)."""
    if end <= start:
        raise ValueError(f"interval end={end} must be after start={start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


# ---------------------------------------------------------------- column types


def _expected_type(column: str) -> str | None:
    if column in TIMESTAMP_COLUMNS:
        return "a timestamp"
    if column == "customer_id":
        return "an integer"
    if column in FEATURES:
        return "a number"
    return None


# The kinds of values each expected type accepts. Strings may hold timestamps (parsed row by
# row); numbers stored as strings are a type change, as are booleans for a number.
_FITS = {"a timestamp": {"timestamp", "string"}, "an integer": {"number"},
         "a number": {"number"}}
_INFERRED_KIND = {"string": "string", "integer": "number", "floating": "number",
                  "mixed-integer-float": "number", "decimal": "number", "boolean": "other",
                  "datetime": "timestamp", "datetime64": "timestamp", "date": "timestamp",
                  "bytes": "other", "timedelta": "other", "time": "other", "period": "other",
                  "interval": "other", "complex": "other", "categorical": "other"}


def _received_type(series: pd.Series) -> tuple[str, str] | None:
    """(name, kind) of a column's type; None when its values are judged row by row (no values,
    or an object column of mixed scalars)."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "category", "other"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool", "other"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return str(dtype), "number"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return str(dtype), "timestamp"
    if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        return str(dtype), "other"
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred == "empty":
        return None
    if inferred in _INFERRED_KIND:
        return ("bool" if inferred == "boolean" else inferred), _INFERRED_KIND[inferred]
    first = series.dropna().iloc[0]
    if isinstance(first, dict):
        return "struct", "other"
    if isinstance(first, list | tuple | np.ndarray):
        return "list", "other"
    return None  # mixed scalars (e.g. numbers and text): each row gets its own reason


def type_problems(frame: pd.DataFrame) -> dict[str, str]:
    """Columns whose type cannot hold what they should, each with a reason naming the type
    received and the type expected, e.g. ``event_timestamp has type int64, expected a
    timestamp``."""
    problems = {}
    for column in frame.columns:
        expected = _expected_type(str(column))
        received = None if expected is None else _received_type(frame[column])
        if expected is not None and received is not None and received[1] not in _FITS[expected]:
            problems[str(column)] = f"{column} has type {received[0]}, expected {expected}"
    return problems


def _missing_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in [*KEY_COLUMNS, *FEATURE_NAMES] if c not in frame.columns]


# ---------------------------------------------------------------- timestamps

_LATE_TEXT = re.compile(r"\+?\d{5,}-.*")  # a year past 9999, as PostgreSQL writes it
#: Text with a time and an offset (``Z``, ``+05:00``, ``-0330``, ``+05``); a date alone is naive.
_WITH_OFFSET = r"[T:].*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)\s*$"


def _text_beyond(text: str) -> int:
    """-1 or 1 for the text PostgreSQL gives for what no datetime holds (``-infinity``, a year
    BC; ``infinity``, a year past 9999), else 0."""
    low = text.strip().lower()
    if low in ("infinity", "+infinity") or _LATE_TEXT.fullmatch(low):
        return 1
    if low == "-infinity" or low.endswith(" bc"):
        return -1
    return 0


def _one_timestamp(value: object) -> tuple[pd.Timestamp | None, int]:
    """A value pandas' vectorized ISO 8601 parser left out: (its time, 0) when it is one inside
    the days pandas holds, (None, -1 or 1) when it is a time before or after them, (None, 0)
    when it is not a time."""
    if isinstance(value, str):
        side = _text_beyond(value)
        if side:
            return None, side
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None, 0
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    if not isinstance(value, dt.datetime):  # pd.Timestamp is one too
        return None, 0
    try:
        moment = (value.replace(tzinfo=dt.UTC) if value.tzinfo is None
                  else value.astimezone(dt.UTC))
    except (OverflowError, ValueError):  # an offset that crosses year 1 or 9999
        return None, -1 if value.year < 2000 else 1
    if moment < FIRST_DAY.to_pydatetime():
        return None, -1
    if moment >= LAST_DAY.to_pydatetime():
        return None, 1
    return pd.Timestamp(moment).as_unit("ns"), 0


def _parse_objects(values: pd.Series) -> pd.Series:
    """Times of an object or string column, each value on its own. Text with an offset and
    naive text are parsed apart: pandas' ISO 8601 parser reads a naive value that follows one
    with an offset in that offset, not in UTC."""
    raw = values.to_numpy(dtype=object)
    present = values.notna().to_numpy()
    if pd.api.types.infer_dtype(values, skipna=True) == "string":
        is_text = present
    else:
        is_text = np.fromiter((isinstance(v, str) for v in raw), dtype=bool, count=len(raw))
    text_at = np.flatnonzero(is_text)
    with_offset = pd.Series(raw[text_at], dtype=object).str.contains(
        _WITH_OFFSET, regex=True).to_numpy(dtype=bool)
    out = np.full(len(raw), np.datetime64("NaT"), dtype="datetime64[ns]")
    for at in (text_at[with_offset], text_at[~with_offset], np.flatnonzero(present & ~is_text)):
        if len(at):
            parsed = pd.to_datetime(pd.Series(raw[at], dtype=object), utc=True,
                                    errors="coerce", format="ISO8601")
            out[at] = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    return pd.Series(out, index=values.index).dt.tz_localize("UTC")


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Each value parsed on its own merits: ISO 8601 text with an offset, with ``Z`` or without
    one (naive: taken as UTC), mixed freely in one column (not in the format of the first value,
    as ``pd.to_datetime`` infers it), Python or pandas times, dates (their midnight UTC), and
    timestamp columns. Numbers are not times (an epoch is a type change, see
    :func:`type_problems`).

    Returns ``(times, side)``: the UTC times, NaT where a value is missing, not a time, or outside
    the days pandas holds [:data:`FIRST_DAY`, :data:`LAST_DAY`); ``side`` is -1 where the value
    is a time before them (``-infinity``, 1677-09-21, a year BC), 1 after them (``infinity``,
    a year past 2262), else 0. Index as ``values``.
    """
    side = np.zeros(len(values), dtype=np.int8)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        times = pd.to_datetime(values, utc=True)  # its unit kept: what was landed before
    elif pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype):
        times = _parse_objects(values)
        left = np.flatnonzero((times.isna() & values.notna()).to_numpy())
        if len(left):
            raw = values.to_numpy(dtype=object)
            parsed = [_one_timestamp(raw[i]) for i in left]
            found = [(i, stamp) for i, (stamp, _) in zip(left, parsed, strict=True)
                     if stamp is not None]
            if found:
                times = times.copy()
                times.iloc[[i for i, _ in found]] = [stamp for _, stamp in found]
            side[left] = [s for _, s in parsed]
    else:  # numbers, booleans: not times
        times = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    early, late = (times < FIRST_DAY).to_numpy(), (times >= LAST_DAY).to_numpy()
    if early.any() or late.any():  # a unit coarser than ns holds them: outside all the same
        side[early], side[late] = -1, 1
        times = times.where(~(early | late))
    return times, pd.Series(side, index=values.index)


# ---------------------------------------------------------------- rows


def _midnight(day: dt.date) -> pd.Timestamp | None:
    """The start of ``day`` in UTC; None for a day pandas cannot hold whole."""
    try:
        start = pd.Timestamp(day, tz="UTC")
    except (OverflowError, ValueError):  # pandas' OutOfBoundsDatetime is a ValueError
        return None
    return start if FIRST_DAY <= start < LAST_DAY else None


def split_valid(frame: pd.DataFrame, day: dt.date, *, now: dt.datetime | None = None,
                earliest: dt.date | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one day's rows into accepted rows and rejected rows with a ``reject_reason``; the
    rejected rows keep their index (the rows' positions for the callers that count on it).

    ``now`` (default: the clock) is the time after which (plus :data:`FUTURE_TOLERANCE`) a row's
    timestamps count as future; ``earliest`` (default :data:`EARLIEST_EVENT`; the sources pass
    ``Settings.ingest_earliest_event``) the first day they may be on. Timestamps are parsed
    value by value (:func:`parse_timestamps`); each row is accepted or rejected, never dropped
    (:func:`check_rows_accounted`).
    """
    missing = _missing_columns(frame)
    if missing:
        raise SchemaError(f"partition day={day} lacks columns {missing}; "
                          f"expected {OFFLINE_COLUMNS}")
    raw = frame  # rejected rows keep the values they arrived with
    frame = frame.copy()
    reason = pd.Series("", index=frame.index, dtype=object)

    def flag(mask: pd.Series, text: str) -> None:
        mask = mask.fillna(False).astype(bool) & (reason == "")
        reason[mask] = text

    problems = type_problems(frame)
    if problems:
        flag(pd.Series(True, index=frame.index), "; ".join(problems.values()))
        for column in problems:  # its values mean nothing as the expected type
            frame[column] = np.nan
    latest = pd.Timestamp(now if now is not None else utc_now())
    if latest.tzinfo is None:
        latest = latest.tz_localize("UTC")
    latest += FUTURE_TOLERANCE

    first = pd.Timestamp((earliest or EARLIEST_EVENT).isoformat(), tz="UTC")
    too_early = f"before ingest_earliest_event={first.date()}"

    ids = pd.to_numeric(frame["customer_id"], errors="coerce")
    flag(ids.isna() | (ids <= 0) | (ids % 1 != 0) | (ids >= 2**63),
         "customer_id missing or not a positive integer")
    ts, side = parse_timestamps(frame["event_timestamp"])
    flag(side < 0, f"event_timestamp {too_early}")
    flag(side > 0, "event_timestamp in the future")
    flag(ts.isna(), "event_timestamp missing or not a timestamp")
    flag(ts > latest, "event_timestamp in the future")
    flag(ts < first, f"event_timestamp {too_early}")
    day_start = _midnight(day)
    day_end = None if day_start is None else day_start + pd.Timedelta(days=1)
    outside = f"event_timestamp outside partition day={day}"
    if day_start is None:
        flag(pd.Series(True, index=frame.index), outside)
    else:
        flag((ts < day_start) | (ts >= day_end), outside)
    values: dict[str, pd.Series] = {}
    for name, spec in FEATURES.items():
        values[name] = pd.to_numeric(frame[name], errors="coerce")
        flag(frame[name].notna() & values[name].isna(), f"{name} is not numeric")
        flag(~np.isfinite(values[name].fillna(0.0)), f"{name} is not finite")
        flag((values[name] < spec["min"]) | (values[name] > spec["max"]),
             f"{name} outside [{spec['min']:g}, {spec['max']:g}]")
        frame[name] = values[name].astype("float64")
    # A row that says nothing about the customer would be imputed into an average customer.
    flag(pd.DataFrame(values).isna().all(axis=1), "every feature is missing")
    # Among rows still accepted only: a rejected row must not shadow its corrected resend.
    keys = frame.assign(_id=ids, _ts=ts).loc[reason == "", ["_id", "_ts"]]
    flag(keys.duplicated(keep="first").reindex(frame.index, fill_value=False),
         "duplicate (customer_id, event_timestamp)")
    if "created_timestamp" in frame.columns:
        created, created_side = parse_timestamps(frame["created_timestamp"])
        flag(created_side < 0, f"created_timestamp {too_early}")
        flag(created_side > 0, "created_timestamp in the future")
        flag(frame["created_timestamp"].notna() & created.isna(),
             "created_timestamp is not a timestamp")
        # Feast breaks ties by creation time: a future one would win over every later fix. The
        # end of the row's day is allowed even if still ahead (the landing time of a day).
        flag(created > (latest if day_end is None else max(latest, day_end)),
             "created_timestamp in the future")
        flag(created < first, f"created_timestamp {too_early}")
    else:
        created = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")

    bad = reason != ""
    accepted = frame.loc[~bad].copy()
    accepted["customer_id"] = ids[~bad].astype("int64")
    accepted["event_timestamp"] = ts[~bad]
    # A row without a creation time was created when its day was landed (day_end is set when
    # any row is accepted: outside the days pandas holds, every row is rejected).
    accepted["created_timestamp"] = created[~bad].fillna(day_end if day_end is not None
                                                         else pd.NaT)
    rejected = raw.loc[bad].copy()
    rejected["reject_reason"] = reason[bad]
    check_rows_accounted(len(frame), len(accepted), len(rejected),
                         where=f"split_valid day={day}")
    return accepted[OFFLINE_COLUMNS], rejected


@dataclass
class _Day:
    """One lake day as read: rows to check, rows already rejected by file, unreadable files,
    files that lack columns (each with its rows and the reason)."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    rejected: list[pd.DataFrame] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    incomplete: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    rows: int = 0


def _read_day(fs: pafs.FileSystem, files: list[str]) -> _Day:
    """Read a day's files one by one: a file whose columns are of the wrong type has all its
    rows rejected with that reason, before files are combined (combining an int64 column with a
    timestamp column would hide the type change); a file that lacks columns is set apart (it
    refuses the day)."""
    day = _Day()
    for path in files:
        try:
            frame = pq.read_table(path, filesystem=fs).to_pandas()
        except (OSError, pa.ArrowException) as err:
            # One line, of bounded length: Arrow's messages may hold the whole schema.
            detail = " ".join(str(err).split())
            detail = detail if len(detail) <= 200 else detail[:200] + "..."
            day.unreadable.append(f"{path} ({type(err).__name__}: {detail})")
            continue
        day.rows += len(frame)
        missing = _missing_columns(frame)
        problems = list(type_problems(frame).values())
        if missing:
            problems.insert(0, f"file lacks columns {missing}")
            day.incomplete.append((f"{path} lacks columns {missing} ({len(frame)} rows)",
                                   frame.assign(reject_reason="; ".join(problems))))
        elif problems:
            day.rejected.append(frame.assign(reject_reason="; ".join(problems)))
        else:
            day.frames.append(frame)
    return day


def _empty_offline() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": pd.Series(dtype="int64"),
        "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
        **{name: pd.Series(dtype="float64") for name in FEATURE_NAMES},
        "created_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
    })


def _rejected_table(rejected: pd.DataFrame) -> pa.Table:
    # Object columns may mix types (files of one day that disagree): their values as text.
    rejected = rejected.astype({c: "string" for c in rejected.columns
                                if rejected[c].dtype == object})
    return pa.Table.from_pandas(rejected, preserve_index=False)


def _reason_counts(rejected: pd.DataFrame) -> dict[str, int]:
    if rejected.empty:
        return {}
    return {str(k): int(v) for k, v in rejected["reject_reason"].value_counts().items()}


# ---------------------------------------------------------------- ingest


def _same_landing(out: StorePath, table: pa.Table) -> bool:
    """Whether the day's landed file holds exactly ``table`` (same schema, rows and order)."""
    if not out.exists():
        return False
    try:
        return out.read_table().replace_schema_metadata(None).equals(
            table.replace_schema_metadata(None))
    except (OSError, ValueError):  # unreadable: land the day again
        return False


def ingest_lake(settings: Settings, start: dt.date, end: dt.date, *,
                delete_missing: bool = False, now: dt.datetime | None = None) -> IngestResult:
    """Land the lake's days in [start, end) in the offline feature table.

    Days are independent: a refused day keeps its previous landing while the others land, and
    :class:`IngestRefused` is raised at the end. ``delete_missing`` deletes the landing of a
    day gone from the lake (otherwise it is kept, with a warning). ``now`` (default: the
    clock) decides which rows are dated in the future.

    Examples
    --------
    >>> ingest_lake(load_settings(), dt.date(2026, 11, 1), dt.date(2026, 11, 8))  # doctest: +SKIP
    """
    now = now if now is not None else utc_now()
    result = IngestResult(start=start.isoformat(), end=end.isoformat())
    root = settings.lake_url or str(settings.lake_dir)
    try:
        fs, base = arrow_filesystem(root)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"lake {root!r} (KMEANS_LAKE_URL): not a path or a URI pyarrow.fs "
                         f"opens: {' '.join(str(err).split())[:300]}") from err
    lake = f"{root.split('?', 1)[0].rstrip('/')}/{LAKE_TABLE}"  # as people name it (no options)
    sources = {day: _lake_files(fs, f"{base.rstrip('/')}/{LAKE_TABLE}/day={day.isoformat()}",
                                lake)
               for day in days_in(start, end)}
    if not any(sources.values()):
        # Nothing at all: more likely an unmounted or unreachable lake than a deletion.
        raise FileNotFoundError(f"no lake partitions for [{start}, {end}) under {lake}; "
                                f"nothing was landed or deleted")
    failures: dict[str, str] = {}
    for day, files in sources.items():
        key = day.isoformat()
        out = settings.offline_root / OFFLINE_TABLE / f"day={key}" / PART
        bad_file = StorePath.at(settings.rejected_dir / OFFLINE_TABLE / f"day={key}" / PART)
        read = _read_day(fs, files)
        if read.unreadable:
            failures[key] = (f"{len(read.unreadable)} of {len(files)} files are not readable "
                             f"Parquet: {', '.join(read.unreadable)}; the previous landing is "
                             f"kept")
            result.failed_days.append(key)
            continue
        if read.rows == 0:
            _missing_day(result, key, [out, bad_file], delete_missing=delete_missing,
                         what="has no Parquet files" if not files else "holds no rows")
            continue
        if read.incomplete:
            # However few its rows, landing the rest would replace the day with fewer rows.
            kept = _keep_failed_attempt(settings, key, pd.concat(
                [frame for _, frame in read.incomplete], ignore_index=True))
            failures[key] = (f"{len(read.incomplete)} of {len(files)} files lack columns: "
                             f"{', '.join(what for what, _ in read.incomplete)}; expected "
                             f"{OFFLINE_COLUMNS} (created_timestamp optional); the previous "
                             f"landing is kept, the file's rows and the reason are in {kept}")
            result.failed_days.append(key)
            continue
        if read.frames:
            accepted, rejected = split_valid(pd.concat(read.frames, ignore_index=True), day,
                                             now=now, earliest=settings.ingest_earliest_event)
        else:
            accepted, rejected = _empty_offline(), pd.DataFrame({"reject_reason": []})
        parts = [f for f in [*read.rejected, rejected] if len(f)]
        if parts:
            rejected = pd.concat(parts, ignore_index=True)
        check_rows_accounted(read.rows, len(accepted), len(rejected),
                             where=f"lake ingest of day={key}")
        share = len(rejected) / read.rows
        if share > settings.ingest_max_reject_share:
            kept = _keep_failed_attempt(settings, key, rejected)
            failures[key] = (
                f"{len(rejected)} of {read.rows} rows rejected, share {share:.3g} exceeds "
                f"ingest_max_reject_share={settings.ingest_max_reject_share:g} (reasons: "
                f"{_reason_counts(rejected)}); the previous landing is kept, the rejected rows "
                f"and their reasons are in {kept}")
            result.failed_days.append(key)
            continue
        table = pa.Table.from_pandas(accepted, preserve_index=False)
        if _same_landing(out, table):
            result.unchanged_days.append(key)
        else:
            out.write_parquet(table, mode=PRIVATE_FILE_MODE)
            result.new += len(accepted)
        if len(rejected):
            bad_file.write_parquet(_rejected_table(rejected), mode=PRIVATE_FILE_MODE)
            for text, count in _reason_counts(rejected).items():
                result.reasons[text] = result.reasons.get(text, 0) + count
        else:
            bad_file.unlink(missing_ok=True)  # a re-run with clean data leaves no stale rejects
        result.days.append(key)
        result.rows += read.rows
        result.accepted += len(accepted)
        result.rejected += len(rejected)
    if failures:
        raise IngestRefused(result, failures)
    log.info("ingested %s", result.to_dict())
    return result


def _lake_files(fs: pafs.FileSystem, folder: str, lake: str) -> list[str]:
    """The Parquet files of one day folder of the lake (none when it is missing), by name."""
    try:
        found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError as err:  # unreachable store, refused credentials
        detail = " ".join(str(err).split())[:300]
        raise LakeUnreadable(f"lake {lake} cannot be listed ({type(err).__name__}: "
                             f"{detail}); nothing was landed") from err
    return sorted(i.path for i in found
                  if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))


class LakeUnreadable(LookupError):
    """The lake's store cannot be listed: unreachable, or credentials refused."""


def landed_rows(settings: Settings, start: dt.datetime, end: dt.datetime, *,
                files: str = "*.parquet") -> int:
    """Rows of the offline table whose ``event_timestamp`` is in [start, end), among the files
    named like ``files`` (``stream-*.parquet``: the stream's) of the interval's days.

    Examples
    --------
    >>> landed_rows(load_settings(), start, end, files="stream-*.parquet")  # doctest: +SKIP
    """
    table_dir = settings.offline_root / OFFLINE_TABLE
    first, last = start.astimezone(dt.UTC).date(), end.astimezone(dt.UTC).date()
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    paths = sorted(p.path for day in days
                   for p in (table_dir / f"day={day.isoformat()}").glob(files))
    if not paths:
        return 0
    ts = pads.field("event_timestamp")
    bounds = [pa.scalar(pd.Timestamp(t), pa.timestamp("us", tz="UTC")) for t in (start, end)]
    return pads.dataset(paths, format="parquet", filesystem=table_dir.fs).count_rows(
        filter=(ts >= bounds[0]) & (ts < bounds[1]))


def _missing_day(result: IngestResult, key: str, landed: list[StorePath], *,
                 delete_missing: bool, what: str) -> None:
    result.missing_days.append(key)
    present = [p for p in landed if p.exists()]
    if delete_missing:
        # The lake is the source of truth: a day it no longer has must not keep feeding
        # snapshots from an earlier landing.
        for path in present:
            path.unlink()
        if present:
            result.deleted_days.append(key)
            log.warning("lake day %s %s: deleted its landing %s (delete_missing)", key, what,
                        [str(p) for p in present])
    elif present:
        log.warning("lake day %s %s: its landing %s is kept; if the day was removed on "
                    "purpose, re-run with delete_missing=True (kmeans ingest --delete-missing)",
                    key, what, [str(p) for p in present])
    else:
        log.warning("lake day %s %s and was never landed", key, what)


def _keep_failed_attempt(settings: Settings, key: str, rejected: pd.DataFrame) -> Path:
    """Keep a refused day's rejected rows, with their reasons, beside the rejected table; named
    by content, so re-running the same refused data writes the same file."""
    table = _rejected_table(rejected)
    path = (settings.rejected_dir / FAILED_FOLDER / OFFLINE_TABLE / f"day={key}"
            / f"attempt-{table_hash(table)[:16]}.parquet")
    if not path.exists():
        atomic_write_parquet(path, table, mode=PRIVATE_FILE_MODE)
    return path
