"""Ingest: land one data interval of the lake in the offline feature table.

Rows that break a rule are not dropped silently: they go to ``<home>/rejected/<table>/day=...``
with a ``reject_reason`` column. Every partition is overwritten as a whole, so re-running an
interval gives the same files.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.io import atomic_write_parquet
from pipeline.core.settings import FEATURE_NAMES, FEATURES, Settings
from pipeline.data.datagen import LAKE_TABLE

log = logging.getLogger(__name__)

OFFLINE_TABLE = "customer_profile"
KEY_COLUMNS = ["customer_id", "event_timestamp"]
OFFLINE_COLUMNS = [*KEY_COLUMNS, *FEATURE_NAMES, "created_timestamp"]


class SchemaError(ValueError):
    """A source partition lacks columns the platform needs."""


@dataclass
class IngestResult:
    start: str
    end: str
    days: list[str] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    missing_days: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """Days of the half-open interval [start, end)."""
    if end <= start:
        raise ValueError(f"interval end={end} must be after start={start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def split_valid(frame: pd.DataFrame, day: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one day's rows into accepted rows and rejected rows with a ``reject_reason``."""
    missing = [c for c in [*KEY_COLUMNS, *FEATURE_NAMES] if c not in frame.columns]
    if missing:
        raise SchemaError(f"partition day={day} lacks columns {missing}; "
                          f"expected {OFFLINE_COLUMNS}")
    raw = frame  # rejected rows keep the values they arrived with
    frame = frame.copy()
    reason = pd.Series("", index=frame.index, dtype=object)

    def flag(mask: pd.Series, text: str) -> None:
        mask = mask.fillna(False).astype(bool) & (reason == "")
        reason[mask] = text

    ids = pd.to_numeric(frame["customer_id"], errors="coerce")
    flag(ids.isna() | (ids <= 0) | (ids % 1 != 0) | (ids >= 2**63),
         "customer_id missing or not a positive integer")
    ts = pd.to_datetime(frame["event_timestamp"], utc=True, errors="coerce")
    flag(ts.isna(), "event_timestamp missing or not a timestamp")
    day_start = pd.Timestamp(day, tz="UTC")
    flag((ts < day_start) | (ts >= day_start + pd.Timedelta(days=1)),
         f"event_timestamp outside partition day={day}")
    for name, spec in FEATURES.items():
        values = pd.to_numeric(frame[name], errors="coerce")
        flag(frame[name].notna() & values.isna(), f"{name} is not numeric")
        flag(~np.isfinite(values.fillna(0.0)), f"{name} is not finite")
        flag((values < spec["min"]) | (values > spec["max"]),
             f"{name} outside [{spec['min']:g}, {spec['max']:g}]")
        frame[name] = values.astype("float64")
    dup = frame.assign(_id=ids, _ts=ts).duplicated(subset=["_id", "_ts"], keep="first")
    flag(dup, "duplicate (customer_id, event_timestamp)")
    if "created_timestamp" in frame.columns:
        created = pd.to_datetime(frame["created_timestamp"], utc=True, errors="coerce")
        flag(frame["created_timestamp"].notna() & created.isna(),
             "created_timestamp is not a timestamp")
    else:
        created = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")

    bad = reason != ""
    accepted = frame.loc[~bad].copy()
    accepted["customer_id"] = ids[~bad].astype("int64")
    accepted["event_timestamp"] = ts[~bad]
    # A row without a creation time was created when its day was landed.
    accepted["created_timestamp"] = created[~bad].fillna(day_start + pd.Timedelta(days=1))
    rejected = raw.loc[bad].copy()
    rejected["reject_reason"] = reason[bad]
    return accepted[OFFLINE_COLUMNS], rejected


def ingest_lake(settings: Settings, start: dt.date, end: dt.date) -> IngestResult:
    """Land the lake's days in [start, end) in the offline feature table.

    Examples
    --------
    >>> ingest_lake(load_settings(), dt.date(2026, 11, 1), dt.date(2026, 11, 8))  # doctest: +SKIP
    """
    result = IngestResult(start=start.isoformat(), end=end.isoformat())
    for day in days_in(start, end):
        src = Path(settings.lake_dir) / LAKE_TABLE / f"day={day.isoformat()}"
        files = sorted(src.glob("*.parquet"))
        out = Path(settings.offline_dir) / OFFLINE_TABLE / f"day={day.isoformat()}"
        bad_dir = settings.rejected_dir / OFFLINE_TABLE / f"day={day.isoformat()}"
        if not files:
            # The lake is the source of truth: a day it no longer has must not keep feeding
            # snapshots from an earlier landing.
            for stale in (out / "part-00000.parquet", bad_dir / "part-00000.parquet"):
                stale.unlink(missing_ok=True)
            result.missing_days.append(day.isoformat())
            continue
        frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
        accepted, rejected = split_valid(frame, day)
        atomic_write_parquet(out / "part-00000.parquet",
                             pa.Table.from_pandas(accepted, preserve_index=False))
        bad_file = bad_dir / "part-00000.parquet"
        if len(rejected):
            rejected = rejected.astype({c: "string" for c in rejected.columns
                                        if rejected[c].dtype == object})
            atomic_write_parquet(bad_file, pa.Table.from_pandas(rejected, preserve_index=False))
            for text, count in rejected["reject_reason"].value_counts().items():
                result.reasons[str(text)] = result.reasons.get(str(text), 0) + int(count)
        elif bad_file.exists():
            bad_file.unlink()  # a re-run with clean data leaves no stale rejects behind
        result.days.append(day.isoformat())
        result.accepted += len(accepted)
        result.rejected += len(rejected)
    if not result.days:
        raise FileNotFoundError(
            f"no lake partitions for [{start}, {end}) under {Path(settings.lake_dir) / LAKE_TABLE}"
        )
    log.info("ingested %s", result.to_dict())
    return result
