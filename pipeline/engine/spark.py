"""The Spark block source of the engine: one Spark job per Lloyd pass over staged blocks.

The staging job is a *marker* RDD that Spark keeps cached: each of its tasks stages its block
(:mod:`pipeline.engine.staging`) and every later job derives from it, so Spark schedules each
block's task on the executor that staged it (PROCESS_LOCAL), and a lost executor's blocks are
re-staged once, on a survivor, when Spark recomputes their marker partitions.

The centroids of every candidate K travel in the task closure (a few KB: no broadcast of
our own). Spark still broadcasts each stage's task binary, which an executor may fetch from
another; after a loss one survivor was seen waiting out a 5 s fetch retry on the dead one
(issue 25). Each task returns per-K sums, counts and inertia; the driver
adds them up. Every random draw is keyed by a row's global position, so the result does not
depend on how the rows are split into blocks. The session comes from
:mod:`pipeline.engine.session`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from pipeline.engine.kernel import (
    D2_STREAM,
    SAMPLE_STREAM,
    Stats,
    add_stats,
    draw_d2,
    partial_stats,
    sample_threshold,
    take_sample,
    uniforms,
)
from pipeline.engine.snapshot import filesystem, join_path
from pipeline.engine.staging import (
    Block,
    BlockSpec,
    executor_id,
    load_staged,
    parquet_spec,
    touch_and_clean,
)

log = logging.getLogger(__name__)

# parquet_spec lives in .staging; it is importable from here too because
# benchmarks/compare_commits.py imports it from here in this tree and in the commits before the
# split alike.
__all__ = ["SparkBlockSource", "dataframe_source", "parquet_spec"]

# ---------------------------------------------------------------- tasks

TaskFn = Callable[[int, Iterator[Any]], Iterator[Any]]


def _drain(rows: Iterator[Any]) -> list[Any]:
    """Consume a task's input iterator (and return it). PySpark reuses a Python worker only
    when the task read its whole input; otherwise it starts a new worker (and re-imports the
    engine) for every task, which costs more per iteration than the kernel on small blocks."""
    return list(rows)


@dataclass(frozen=True)
class Marker:
    """What a staging task leaves in Spark's cache for its partition: where and when the block
    was staged. A new ``token`` means Spark recomputed the partition (first staging, or again
    after its executor was lost)."""

    index: int
    rows: int
    cols: int
    executor: str
    staged: bool
    token: str


def _stage_task(spec: BlockSpec) -> TaskFn:
    def run(index: int, rows: Iterator[Any]) -> Iterator[Marker]:
        _drain(rows)
        block = load_staged(spec, index)
        if not block.staged:
            touch_and_clean(spec)
        yield Marker(index, int(block.x.shape[0]), int(block.x.shape[1]), executor_id(),
                     block.staged, uuid.uuid4().hex)
    return run


def _warm_task(rows: Iterator[Any]) -> Iterator[str]:
    _drain(rows)
    time.sleep(0.2)  # hold the core while the other slots take their task
    yield executor_id()


@dataclass(frozen=True)
class TaskReport:
    """One task's result, with where it ran and what it staged."""

    index: int
    executor: str
    staged: bool  # this task staged the block itself (its marker was cached elsewhere)
    marker: Marker | None
    payload: Any


def _on_block(spec: BlockSpec, work: Callable[[int, Block], Any]) -> TaskFn:
    """A task over the marker RDD: reads its marker (recomputing it, and so re-staging the
    block, if its executor was lost), then runs ``work`` on the staged block."""
    def run(index: int, rows: Iterator[Any]) -> Iterator[TaskReport]:
        markers = _drain(rows)
        block = load_staged(spec, index)
        yield TaskReport(index, executor_id(), block.staged,
                         markers[0] if markers else None, work(index, block))
    return run


def _step(centroids: list[np.ndarray], threads: int) -> Callable[[int, Block], list[Stats]]:
    def work(_index: int, block: Block) -> list[Stats]:
        return partial_stats(block.x, centroids, block.weights, threads=threads)
    return work


def _d2(centers: np.ndarray, scale: float, seed: list[int]) -> Callable[[int, Block], Any]:
    def work(_index: int, block: Block) -> np.ndarray:
        return draw_d2(block.x, centers, scale, uniforms(block.ids, D2_STREAM, *seed),
                       block.weights)
    return work


def _sample(threshold: float, seed: int) -> Callable[[int, Block], Any]:
    def work(_index: int, block: Block) -> tuple:
        u = uniforms(block.ids, SAMPLE_STREAM, seed)
        keep = u < threshold
        w = (np.ones(int(keep.sum())) if block.weights is None
             else np.asarray(block.weights[keep]))
        return np.asarray(block.x[keep]), w, np.asarray(block.ids[keep]), u[keep]
    return work


@dataclass
class Placement:
    """Where the blocks are, and what moved: the figures a run reports."""

    executor: dict[int, str] = field(default_factory=dict)  # block -> executor of last task
    token: dict[int, str] = field(default_factory=dict)  # block -> marker computation
    stagings: int = 0  # blocks staged, all executors together
    restaged: int = 0  # of which after the first staging (lost executor, evicted cache)
    moves: int = 0  # tasks that ran on another executor than the block's previous task
    history: list[dict[int, str]] = field(default_factory=list)  # per job: block -> executor

    def record(self, reports: Sequence[TaskReport | Marker], first: bool = False) -> None:
        job: dict[int, str] = {}
        for rep in reports:
            marker = rep if isinstance(rep, Marker) else rep.marker
            executor = rep.executor
            if marker is not None and marker.token != self.token.get(rep.index):
                self.token[rep.index] = marker.token
                if marker.staged:
                    self.stagings += 1
                    self.restaged += not first
            if isinstance(rep, TaskReport) and rep.staged:
                self.stagings += 1
                self.restaged += 1
            previous = self.executor.get(rep.index)
            if previous is not None and previous != executor:
                self.moves += 1
            self.executor[rep.index] = executor
            job[rep.index] = executor
        self.history.append(job)

    def summary(self, rows_per_part: dict[int, int]) -> dict:
        rows = np.asarray(list(rows_per_part.values()), dtype=np.float64)
        per_executor: dict[str, int] = {}
        for ex in self.executor.values():
            per_executor[ex] = per_executor.get(ex, 0) + 1
        return {"blocks": len(rows_per_part), "executors": len(per_executor),
                "blocks_per_executor": sorted(per_executor.values(), reverse=True),
                "stagings": self.stagings, "restaged": self.restaged, "moves": self.moves,
                "block_imbalance": float(rows.max() / rows.mean()) if rows.sum() else 1.0}


class SparkBlockSource:
    """Engine source over Parquet files, one Spark task per block (a file or a group of files).

    The blocks are staged when the source is built (one job, whose partitions Spark keeps
    cached as markers); every later call is one job derived from those markers, so each
    block's task runs on the executor that holds the block. ``placement`` counts the stagings
    and the moves; :meth:`report` sums them up for the run.

    Examples
    --------
    >>> source = SparkBlockSource(spark, parquet_spec("data/", ["a", "b"], "/tmp/stage"))
    ... # doctest: +SKIP
    >>> fit_sweep(source, [3, 4], seed=0).fits[3].centroids.shape  # doctest: +SKIP
    (3, 2)
    """

    def __init__(self, spark: Any, spec: BlockSpec):
        from pyspark import StorageLevel

        self.spark = spark
        self.sc = spark.sparkContext
        self.spec = spec
        self.parts = len(spec.files)
        self.jobs = 1
        self.placement = Placement()
        if not self.sc.master.startswith("local"):
            self._warm_up()
        self.markers = (self.sc.parallelize(range(self.parts), self.parts)
                        .mapPartitionsWithIndex(_stage_task(spec))
                        .persist(StorageLevel.MEMORY_ONLY))
        self.markers.setName(f"kmeans blocks {spec.key}")
        shapes: list[Marker] = self.markers.collect()
        self.placement.record(shapes, first=True)
        self.rows_per_part = {m.index: m.rows for m in shapes}
        self.n_rows = sum(self.rows_per_part.values())
        self.n_features = shapes[0].cols
        if self.n_rows == 0:
            raise ValueError(f"{spec.snapshot_dir} has no rows left after the row filter and "
                             f"sample_fraction={spec.sample_fraction}")

    def _warm_up(self) -> None:
        """One task per core, each importing the engine, before the staging job: without it
        the executor whose Python worker starts first takes most of the staging tasks
        (measured: 6 of 8 blocks on one of two executors), and every later iteration waits
        for it."""
        slots = max(1, self.sc.defaultParallelism)
        self.sc.parallelize(range(slots), slots).mapPartitions(_warm_task).collect()

    def _run(self, fn: TaskFn) -> Any:
        """One Spark job running ``fn(index, markers)`` once per block, where the block is."""
        self.jobs += 1
        return self.markers.mapPartitionsWithIndex(fn)

    def _collect(self, work: Callable[[int, Block], Any]) -> list[Any]:
        rdd = self._run(_on_block(self.spec, work))
        reports: list[TaskReport] = (rdd.collect() if self.sc.master.startswith("local")
                                     else self._collect_watched(rdd, work))
        self.placement.record(reports)
        return [r.payload for r in sorted(reports, key=lambda r: r.index)]

    def _executors(self) -> int:
        """Block managers registered with the driver (executors, and the driver's own)."""
        return int(self.sc._jsc.sc().getExecutorMemoryStatus().size())

    def _collect_watched(self, rdd: Any, work: Callable[[int, Block], Any]) -> list[Any]:
        """``rdd.collect()``, cancelled and submitted again at once if an executor is lost
        while it runs. Left alone, the lost executor's tasks would wait out Spark's locality
        delay (``spark.locality.wait``, 3 s, per level) for an executor that is gone (measured:
        a 7.5 s iteration); a new job finds their markers gone and runs them on a survivor
        at once, where they re-stage their blocks."""
        group = f"kmeans-{uuid.uuid4().hex[:12]}"
        done: dict[str, Any] = {}

        def job() -> None:
            self.sc.setJobGroup(group, f"k-means pass over {self.spec.key}",
                                interruptOnCancel=True)
            try:
                done["result"] = rdd.collect()
            except Exception as error:  # noqa: BLE001 - handed to the caller below
                done["error"] = error

        registered = self._executors()
        thread = threading.Thread(target=job, name=group, daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if thread.is_alive() and self._executors() < registered:
                log.warning("an executor was lost during job %s: cancelled and submitted "
                            "again", group)
                self.sc.cancelJobGroup(group)
                thread.join()
                self.jobs += 1
                return self._run(_on_block(self.spec, work)).collect()
        if "error" in done:
            raise done["error"]
        return done["result"]

    def report(self) -> dict:
        """Blocks, executors, stagings, re-stagings, task moves and row imbalance (largest
        block over the mean) so far."""
        return {**self.placement.summary(self.rows_per_part), "jobs": self.jobs}

    def close(self) -> None:
        """Drop the cached markers (the staged blocks stay for the next source with the
        same key)."""
        self.markers.unpersist()

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.sample_with_weights(n, seed)[0]

    def sample_with_weights(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return take_sample(self._collect(_sample(sample_threshold(n, self.n_rows), seed)), n)

    def sample_d2(self, centers: np.ndarray, scale: float, seed: Sequence[int]) -> np.ndarray:
        centers = np.asarray(centers, dtype=np.float32)
        return np.concatenate(self._collect(_d2(centers, scale, [int(s) for s in seed])))

    def step(self, centroids: list[np.ndarray]) -> list[Stats]:
        sent = [np.asarray(c, dtype=np.float32) for c in centroids]
        return reduce(add_stats, self._collect(_step(sent, self.spec.threads)))



def dataframe_source(df, columns: list[str], stage_dir: str | Path | None, *,
                     partitions: int | None = None, threads: int = 1,
                     weight_column: str | None = None,
                     write_dir: str | None = None) -> SparkBlockSource:
    """Engine source over a Spark DataFrame: written once as Parquet (one file per partition)
    to ``write_dir`` (default ``<stage_dir>/frames``; any location Spark writes and
    ``pyarrow.fs`` reads, which on a cluster without a shared filesystem means an object
    store), then staged and iterated like a snapshot.

    Examples
    --------
    >>> df = spark.createDataFrame([(0.0, 1.0), (5.0, 5.0)], ["a", "b"])  # doctest: +SKIP
    >>> dataframe_source(df, ["a", "b"], "/tmp/stage").n_rows  # doctest: +SKIP
    2
    """
    missing = [c for c in [*columns, *([weight_column] if weight_column else [])]
               if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks columns {missing}; it has {df.columns}")
    if write_dir is None:
        if not stage_dir:
            raise ValueError("dataframe_source needs write_dir= (a location every executor "
                             "reads) when the blocks are staged on each executor's own disk")
        write_dir = str(Path(stage_dir) / "frames")
    spark = df.sparkSession
    wanted = [*columns, *([weight_column] if weight_column else [])]
    key = hashlib.sha256(f"{df.semanticHash()}:{wanted}:{partitions}".encode()).hexdigest()[:20]
    out = join_path(write_dir, f"frame-{key}")
    fs, out_path = filesystem(out)
    if fs.get_file_info(join_path(out_path, "_SUCCESS")).type != pafs.FileType.File:
        frame = df.select(*wanted)
        if partitions:
            frame = frame.repartition(partitions)
        frame.write.mode("overwrite").parquet(out)
    return SparkBlockSource(spark, parquet_spec(out, columns, stage_dir, threads=threads,
                                                weight_column=weight_column))
