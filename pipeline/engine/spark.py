"""Spark path of the engine: staged float32 blocks, one Spark job per iteration.

Each task decodes its Parquet file once into a contiguous float32 block in executor-local
storage (temporary name, then rename; keyed by snapshot hash, preprocessing and split) and
memory-maps it in every later iteration. The centroids of every candidate K go out together in
one broadcast; each task returns per-K sums, counts and inertia; the driver adds them up. A
lost task is re-run by Spark and rebuilds its block from Parquet if it is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np

from pipeline.engine.kernel import add_stats, partial_stats

log = logging.getLogger(__name__)


def spark_session(master: str = "local[*]", *, app_name: str = "kmeans", driver_memory: str = "2g",
                  extra: dict | None = None):
    """A SparkSession whose Python workers run this interpreter (not `python3` from PATH)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if master:  # empty: spark-submit (or the SparkApplication) already chose the master
        builder = builder.master(master)
    builder = (builder.appName(app_name)
               .config("spark.driver.memory", driver_memory)
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC"))
    for key, value in (extra or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@dataclass(frozen=True)
class BlockSpec:
    """What a task needs to build its block: plain data, shipped with the closure."""

    snapshot_dir: str
    files: tuple[str, ...]
    stage_dir: str
    key: str
    preprocessor: dict | None  # None: take ``columns`` as they are
    holdout_seed: int = 0
    side: str = "all"  # "train", "holdout" or "all"
    sample_fraction: float = 1.0
    columns: tuple[str, ...] = ()
    threads: int = 1  # kernel threads per task; Spark already runs one task per core


def block_key(snapshot_hash: str, preprocessor: dict | None, side: str = "all", seed: int = 0,
              fraction: float = 1.0, columns: tuple[str, ...] = ()) -> str:
    blob = json.dumps([snapshot_hash, preprocessor, side, seed, fraction, list(columns)],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_block(spec: BlockSpec, index: int) -> np.ndarray:
    """The staged block of partition ``index``, built from Parquet if this executor lacks it."""
    path = Path(spec.stage_dir) / spec.key / f"block-{index:05d}.npy"
    if not path.exists():
        import pyarrow.parquet as pq

        from pipeline.preprocessing import Preprocessor, holdout_mask

        frame = pq.read_table(Path(spec.snapshot_dir) / spec.files[index]).to_pandas()
        keep = np.ones(len(frame), dtype=bool)
        if spec.side != "all":
            hold = holdout_mask(frame["customer_id"].to_numpy(), spec.holdout_seed)
            keep = hold if spec.side == "holdout" else ~hold
        if spec.sample_fraction < 1.0:
            rng = np.random.default_rng([spec.holdout_seed, index])
            keep &= rng.random(len(frame)) < spec.sample_fraction
        if spec.preprocessor is None:
            block = frame.loc[keep, list(spec.columns)].to_numpy(dtype=np.float32)
            if not np.isfinite(block).all():
                raise ValueError(f"{spec.files[index]}: columns {list(spec.columns)} hold NaN "
                                 "or infinity; impute or drop those rows first")
        else:
            block = Preprocessor.from_dict(spec.preprocessor).transform(frame.loc[keep])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(block, dtype=np.float32))
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def _stage_task(spec: BlockSpec, fail_marker: str | None):
    def run(index, _rows):
        block = load_block(spec, index)
        yield index, int(block.shape[0]), int(block.shape[1])
    return run


def _step_task(spec: BlockSpec, centroids_bc, fail_marker: str | None):
    def run(index, _rows):
        # Fault injection for tests: the first attempt that sees the marker file dies mid-job.
        if fail_marker and index == 0:
            try:
                os.remove(fail_marker)  # atomic: exactly one attempt sees the marker
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError(f"injected failure in partition {index}")
        block = load_block(spec, index)
        yield partial_stats(block, centroids_bc.value, threads=spec.threads)
    return run


def _d2_task(spec: BlockSpec, centers_bc, scale: float, seed):
    def run(index, _rows):
        from pipeline.engine.estimator import draw_d2

        block = load_block(spec, index)
        yield draw_d2(block, centers_bc.value, scale, np.random.default_rng([*seed, index]))
    return run


def _sample_task(spec: BlockSpec, fraction: float, seed: int):
    def run(index, _rows):
        block = load_block(spec, index)
        rng = np.random.default_rng([seed, index])
        yield np.asarray(block[rng.random(len(block)) < fraction])
    return run


class SparkBlockSource:
    """Engine source over a snapshot's Parquet files, one Spark task per file."""

    def __init__(self, spark, spec: BlockSpec, *, fail_marker: str | None = None):
        self.spark = spark
        self.sc = spark.sparkContext
        self.spec = spec
        self.parts = len(spec.files)
        self.fail_marker = fail_marker
        self.jobs = 0
        shapes = self._run(_stage_task(spec, None)).collect()
        self.rows_per_part = {i: n for i, n, _d in shapes}
        self.n_rows = sum(self.rows_per_part.values())
        self.n_features = shapes[0][2]
        if self.n_rows == 0:
            raise ValueError(f"snapshot {spec.snapshot_dir} has no rows on side {spec.side!r}")

    def _run(self, fn):
        self.jobs += 1
        return self.sc.parallelize(range(self.parts), self.parts).mapPartitionsWithIndex(fn)

    def sample(self, n: int, seed: int) -> np.ndarray:
        fraction = min(1.0, n / self.n_rows)
        parts = self._run(_sample_task(self.spec, fraction, seed)).collect()
        return np.concatenate(parts) if parts else np.empty((0, self.n_features), np.float32)

    def sample_d2(self, centers: np.ndarray, scale: float, seed) -> np.ndarray:
        bc = self.sc.broadcast(np.asarray(centers, dtype=np.float32))
        try:
            seed = list(np.atleast_1d(seed).tolist())
            parts = self._run(_d2_task(self.spec, bc, scale, seed)).collect()
        finally:
            bc.unpersist()
        return np.concatenate(parts)

    def step(self, centroids: list[np.ndarray]):
        bc = self.sc.broadcast([np.asarray(c, dtype=np.float32) for c in centroids])
        try:
            results = self._run(_step_task(self.spec, bc, self.fail_marker)).collect()
        finally:
            bc.unpersist()
        return reduce(add_stats, results)


def parquet_spec(path: str | Path, columns: list[str], stage_dir: str | Path, *,
                 threads: int = 1) -> BlockSpec:
    """Spec over a folder of Parquet files (one task each), taking ``columns`` as they are."""
    folder = Path(path)
    files = tuple(sorted(p.name for p in folder.glob("*.parquet")))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {folder}")
    stamp = [[f, (folder / f).stat().st_size, (folder / f).stat().st_mtime_ns] for f in files]
    digest = hashlib.sha256(json.dumps([str(folder.resolve()), stamp]).encode()).hexdigest()
    return BlockSpec(snapshot_dir=str(folder), files=files, stage_dir=str(stage_dir),
                     key=block_key(digest, None, columns=tuple(columns)), preprocessor=None,
                     columns=tuple(columns), threads=threads)


def dataframe_source(df, columns: list[str], stage_dir: str | Path, *, partitions: int | None = None,
                     threads: int = 1) -> SparkBlockSource:
    """Engine source over a Spark DataFrame: written once as Parquet (one file per partition)
    under ``stage_dir``, then staged and iterated like a snapshot."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks columns {missing}; it has {df.columns}")
    spark = df.sparkSession
    key = hashlib.sha256(f"{df.semanticHash()}:{columns}:{partitions}".encode()).hexdigest()[:20]
    out = Path(stage_dir) / f"frame-{key}"
    if not (out / "_SUCCESS").exists():
        frame = df.select(*columns)
        if partitions:
            frame = frame.repartition(partitions)
        frame.write.mode("overwrite").parquet(str(out))
    return SparkBlockSource(spark, parquet_spec(out, columns, stage_dir, threads=threads))
