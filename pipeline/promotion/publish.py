"""Publish every customer's segment: a Spark job scores each customer's latest features with the
champion and writes the ``customer_segment`` feature view, so applications read a customer's
segment through Feast (``get_online_features``, ``feast serve``) without calling the model.

The job reads the offline feature table (``<offline>/customer_profile``, every source's files),
keeps each customer's latest row (by event time, then landing time) and assigns it with the
model's own code (:meth:`SegmentModel.assign`: the same preprocessing and float64 distances as
the server), in Arrow batches on the executors (``mapInPandas``). The model travels to the
executors as its plain arrays (centroids, preprocessing, metadata), not as a pickled object.
Each publication is one folder ``<offline>/customer_segment/published-<time>-v<version>/``,
then materialized to the online store; earlier publications stay for point-in-time reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import registry
from pipeline.core.io import StorePath, arrow_filesystem
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data import features
from pipeline.data.ingest import OFFLINE_TABLE
from pipeline.engine.session import spark_session
from pipeline.model import schema
from pipeline.model.kmeans_segments import Preprocessor, SegmentModel

log = logging.getLogger(__name__)

#: The publishing job's output: the published table's columns (:mod:`pipeline.model.schema`).
OUTPUT_DDL = schema.spark_ddl(schema.PUBLISHED)


def _payload(model) -> dict:
    """What the executors rebuild the model from: arrays and JSON, no pickled object."""
    return {"centroids": np.asarray(model.centroids, dtype=np.float64).tolist(),
            "preprocessor": model.preprocessor.to_dict(),
            "metadata": {k: model.metadata.get(k) for k in ("cluster_ids", "distance_p99")
                         if model.metadata.get(k) is not None}}


def segment_rows(model: SegmentModel, rows: pd.DataFrame, version: str,
                 scored_at: pd.Timestamp) -> pd.DataFrame:
    """The ``customer_segment`` rows of feature rows (customer_id, event_timestamp and the
    features): what the batch job writes and the stream consumer pushes."""
    found = model.assign(rows[FEATURE_NAMES].astype("float64"))
    outputs = {schema.PUBLISHED_AS[c.name]: getattr(found, c.name).astype(c.dtype)
               for c in schema.OUTPUTS if c.name in schema.PUBLISHED_AS}
    columns = {"customer_id": rows["customer_id"].astype("int64").to_numpy(),
               "event_timestamp": scored_at, **outputs, "model_version": version,
               "scored_at": scored_at, "features_at": rows["event_timestamp"].to_numpy()}
    # In the published table's order (the Spark DDL's), whatever the order above.
    return pd.DataFrame({c.name: columns[c.name] for c in schema.PUBLISHED})


def _assigner(payload: dict, version: str, scored_at: dt.datetime):
    """The function ``mapInPandas`` runs: each batch of latest rows -> their segments."""

    def assign(batches):
        model = SegmentModel(np.asarray(payload["centroids"]),
                             Preprocessor.from_dict(payload["preprocessor"]),
                             payload["metadata"])
        stamp = pd.Timestamp(scored_at)
        for batch in batches:
            if not batch.empty:
                yield segment_rows(model, batch, version, stamp)

    return assign


class ChampionSegmenter:
    """The stream consumer's segmenter: assigns fresh feature rows with the champion, the model
    version the inference server serves as stable, and follows the alias when it moves
    (:class:`~pipeline.registry.ChampionFollower`: checked at most every ``refresh_seconds``).
    Without a champion it assigns nothing."""

    def __init__(self, settings: Settings, *, refresh_seconds: float | None = None,
                 champion: registry.ChampionFollower | None = None):
        self.champion = champion if champion is not None else registry.ChampionFollower(
            settings, refresh_seconds=refresh_seconds)

    def __call__(self, rows: pd.DataFrame) -> pd.DataFrame | None:
        """The segment rows of ``rows`` (scored now), or None without a champion."""
        found = self.champion()
        if found is None or rows.empty:
            return None
        model, version = found
        return segment_rows(model, rows, version, pd.Timestamp.now(tz="UTC").floor("us"))


def _read_store(spark, root: str, table: StorePath):
    """The offline table ``table`` in an object store as a DataFrame: the executors read its
    files through ``pyarrow.fs`` (``root``: the store's URI with its options), one task per
    few files, timestamps as microseconds in UTC."""
    names = [f.relative_to(StorePath.at(root)) for f in table.glob("day=*/*.parquet")]
    if not names:
        raise FileNotFoundError(f"offline table {table} has no Parquet files; run "
                                "`kmeans ingest` first")
    schema = pa.schema([("customer_id", pa.int64()),
                        ("event_timestamp", pa.timestamp("us", tz="UTC")),
                        ("created_timestamp", pa.timestamp("us", tz="UTC")),
                        *((name, pa.float64()) for name in FEATURE_NAMES)])

    def read(batches):
        fs, base = arrow_filesystem(root)
        for batch in batches:
            for name in batch.column("file").to_pylist():
                part = pq.read_table(f"{base.rstrip('/')}/{name}", filesystem=fs,
                                     columns=schema.names)
                yield from part.cast(schema, safe=False).to_batches()  # ns -> us

    listing = spark.createDataFrame([(n,) for n in names], "file string")
    tasks = max(1, min(len(names), spark.sparkContext.defaultParallelism * 2))
    ddl = ("customer_id long, event_timestamp timestamp, created_timestamp timestamp, "
           + ", ".join(f"{name} double" for name in FEATURE_NAMES))
    return listing.repartition(tasks).mapInArrow(read, ddl)


def _write_store(scored, root: str, folder: str) -> None:
    """Each partition of ``scored`` as one Parquet object ``<folder>/part-<n>.parquet`` under
    ``root`` (an object store's URI), written by its task through ``pyarrow.fs``. The name is
    the partition's, so a retried or speculative attempt replaces its own object whole."""

    def write(batches):
        from pyspark import TaskContext

        fs, base = arrow_filesystem(root)
        table = pa.Table.from_batches(list(batches))
        name = f"part-{TaskContext.get().partitionId():05d}.parquet"
        if table.num_rows:
            pq.write_table(table, f"{base.rstrip('/')}/{folder}/{name}", filesystem=fs)
        yield pa.RecordBatch.from_pylist([{"file": name, "rows": table.num_rows}])

    scored.mapInArrow(write, "file string, rows long").collect()


def _timestamp(F, frame, column: str):
    """``column`` as a Spark timestamp: nanoseconds since the epoch (a long) converted."""
    if dict(frame.dtypes)[column] in ("bigint", "long"):
        # integer division: a double loses ~400 ns at today's epoch nanoseconds
        return F.timestamp_micros(F.expr(f"`{column}` div 1000")).alias(column)
    return F.col(column)


def published_version(settings: Settings) -> str | None:
    """The model version of the newest publication (None before the first): its folder's name
    ends with it, and names sort by time."""
    table = settings.offline_root / features.SEGMENT_TABLE
    folders = sorted({part.parent.name for part in table.glob("published-*/*.parquet")})
    return folders[-1].rsplit("-v", 1)[1] if folders else None


def publish_segments(settings: Settings, *, version: str | None = None, spark=None,
                     materialize: bool = True, now: dt.datetime | None = None) -> dict:
    """Score every customer with the champion (or ``version``), write a publication of the
    ``customer_segment`` view and materialize it. Returns the counts, the folder and the
    time each part took."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    model, version = registry.download_model(settings, "champion", version=version)
    table = settings.offline_root / OFFLINE_TABLE
    if not table.is_dir():
        raise FileNotFoundError(f"offline table {table} is missing; run `kmeans ingest` first")
    scored_at = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    out_dir = features.ensure_segment_table(settings)
    name = f"published-{scored_at:%Y%m%dT%H%M%S}-v{version}"
    staging = out_dir / f".{name}.{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    spark = spark or spark_session(settings.spark_master, app_name="kmeans-publish",
                                   driver_memory=settings.spark_driver_memory,
                                   ui_port=settings.spark_ui_port)
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # The landed files hold nanosecond timestamps (pandas'), which Spark reads only as longs.
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    if table.local:
        raw = spark.read.parquet(str(table))
    else:  # Spark has no S3 client here (no hadoop-aws): the executors read through pyarrow.fs
        raw = _read_store(spark, settings.offline_uri or "", table)
    rows = raw.select("customer_id", *(_timestamp(F, raw, c) for c in ("event_timestamp",
                                                                        "created_timestamp")),
                      *FEATURE_NAMES)
    latest_first = Window.partitionBy("customer_id").orderBy(
        F.col("event_timestamp").desc(), F.col("created_timestamp").desc())
    latest = (rows.withColumn("_rank", F.row_number().over(latest_first))
              .where(F.col("_rank") == 1).drop("_rank", "created_timestamp"))
    scored = latest.mapInPandas(_assigner(_payload(model), str(version), scored_at),
                                OUTPUT_DDL)
    final = out_dir / name
    try:
        if staging.local:
            scored.write.mode("error").parquet(str(staging))
            for extra in Path(staging.path).glob("*"):  # Spark's markers; Feast reads the rest
                if extra.name.startswith(("_", ".")):
                    extra.unlink()
            if final.exists():  # the same second and version again: replaced, not duplicated
                shutil.rmtree(final.path)
            Path(staging.path).rename(final.path)
        else:
            _write_store(scored, settings.offline_uri or "",
                         staging.relative_to(settings.offline_root))
            if final.exists():
                final.fs.delete_dir(final.path)
            # Readers skip the staging folder (its name starts with a dot), so a failed job
            # publishes nothing. A store has no folder rename: the parts move one at a time,
            # and while they do a reader may find some customers' new segments beside the
            # previous publication's (each customer's segment is then the new or the last one).
            for part in staging.glob("*.parquet"):
                final.fs.move(part.path, (final / part.name).path)
    finally:
        if staging.local:
            shutil.rmtree(staging.path, ignore_errors=True)
        elif staging.exists():
            staging.fs.delete_dir(staging.path)
    spark_seconds = time.monotonic() - t0
    written = pq.ParquetDataset(final.path, filesystem=final.fs).read(
        columns=["customer_id", "segment", "ood"])
    customers = written.num_rows
    shares = np.bincount(np.searchsorted(model.cluster_ids,
                                         written["segment"].to_numpy()),
                         minlength=model.k) / max(customers, 1)
    t1 = time.monotonic()
    if materialize:
        features.materialize(settings, scored_at - dt.timedelta(seconds=1),
                             scored_at + dt.timedelta(seconds=1), views=[features.SEGMENT_VIEW])
    materialize_seconds = time.monotonic() - t1
    result = {"model_version": str(version), "customers": customers,
              "scored_at": scored_at.isoformat(), "folder": str(final),
              "segment_shares": {str(c): round(float(s), 4)
                                 for c, s in zip(model.cluster_ids, shares, strict=True)},
              "ood_share": float(np.mean(written["ood"].to_numpy())) if customers else 0.0,
              "spark_seconds": round(spark_seconds, 2),
              "materialize_seconds": round(materialize_seconds, 2) if materialize else None,
              "customers_per_second": round(customers / spark_seconds) if spark_seconds else None}
    log.info("published the segments of %d customers with version %s to %s", customers,
             version, final)
    return result
