"""Spark path of the engine: staged float32 blocks, one Spark job per iteration.

Each task decodes its Parquet file once into a contiguous float32 block in executor-local
storage (temporary name, then rename; under a key the caller derives from what defines the
block: snapshot hash, preprocessing, row filter, sampling) and memory-maps it in every later
iteration. Preprocessing and row selection are passed in as picklable callables, so the engine
knows nothing of the project's features or splits. The centroids of every candidate K go out
together in one broadcast; each task returns per-K sums, counts and inertia; the driver adds
them up. A lost task is re-run by Spark and rebuilds its block from Parquet if it is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.engine.kernel import Stats, add_stats, draw_d2, partial_stats

log = logging.getLogger(__name__)

# Errors only from Spark's JVM on the console (see the file).
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


def spark_session(master: str = "local[*]", *, app_name: str = "kmeans", driver_memory: str = "2g",
                  extra: dict | None = None) -> Any:
    """A SparkSession whose Python workers run this interpreter (not `python3` from PATH).

    Examples
    --------
    >>> spark = spark_session("local[2]", app_name="doc")  # doctest: +SKIP
    >>> spark.sparkContext.master  # doctest: +SKIP
    'local[2]'
    """
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
               .config("spark.sql.session.timeZone", "UTC")
               # Executor <-> Python worker over Unix sockets instead of loopback TCP: halves
               # the fixed cost of a Python job (124 -> 67 ms measured here), paid every
               # iteration.
               .config("spark.python.unix.domain.socket.enabled", "true"))
    extra = dict(extra or {})
    extra.setdefault("spark.driver.extraJavaOptions",
                     f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}")
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@dataclass(frozen=True)
class BlockSpec:
    """What a task needs to build its block, shipped with the task closure (so every field,
    the callables included, must pickle: module-level functions, ``functools.partial`` of them,
    or bound methods of picklable objects).

    Attributes
    ----------
    snapshot_dir : str
        Folder (or ``pyarrow.fs`` URI) of the Parquet files.
    files : tuple
        Per task: a file name, or a tuple of file names staged into one block.
    stage_dir : str
        Executor-local folder of the staged blocks.
    key : str
        Sub-folder of ``stage_dir`` for these blocks; the caller derives it (:func:`block_key`)
        from everything that defines their content, callables included.
    columns : tuple of str
        The columns taken as they are when ``transform`` is None.
    transform : callable DataFrame -> ndarray (n, d) float32, or None
        Preprocessing of each batch of kept rows (e.g. a bound ``transform`` method).
    row_filter : callable DataFrame -> bool ndarray (n,), or None
        Rows to keep of each batch (e.g. one side of a train/holdout split); None keeps all.
    sample_fraction : float
        Share of the rows kept at random, drawn per batch from a generator keyed by
        ``[sample_seed, task index]``.
    sample_seed : int
    threads : int
        Kernel threads per task; Spark already runs one task per core.
    weight_column : str or None
        Column of non-negative row weights.
    """

    snapshot_dir: str
    files: tuple
    stage_dir: str
    key: str
    columns: tuple[str, ...] = ()
    transform: Callable[[pd.DataFrame], np.ndarray] | None = None
    row_filter: Callable[[pd.DataFrame], np.ndarray] | None = None
    sample_fraction: float = 1.0
    sample_seed: int = 0
    threads: int = 1
    weight_column: str | None = None


def block_key(*parts: Any) -> str:
    """A short, stable key for a set of staged blocks, from the JSON-serialisable values that
    define their content (snapshot hash, preprocessing, row selection, sampling, ...).

    Examples
    --------
    >>> block_key("snapshot-hash", {"scale": 2}, "train", 42) == block_key(
    ...     "snapshot-hash", {"scale": 2}, "train", 42)
    True
    """
    blob = json.dumps(list(parts), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_block(spec: BlockSpec, index: int) -> np.ndarray:
    """The staged float32 block of partition ``index`` (memory-mapped), built if missing.

    Examples
    --------
    >>> spec = parquet_spec("snapshot/", ["a", "b"], "/tmp/stage")  # doctest: +SKIP
    >>> load_block(spec, 0).shape  # doctest: +SKIP
    (1000, 2)
    """
    return load_block_and_weights(spec, index)[0]


def load_block_and_weights(spec: BlockSpec, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(block, weights or None)`` of partition ``index``, staged from Parquet if this executor
    lacks them.

    Staging streams the Parquet file batch by batch into a raw float32 file (temporary name,
    then rename), so neither the file nor the block has to fit in memory; later passes
    memory-map it and read it from the page cache, or from local disk when it does not fit.
    """
    base = Path(spec.stage_dir) / spec.key / f"block-{index:05d}"
    data, meta_path = base.with_suffix(".f32"), base.with_suffix(".json")
    if not data.exists():
        _stage(spec, index, base)
    meta = json.loads(meta_path.read_text())
    rows, cols = meta["rows"], meta["cols"]
    block = (np.memmap(data, dtype=np.float32, mode="r", shape=(rows, cols)) if rows
             else np.empty((0, cols), np.float32))
    weights = None
    if spec.weight_column:
        weights = (np.memmap(base.with_suffix(".w64"), dtype=np.float64, mode="r", shape=(rows,))
                   if rows else np.empty(0))
    return block, weights


def _rows_of(spec: BlockSpec, frame: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """The float32 rows of one (filtered) batch: ``transform`` or the ``columns`` as they are."""
    if spec.transform is not None:
        x = np.asarray(spec.transform(frame), dtype=np.float32)
        what = "the transform's output"
    else:
        missing = [c for c in spec.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{names} lack columns {missing}; they have {list(frame.columns)}")
        x = frame[list(spec.columns)].to_numpy(dtype=np.float32)
        what = f"columns {list(spec.columns)}"
    if x.ndim != 2 or len(x) != len(frame):
        raise ValueError(f"{names}: {what} has shape {x.shape}; expected ({len(frame)}, d)")
    if not np.isfinite(x).all():
        raise ValueError(f"{names}: {what} hold NaN or infinity; impute or drop those rows "
                         "first")
    return x


def _keep(spec: BlockSpec, frame: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Rows of a batch to stage: the row filter's, then a ``sample_fraction`` draw over every
    row of the batch (so the draws do not depend on the filter)."""
    keep = np.ones(len(frame), dtype=bool)
    if spec.row_filter is not None:
        keep = np.asarray(spec.row_filter(frame), dtype=bool)
        if keep.shape != (len(frame),):
            raise ValueError(f"row_filter returned shape {keep.shape}; expected ({len(frame)},)")
    if spec.sample_fraction < 1.0:
        keep = keep & (rng.random(len(frame)) < spec.sample_fraction)  # not the filter's array
    return keep


def _stage(spec: BlockSpec, index: int, base: Path) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.tmp"
    tmp_x, tmp_w = base.with_suffix(f".f32.{tag}"), base.with_suffix(f".w64.{tag}")
    entry = spec.files[index]
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    rng = np.random.default_rng([spec.sample_seed, index])
    rows = 0
    cols: int | None = len(spec.columns) if spec.transform is None else None
    batches = (batch for name in names
               for batch in pq.ParquetFile(Path(spec.snapshot_dir) / name).iter_batches(
                   batch_size=262_144))
    with open(tmp_x, "wb") as fx, open(tmp_w, "wb") as fw:
        for batch in batches:
            frame = batch.to_pandas()
            frame = frame.loc[_keep(spec, frame, rng)]
            x = _rows_of(spec, frame, names)
            cols = x.shape[1]
            fx.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
            if spec.weight_column:
                w = frame[spec.weight_column].to_numpy(dtype=np.float64)
                if not (np.isfinite(w).all() and (w >= 0).all()):
                    raise ValueError(f"{names}: weight column "
                                     f"{spec.weight_column!r} must be finite and >= 0")
                fw.write(w.tobytes())
            rows += len(x)
    if cols is None:  # no batch at all: the transform's width, from an empty frame
        empty = pq.ParquetFile(Path(spec.snapshot_dir) / names[0]).schema_arrow.empty_table()
        cols = _rows_of(spec, empty.to_pandas(), names).shape[1]
    meta = base.with_suffix(".json")
    meta_tmp = base.with_suffix(f".json.{tag}")
    meta_tmp.write_text(json.dumps({"rows": rows, "cols": cols}))
    os.replace(meta_tmp, meta)
    if spec.weight_column:
        os.replace(tmp_w, base.with_suffix(".w64"))
    else:
        tmp_w.unlink()
    os.replace(tmp_x, base.with_suffix(".f32"))  # last: its presence means the block is whole


TaskFn = Callable[[int, Iterator[Any]], Iterator[Any]]


def _drain(rows: Iterator[Any]) -> None:
    """Consume a task's input iterator. PySpark reuses a Python worker only when the task read
    its whole input; otherwise it starts a new worker (and re-imports the engine) for every
    task, which costs more per iteration than the kernel on small blocks."""
    for _ in rows:
        pass


def _stage_task(spec: BlockSpec) -> TaskFn:
    def run(index: int, _rows: Iterator[Any]) -> Iterator[tuple[int, int, int]]:
        _drain(_rows)
        block = load_block(spec, index)
        yield index, int(block.shape[0]), int(block.shape[1])
    return run


def _step_task(spec: BlockSpec, centroids_bc: Any) -> TaskFn:
    def run(index: int, _rows: Iterator[Any]) -> Iterator[list[Stats]]:
        _drain(_rows)
        block, weights = load_block_and_weights(spec, index)
        yield partial_stats(block, centroids_bc.value, weights, threads=spec.threads)
    return run


def _d2_task(spec: BlockSpec, centers_bc: Any, scale: float, seed: list[int]) -> TaskFn:
    def run(index: int, _rows: Iterator[Any]) -> Iterator[np.ndarray]:
        _drain(_rows)
        block, weights = load_block_and_weights(spec, index)
        yield draw_d2(block, centers_bc.value, scale, np.random.default_rng([*seed, index]),
                      weights)
    return run


def _sample_task(spec: BlockSpec, fraction: float, seed: int) -> TaskFn:
    def run(index: int, _rows: Iterator[Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _drain(_rows)
        block, weights = load_block_and_weights(spec, index)
        keep = np.random.default_rng([seed, index]).random(len(block)) < fraction
        yield (np.asarray(block[keep]),
               np.ones(int(keep.sum())) if weights is None else np.asarray(weights[keep]))
    return run


class SparkBlockSource:
    """Engine source over Parquet files, one Spark task per block (a file or a group of files).

    The blocks are staged when the source is built (one job); every later call is one job
    over the staged blocks.

    Examples
    --------
    >>> source = SparkBlockSource(spark, parquet_spec("data/", ["a", "b"], "/tmp/stage"))
    ... # doctest: +SKIP
    >>> fit_sweep(source, [3, 4], seed=0).fits[3].centroids.shape  # doctest: +SKIP
    (3, 2)
    """

    def __init__(self, spark: Any, spec: BlockSpec):
        self.spark = spark
        self.sc = spark.sparkContext
        self.spec = spec
        self.parts = len(spec.files)
        self.jobs = 0
        shapes = self._run(_stage_task(spec)).collect()
        self.rows_per_part = {i: n for i, n, _d in shapes}
        self.n_rows = sum(self.rows_per_part.values())
        self.n_features = shapes[0][2]
        if self.n_rows == 0:
            raise ValueError(f"{spec.snapshot_dir} has no rows left after the row filter and "
                             f"sample_fraction={spec.sample_fraction}")

    def _run(self, fn: TaskFn) -> Any:
        """One Spark job running ``fn(index, rows)`` once per block."""
        self.jobs += 1
        return self.sc.parallelize(range(self.parts), self.parts).mapPartitionsWithIndex(fn)

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.sample_with_weights(n, seed)[0]

    def sample_with_weights(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        fraction = min(1.0, n / self.n_rows)
        parts = self._run(_sample_task(self.spec, fraction, seed)).collect()
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def sample_d2(self, centers: np.ndarray, scale: float, seed: Sequence[int]) -> np.ndarray:
        bc = self.sc.broadcast(np.asarray(centers, dtype=np.float32))
        try:
            parts = self._run(_d2_task(self.spec, bc, scale, [int(s) for s in seed])).collect()
        finally:
            bc.unpersist()
        return np.concatenate(parts)

    def step(self, centroids: list[np.ndarray]) -> list[Stats]:
        bc = self.sc.broadcast([np.asarray(c, dtype=np.float32) for c in centroids])
        try:
            results = self._run(_step_task(self.spec, bc)).collect()
        finally:
            bc.unpersist()
        return reduce(add_stats, results)


def parquet_spec(path: str | Path, columns: list[str], stage_dir: str | Path, *,
                 threads: int = 1, weight_column: str | None = None,
                 partitions: int | None = None) -> BlockSpec:
    """Spec over a folder of Parquet files, taking ``columns`` as they are.

    One task per file, or ``partitions`` tasks each staging a group of files into one block:
    fewer, larger tasks cut the fixed cost of every iteration's job (give each ``threads``
    kernel threads and set ``spark.task.cpus`` to match). The key covers the folder, each
    file's size and modification time, the grouping, the columns and the weight column.

    Examples
    --------
    >>> spec = parquet_spec("data/", ["a", "b"], "/tmp/stage", partitions=2)  # doctest: +SKIP
    >>> len(spec.files)  # doctest: +SKIP
    2
    """
    folder = Path(path)
    names = sorted(p.name for p in folder.glob("*.parquet"))
    if not names:
        raise FileNotFoundError(f"no Parquet files in {folder}")
    files: tuple = tuple(names)
    if partitions is not None:
        if partitions < 1:
            raise ValueError(f"partitions={partitions} should be >= 1")
        groups = [tuple(names[i::partitions]) for i in range(min(partitions, len(names)))]
        files = tuple(groups)
    stamp = [[f, (folder / f).stat().st_size, (folder / f).stat().st_mtime_ns] for f in names]
    stamp.append(["groups", [list(g) if isinstance(g, tuple) else g for g in files]])
    digest = hashlib.sha256(json.dumps([str(folder.resolve()), stamp]).encode()).hexdigest()
    return BlockSpec(snapshot_dir=str(folder), files=files, stage_dir=str(stage_dir),
                     key=block_key(digest, list(columns), weight_column),
                     columns=tuple(columns), threads=threads, weight_column=weight_column)


def dataframe_source(df, columns: list[str], stage_dir: str | Path, *,
                     partitions: int | None = None, threads: int = 1,
                     weight_column: str | None = None) -> SparkBlockSource:
    """Engine source over a Spark DataFrame: written once as Parquet (one file per partition)
    under ``stage_dir``, then staged and iterated like a snapshot.

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
    spark = df.sparkSession
    wanted = [*columns, *([weight_column] if weight_column else [])]
    key = hashlib.sha256(f"{df.semanticHash()}:{wanted}:{partitions}".encode()).hexdigest()[:20]
    out = Path(stage_dir) / f"frame-{key}"
    if not (out / "_SUCCESS").exists():
        frame = df.select(*wanted)
        if partitions:
            frame = frame.repartition(partitions)
        frame.write.mode("overwrite").parquet(str(out))
    return SparkBlockSource(spark, parquet_spec(out, columns, stage_dir, threads=threads,
                                                weight_column=weight_column))
