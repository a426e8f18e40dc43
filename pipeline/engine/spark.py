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
    preprocessor: dict
    holdout_seed: int
    side: str  # "train", "holdout" or "all"
    sample_fraction: float


def block_key(snapshot_hash: str, preprocessor: dict, side: str, seed: int, fraction: float) -> str:
    blob = json.dumps([snapshot_hash, preprocessor, side, seed, fraction], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_block(spec: BlockSpec, index: int) -> np.ndarray:
    """The staged block of partition ``index``, built from Parquet if this executor lacks it."""
    path = Path(spec.stage_dir) / spec.key / f"block-{index:05d}.npy"
    if not path.exists():
        import pyarrow.parquet as pq

        from pipeline.preprocessing import Preprocessor, holdout_mask

        pre = Preprocessor.from_dict(spec.preprocessor)
        frame = pq.read_table(Path(spec.snapshot_dir) / spec.files[index]).to_pandas()
        keep = np.ones(len(frame), dtype=bool)
        if spec.side != "all":
            hold = holdout_mask(frame["customer_id"].to_numpy(), spec.holdout_seed)
            keep = hold if spec.side == "holdout" else ~hold
        if spec.sample_fraction < 1.0:
            rng = np.random.default_rng([spec.holdout_seed, index])
            keep &= rng.random(len(frame)) < spec.sample_fraction
        block = pre.transform(frame.loc[keep])
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
        if fail_marker and os.path.exists(fail_marker):
            os.remove(fail_marker)
            raise RuntimeError(f"injected failure in partition {index}")
        block = load_block(spec, index)
        yield partial_stats(block, centroids_bc.value)
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

    def step(self, centroids: list[np.ndarray]):
        bc = self.sc.broadcast([np.asarray(c, dtype=np.float32) for c in centroids])
        try:
            results = self._run(_step_task(self.spec, bc, self.fail_marker)).collect()
        finally:
            bc.unpersist()
        return reduce(add_stats, results)
