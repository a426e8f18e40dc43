"""Feast: apply the feature repo, materialize, build training snapshots, read online features."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.core.io import atomic_write_json, atomic_write_parquet, table_hash
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data.ingest import OFFLINE_TABLE

log = logging.getLogger(__name__)

PROJECT = "customer_segments"
FEATURE_VIEW = "customer_profile"


@dataclass(frozen=True)
class Snapshot:
    """A training snapshot: Parquet files named by the hash of their content."""

    path: str
    data_hash: str
    rows: int
    start: str
    end: str
    feature_service: str
    files: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:

        data = json.loads((Path(path) / "snapshot.json").read_text())
        # The folder it was loaded from wins over the recorded path (moved or re-mounted).
        return cls(**{**data, "path": str(Path(path).resolve())})

    def frame(self) -> pd.DataFrame:
        tables = [pq.read_table(Path(self.path) / f) for f in self.files]
        return pa.concat_tables(tables).to_pandas()


def repo_config(settings: Settings):
    """The Feast configuration of this deployment (embedded default or production)."""
    from feast.repo_config import RepoConfig

    if settings.profile == "production":
        online = {"type": "redis", "connection_string": settings.redis_connection_string}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_dir / "online.db")}
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(settings.feast_dir / "registry.db"),
        online_store=online,
        offline_store={"type": "dask"},
        entity_key_serialization_version=3,
        repo_path=str(settings.home),
    )


def feature_store(settings: Settings):
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def apply_repo(settings: Settings) -> list[str]:
    """Register the declarations of ``feature_repo/`` (what ``feast apply`` does)."""
    from feast.repo_operations import parse_repo


    store = feature_store(settings)
    repo = str(Path(settings.feast_repo).resolve())
    # The repo's modules import each other by bare name and parse_repo names modules relative to
    # the working folder, as under `feast apply` run in the repo.
    added = repo not in sys.path
    if added:
        sys.path.insert(0, repo)
    try:
        with contextlib.chdir(repo):
            contents = parse_repo(Path(repo))
    finally:
        if added:
            sys.path.remove(repo)
    objects = [
        *contents.entities,
        *contents.data_sources,
        *contents.feature_views,
        *contents.feature_services,
    ]
    store.apply(objects)
    names = sorted(o.name for o in objects)
    log.info("applied feast objects %s", names)
    return names


def materialize(settings: Settings, start: dt.datetime, end: dt.datetime) -> None:
    """Load the latest feature values of [start, end) into the online store."""
    feature_store(settings).materialize(start_date=start, end_date=end)


def _entities(settings: Settings, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    table_dir = Path(settings.offline_dir) / OFFLINE_TABLE
    if not table_dir.exists():
        raise FileNotFoundError(f"offline table {table_dir} is missing; run `kmeans ingest` first")
    dataset = ds.dataset(table_dir, format="parquet", partitioning="hive")
    ts = ds.field("event_timestamp")
    ids = dataset.to_table(
        columns=["customer_id"],
        filter=(ts >= pa.scalar(pd.Timestamp(start), pa.timestamp("us", tz="UTC")))
        & (ts < pa.scalar(pd.Timestamp(end), pa.timestamp("us", tz="UTC"))),
    )["customer_id"]
    unique = np.unique(ids.to_numpy())
    return pd.DataFrame({"customer_id": unique.astype("int64"),
                         "event_timestamp": pd.Timestamp(end)})


def training_snapshot(
    settings: Settings, start: dt.datetime, end: dt.datetime, *, partitions: int | None = None
) -> Snapshot:
    """Point-in-time training frame of every customer active in [start, end), as of ``end``.

    Features come from ``get_historical_features`` on the feature service, so training reads the
    same feature set the server reads online. The snapshot folder is named by the content hash,
    so the same interval over the same data gives the same snapshot.
    """
    start, end = _utc(start), _utc(end)
    entity_df = _entities(settings, start, end)
    if entity_df.empty:
        raise ValueError(f"no customers with activity in [{start}, {end})")
    store = feature_store(settings)
    service = store.get_feature_service(settings.feature_service)
    frame = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    frame = frame[["customer_id", *FEATURE_NAMES]].sort_values("customer_id", kind="stable")
    frame = frame.reset_index(drop=True).astype({c: "float64" for c in FEATURE_NAMES})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    digest = table_hash(table)
    out = settings.snapshots_dir / digest[:16]
    parts = max(1, min(partitions or settings.spark_partitions, len(frame)))
    for stale in out.glob("part-*.parquet"):  # an earlier split of the same data
        stale.unlink()
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    files = []
    for i in range(parts):
        name = f"part-{i:05d}.parquet"
        atomic_write_parquet(out / name, table.slice(bounds[i], bounds[i + 1] - bounds[i]))
        files.append(name)
    snap = Snapshot(path=str(out), data_hash=digest, rows=len(frame), start=start.isoformat(),
                    end=end.isoformat(), feature_service=settings.feature_service, files=files)
    atomic_write_json(out / "snapshot.json", snap.to_dict())
    log.info("snapshot %s: %d rows in %d files", out, len(frame), parts)
    return snap


def online_features(store, feature_service: str, customer_ids: list[int]) -> pd.DataFrame:
    """Online feature rows for the ids, in order; unknown ids come back with all features null."""
    service = store.get_feature_service(feature_service)
    resp = store.get_online_features(
        features=service, entity_rows=[{"customer_id": int(i)} for i in customer_ids]
    )
    return pd.DataFrame(resp.to_dict())


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)
