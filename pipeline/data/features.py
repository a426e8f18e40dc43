"""Feast: apply the feature repo, materialize, build training snapshots, read online features."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.io import (
    StorePath,
    arrow_filesystem,
    atomic_write_json,
    atomic_write_parquet,
    make_private,
    private_dir,
    table_hash,
)
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data.ingest import OFFLINE_TABLE
from pipeline.model import schema

log = logging.getLogger(__name__)

#: The Feast project of the default settings (``KMEANS_FEAST_PROJECT``), as feature_store.yaml
#: names it for the stock CLI.
PROJECT = "customer_segments"

#: The published segments (feature_repo/segments.py): the offline table and its columns, from
#: the one declaration of the segment output (:mod:`pipeline.model.schema`).
SEGMENT_TABLE = "customer_segment"
SEGMENT_VIEW = "customer_segment"
SEGMENT_SCHEMA = schema.arrow_schema(schema.PUBLISHED)
SEGMENT_FIELDS = schema.SEGMENT_FIELDS


def filesystem(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path in it)`` of a snapshot folder or object-store URI. (The
    engine has its own, for Hadoop's scheme names too; the inference server imports this
    module, and the engine is no part of its image.)"""
    return arrow_filesystem(path)


class SnapshotUnreadable(LookupError):
    """The store holding a snapshot cannot be read (unreachable, credentials refused)."""


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
        """The snapshot in a folder, or under an object-store URI (``s3://...``)."""
        fs, base = filesystem(path)
        try:
            with fs.open_input_stream(f"{base}/snapshot.json") as handle:
                data = json.loads(handle.read())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no training snapshot at {path} (snapshot.json is "
                                    "missing)") from err
        except OSError as err:  # an unreachable or refusing store: one line, not a traceback
            raise SnapshotUnreadable(f"cannot read the training snapshot at {path}: "
                                     f"{' '.join(str(err).split())}") from err
        # Where it was loaded from wins over the recorded path (moved or re-mounted).
        where = str(path) if "://" in str(path) else str(Path(path).resolve())
        return cls(**{**data, "path": where})

    def read(self, name: str) -> pa.Table:
        """One of the snapshot's files."""
        fs, base = filesystem(self.path)
        return pq.read_table(f"{base}/{name}", filesystem=fs)

    def frame(self) -> pd.DataFrame:
        return pa.concat_tables([self.read(f) for f in self.files]).to_pandas()


def repo_config(settings: Settings):
    """The Feast configuration of this deployment (embedded default or production).

    The repo path is the feature repo folder, as under the ``feast`` CLI run there, so a relative
    FileSource path resolves the same way for both; the stores live under ``settings.home``.
    """
    from feast.repo_config import RepoConfig

    repo = _repo_dir(settings)
    if settings.profile == "production":
        online = {"type": "redis", "connection_string": settings.redis_connection_string}
    else:
        online = {"type": "sqlite", "path": _beside(online_db(settings), repo)}
    private_dir(settings.feast_dir)  # the stores below hold every customer's latest features
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=str(settings.feast_dir / "registry.db"),
        online_store=online,
        offline_store={"type": "dask"},
        entity_key_serialization_version=3,
        repo_path=repo,
    )


def online_db(settings: Settings) -> Path:
    """The SQLite online store of the embedded default."""
    return settings.feast_dir / "online.db"


def _make_stores_private(settings: Settings) -> None:
    """Owner-only modes (0600) on the SQLite files Feast created with the umask's mode."""
    for path in (online_db(settings), settings.feast_dir / "registry.db"):
        make_private(path)


def _beside(path: Path, repo: Path) -> str:
    """``path`` relative to the repo when it lies in the repo's parent folder, as
    feature_store.yaml writes it: the registry records the SQLite table by its path joined to the
    repo path, and the same string keeps ``feast plan`` from reporting a new table."""
    return os.path.relpath(path, repo) if path.is_relative_to(repo.parent) else str(path)


def feature_store(settings: Settings):
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def apply_repo(settings: Settings) -> list[str]:
    """Register the declarations of ``feature_repo/``, as ``feast apply`` run there does.

    The same Feast routine as the CLI's: objects no longer declared are removed and the online
    tables are recorded, so ``feast plan`` in the repo agrees with the registry afterwards. File
    sources keep their declared path when it already names a table of this home's offline folder
    (the default home beside the repo); otherwise they are pointed at the table of the same name
    in ``settings.offline_dir``.
    """
    from feast import FileSource, Project
    from feast.repo_operations import apply_total_with_repo_instance

    store = feature_store(settings)
    repo = _repo_dir(settings)
    contents = _parse_repo(repo)
    if not contents.projects:  # the CLI's rule: the project named in the configuration
        contents.projects.append(Project(name=settings.feast_project))
    sources = [*contents.data_sources, *(fv.batch_source for fv in contents.feature_views)]
    for source in sources:
        if isinstance(source, FileSource):
            source.file_options.uri = _offline_path(source, repo, settings)
            if settings.offline_uri and source.file_options.uri.startswith(
                    f"{settings.offline_root}/"):
                source.file_options.s3_endpoint_override = s3_endpoint(settings.offline_uri)
    ensure_segment_table(settings)  # before apply's check that each source can be read
    # Feast prints its plan on stdout, as the CLI shows it; the pipeline logs it instead.
    with contextlib.redirect_stdout(io.StringIO()) as plan:
        apply_total_with_repo_instance(store, settings.feast_project, store.registry, contents,
                                       skip_source_validation=False)
    _make_stores_private(settings)
    log.debug("feast apply on %s:\n%s", settings.home, plan.getvalue())
    objects = [
        *contents.entities,
        *contents.data_sources,
        *contents.feature_views,
        *contents.feature_services,
    ]
    names = sorted(o.name for o in objects)
    log.info("applied feast objects %s", names)
    return names


def _repo_dir(settings: Settings) -> Path:
    return Path(settings.feast_repo).expanduser().resolve()


def _parse_repo(repo: Path):
    """The repo's objects, as ``feast apply`` run in the repo collects them, built afresh."""
    from feast.repo_operations import parse_repo

    # The repo's modules import each other by bare name and parse_repo names modules relative to
    # the working folder. They are imported afresh and dropped afterwards, so the objects that
    # apply_repo re-points belong to this call alone (another home may be applied next).
    # Like the CLI, no __pycache__ is left in the repo (it may be read-only in an image).
    added = str(repo) not in sys.path
    if added:
        sys.path.insert(0, str(repo))
    _forget_modules_in(repo)
    no_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        with contextlib.chdir(repo):
            return parse_repo(repo)
    finally:
        sys.dont_write_bytecode = no_bytecode
        _forget_modules_in(repo)
        if added:
            sys.path.remove(str(repo))


def _forget_modules_in(folder: Path) -> None:
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            del sys.modules[name]


def _offline_path(source, repo: Path, settings: Settings) -> str:
    """Where ``source`` (a FileSource) reads from in this deployment.

    Absolute paths and URIs are kept as declared. A relative path names a table of the default
    home's offline folder; it stays relative when it already resolves to this home's table,
    and becomes the table of the same name under ``KMEANS_OFFLINE_URI`` when that is set.
    """
    path = source.path
    if "://" in path or Path(path).is_absolute():
        return path
    declared = (repo / path).resolve()
    if declared.parent.name != settings.offline_dir.name:
        raise ValueError(
            f"FileSource {source.name!r} has path {path!r}, which resolves to {declared}; allowed: "
            f"a path relative to the repo {repo} into an '{settings.offline_dir.name}' folder "
            f"(a table of <home>/{settings.offline_dir.name}), an absolute path or a URI")
    if settings.offline_uri:
        return str(settings.offline_root / declared.name)
    target = (settings.offline_dir / declared.name).resolve()
    return path if declared == target else str(target)


def s3_endpoint(uri: str) -> str:
    """Feast's ``s3_endpoint_override`` (``http://host:port``) of an object-store URI's
    ``endpoint_override``/``scheme`` query options; empty when it names none (AWS itself)."""
    query = parse_qs(urlsplit(uri).query)
    endpoint = query.get("endpoint_override", [""])[0]
    if not endpoint or "://" in endpoint:
        return endpoint
    return f"{query.get('scheme', ['https'])[0]}://{endpoint}"


def ensure_segment_table(settings: Settings) -> StorePath:
    """The published segments' offline table, with an empty schema file so that Feast (and
    ``feast materialize`` of every view) can read it before the first publication."""
    folder = settings.offline_root / SEGMENT_TABLE
    empty = folder / "empty.parquet"
    if not empty.exists():
        empty.write_parquet(SEGMENT_SCHEMA.empty_table())
    return folder


PROFILE_VIEW = "customer_profile"


def materialize(settings: Settings, start: dt.datetime, end: dt.datetime,
                views: list[str] | None = None) -> None:
    """Load the latest values of [start, end) into the online store: the behaviour features
    (``customer_profile``), or the named ``views``. The published segments are materialized by
    their publication alone, so re-materializing an old window never puts an older segment
    back online."""
    views = views or [PROFILE_VIEW]
    # Feast prints its progress to stdout; it goes to the debug log instead (the CLI's stdout
    # carries only its JSON result).
    with contextlib.redirect_stdout(io.StringIO()) as said:
        feature_store(settings).materialize(start_date=start, end_date=end, feature_views=views)
    log.debug("feast materialize: %s", said.getvalue().strip())
    _make_stores_private(settings)


def _entities(settings: Settings, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    table_dir = settings.offline_root / OFFLINE_TABLE
    if not table_dir.exists():
        raise FileNotFoundError(f"offline table {table_dir} is missing; run `kmeans ingest` first")
    dataset = ds.dataset(table_dir.path, filesystem=table_dir.fs, format="parquet",
                         partitioning="hive")
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
    parts = max(1, min(partitions or settings.spark_partitions, len(frame)))
    bounds = np.linspace(0, len(frame), parts + 1).astype(int)
    pieces = {f"part-{i:05d}.parquet": table.slice(bounds[i], bounds[i + 1] - bounds[i])
              for i in range(parts)}
    location = settings.snapshots_location
    if "://" in location:  # an object store: each object is written whole, or not at all
        query = location.split("?", 1)[1] if "?" in location else ""
        prefix = location.split("?", 1)[0].rstrip("/")
        out = f"{prefix}/{digest[:16]}" + (f"?{query}" if query else "")
    else:
        out = str(Path(location) / digest[:16])
    snap = Snapshot(path=out, data_hash=digest, rows=len(frame), start=start.isoformat(),
                    end=end.isoformat(), feature_service=settings.feature_service,
                    files=list(pieces))
    _write_snapshot(out, pieces, snap)
    log.info("snapshot %s: %d rows in %d files", out, len(frame), parts)
    return snap


def _write_snapshot(out: str, pieces: dict[str, pa.Table], snap: Snapshot) -> None:
    """The snapshot's files, then ``snapshot.json`` (last: its presence means whole); a part
    of an earlier split of the same data is removed first."""
    fs, base = filesystem(out)
    local = fs.type_name == "local"
    fs.create_dir(base, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.base_name.startswith("part-") and info.base_name.endswith(".parquet"):
            fs.delete_file(info.path)
    for name, piece in pieces.items():
        if local:
            atomic_write_parquet(Path(base) / name, piece)
        else:
            pq.write_table(piece, f"{base}/{name}", filesystem=fs)
    if local:
        atomic_write_json(Path(base) / "snapshot.json", snap.to_dict())
    else:
        with fs.open_output_stream(f"{base}/snapshot.json") as handle:
            handle.write(json.dumps(snap.to_dict()).encode())


def online_segments(store, customer_ids: list[int]) -> pd.DataFrame:
    """The published segment of each customer (None where none was published), as an
    application reads it: Feast's online store, no model call."""
    rows = store.get_online_features(
        features=[f"{SEGMENT_VIEW}:{name}" for name in SEGMENT_FIELDS],
        entity_rows=[{"customer_id": int(c)} for c in customer_ids]).to_df()
    return rows


def online_features(store, feature_service: str, customer_ids: list[int]) -> pd.DataFrame:
    """Online feature rows for the ids, in order; unknown ids come back with all features null."""
    service = store.get_feature_service(feature_service)
    resp = store.get_online_features(
        features=service, entity_rows=[{"customer_id": int(i)} for i in customer_ids]
    )
    return pd.DataFrame(resp.to_dict())


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
