"""Spark path of the engine: staged float32 blocks, one Spark job per iteration.

Each task decodes its Parquet file(s) once into a contiguous float32 block in executor-local
storage (temporary name unique to the task attempt, then rename; under a key the caller derives
from what defines the block: snapshot hash, preprocessing, row filter, sampling) and
memory-maps it in every later iteration. The staging job is a *marker* RDD that Spark keeps
cached: every later job derives from it, so Spark schedules each block's task on the executor
that staged it (PROCESS_LOCAL), and a lost executor's blocks are re-staged once, on a survivor,
when Spark recomputes their marker partitions. Snapshots are read through ``pyarrow.fs``
(local paths, ``s3://``, ``gs://``, ``abfs://``, ``hdfs://``).

Preprocessing and row selection are passed in as picklable callables, so the engine knows
nothing of the project's features or splits. The centroids of every candidate K travel in the
task closure (a few KB: no broadcast to re-fetch from a dead executor); each task returns per-K
sums, counts and inertia; the driver adds them up. Every random draw is keyed by a row's global
position, so the result does not depend on how the rows are split into blocks.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.engine.kernel import (
    D2_STREAM,
    SAMPLE_STREAM,
    STAGE_STREAM,
    Stats,
    add_stats,
    draw_d2,
    partial_stats,
    sample_threshold,
    take_sample,
    uniforms,
)

log = logging.getLogger(__name__)

# Errors only from Spark's JVM on the console (see the file).
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


#: What the engine sets on a cluster (any master but ``local``) unless the caller says
#: otherwise. The first job waits until every requested executor has registered, so staging is
#: spread over all of them; stragglers get a speculative copy (staging is atomic per attempt).
#: A block's task waits up to 10 s (Spark's default: 3 s) for the executor that holds the block
#: when that one is busy, and a task is speculated only after running 10 s (default: 100 ms):
#: with the defaults a loaded executor (a CI machine, a noisy neighbour) lost a task to the
#: other one, which then staged the block a second time (seen once: 9 stagings of 8 blocks).
#: A lost executor does not wait out the delay: its job is cancelled and submitted again
#: (:meth:`SparkBlockSource._collect_watched`).
CLUSTER_DEFAULTS = {
    "spark.scheduler.minRegisteredResourcesRatio": "1.0",
    "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s",
    "spark.speculation": "true",
    "spark.speculation.minTaskRuntime": "10s",
    "spark.locality.wait": "10s",
}


#: Spark's UI port is KMEANS_PORT_BASE + this when a base is set: the settings' PORT_OFFSETS
#: (pipeline.core.settings) say the same, which the engine does not import; a test holds them
#: together.
SPARK_UI_PORT_OFFSET = 2


def ui_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Spark's UI settings from the deployment's settings in the environment: the port
    KMEANS_SPARK_UI_PORT names (0: no UI, ``spark.ui.enabled=false``), else KMEANS_PORT_BASE +
    :data:`SPARK_UI_PORT_OFFSET`, else nothing (Spark's 4040, or the next free port).

    Examples
    --------
    >>> ui_conf({"KMEANS_PORT_BASE": "20000"})
    {'spark.ui.port': '20002'}
    >>> ui_conf({"KMEANS_SPARK_UI_PORT": "0", "KMEANS_PORT_BASE": "20000"})
    {'spark.ui.enabled': 'false'}
    """
    env = os.environ if environ is None else environ
    if env.get("KMEANS_SPARK_UI_PORT"):
        port = int(env["KMEANS_SPARK_UI_PORT"])
    elif env.get("KMEANS_PORT_BASE"):
        port = int(env["KMEANS_PORT_BASE"]) + SPARK_UI_PORT_OFFSET
    else:
        return {}
    return {"spark.ui.enabled": "false"} if port == 0 else {"spark.ui.port": str(port)}


def spark_session(master: str = "local[*]", *, app_name: str = "kmeans", driver_memory: str = "2g",
                  extra: dict | None = None, ui_port: int | None = None) -> Any:
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
               .config("spark.python.unix.domain.socket.enabled", "true")
               # workers forked with the engine already imported (pipeline/engine/daemon.py)
               .config("spark.python.daemon.module", "pipeline.engine.daemon"))
    extra = dict(extra or {})
    if master and not master.startswith("local"):
        extra = {**CLUSTER_DEFAULTS, **extra}
    # The driver's UI where the deployment puts it (``ui_port``: the settings' spark_ui_port;
    # None: from the environment, :func:`ui_conf`); the caller's ``extra`` wins.
    ui = (ui_conf() if ui_port is None else
          {"spark.ui.enabled": "false"} if ui_port == 0 else {"spark.ui.port": str(ui_port)})
    for key, value in ui.items():
        extra.setdefault(key, value)
    extra.setdefault("spark.driver.extraJavaOptions",
                     f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}")
    for key, value in extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    global _stop_at_exit
    if not _stop_at_exit:  # once per process, whatever the number of sessions
        atexit.register(stop_session)
        _stop_at_exit = True
    return spark


_stop_at_exit = False  # spark_session registered stop_session with atexit

#: What Spark's Python daemons run (the engine's, pipeline/engine/daemon.py, or PySpark's own).
_DAEMON_MODULES = ("pipeline.engine.daemon", "pyspark.daemon")


def stop_session(timeout: float = 60.0) -> None:
    """Stop this process's Spark session, in order: its Python workers, the SparkContext, then
    the JVM; do nothing when no session runs. ``spark_session`` registers it with ``atexit``.

    Left to the interpreter's exit, the JVM learns that the driver is gone when its stdin
    closes and stops Spark from a shutdown hook, while Python has already left: the idle Python
    workers (kept for reuse) find their socket closed, PySpark's worker fails to flush its
    goodbye and prints a ``BrokenPipeError`` traceback per worker, relayed by a JVM on its way
    out, after the command's last line. Here each local daemon is sent SIGTERM first (its own
    clean exit: it hangs up on its workers, which end without a word), then the context stops,
    the py4j gateway closes, and the JVM is waited for, so that whatever Spark still writes
    comes before the caller's next line and nothing after exit. On a cluster the executors'
    daemons are not this machine's: they stop with their executors.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    sc = SparkContext._active_spark_context
    gateway = SparkContext._gateway
    if sc is None and gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    if sc is not None and proc is not None and sc.master.startswith("local"):
        _stop_python_daemons(proc.pid, timeout)
    session = SparkSession.getActiveSession() if sc is not None else None
    try:
        if session is not None:
            session.stop()
        elif sc is not None:
            sc.stop()
    except Exception as err:  # noqa: BLE001 - a JVM already gone: nothing left to stop
        log.warning("Spark did not stop cleanly: %s", err)
    if gateway is None:
        return
    with SparkContext._lock:
        SparkContext._gateway = None
        SparkContext._jvm = None
    try:
        gateway.shutdown()
    except Exception as err:  # noqa: BLE001 - the JVM's end is closed as well below
        log.debug("py4j gateway shutdown: %s", err)
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # the JVM's signal to exit (PythonGatewayServer reads to EOF)
        try:
            proc.wait(timeout)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: do not hang the exit
            log.warning("Spark's JVM (pid %s) did not exit within %.0f s", proc.pid, timeout)


def _stop_python_daemons(jvm_pid: int, timeout: float) -> None:
    """SIGTERM to the Python daemons the local JVM started, and wait until they are gone (each
    sends SIGHUP to its workers and exits: PySpark's own clean shutdown of a daemon)."""
    daemons = [pid for pid, cmd in _children(jvm_pid)
               if any(module in cmd for module in _DAEMON_MODULES)]
    for pid in daemons:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemons and time.monotonic() < deadline:
        daemons = [pid for pid in daemons if _alive(pid)]
        time.sleep(0.02)


def _children(pid: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the processes whose parent is ``pid`` (Linux's /proc; none
    elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, already exited, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass(frozen=True)
class BlockSpec:
    """What a task needs to build its block, shipped with the task closure (so every field,
    the callables included, must pickle: module-level functions, ``functools.partial`` of them,
    or bound methods of picklable objects).

    Attributes
    ----------
    snapshot_dir : str
        Folder or URI of the Parquet files: a local path, or anything ``pyarrow.fs`` reads
        (``s3://bucket/x``, ``gs://``, ``abfs://``, ``hdfs://``; options such as
        ``?endpoint_override=host:port&scheme=http`` ride in the URI, credentials come from the
        executors' environment).
    files : tuple
        Per task: a file name, or a tuple of file names staged into one block.
    stage_dir : str
        Folder of the staged blocks. Empty: each executor's own local storage
        (``SPARK_LOCAL_DIRS`` at task time, see :func:`executor_stage_root`); a path shared by
        every executor stays an option.
    key : str
        Sub-folder of the stage dir for these blocks; the caller derives it (:func:`block_key`)
        from everything that defines their content, callables included.
    columns : tuple of str
        The columns taken as they are when ``transform`` is None.
    transform : callable DataFrame -> ndarray (n, d) float32, or None
        Preprocessing of each batch of kept rows (e.g. a bound ``transform`` method).
    row_filter : callable DataFrame -> bool ndarray (n,), or None
        Rows to keep of each batch (e.g. one side of a train/holdout split); None keeps all.
    sample_fraction : float
        Share of the rows kept at random: a row is kept when its draw (keyed by
        ``sample_seed`` and its global position) is below the fraction.
    sample_seed : int
    threads : int
        Kernel threads per task; Spark already runs one task per core.
    weight_column : str or None
        Column of non-negative row weights.
    row_offsets : tuple of (file name, int)
        Global position of each file's first row in the snapshot (files in name order): a
        row's id is its file's offset plus its position in the file, and every random draw
        is keyed by it. Files without an offset get ``(rank of the name) << 40``.
    retention_hours : float
        Staged keys unused for this long are removed from the stage dir (with the temporary
        files of dead task attempts), the next time a block is staged there.
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
    row_offsets: tuple[tuple[str, int], ...] = ()
    retention_hours: float = 72.0


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


# ---------------------------------------------------------------- storage

def filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` of a local path or a URI.

    ``s3a://`` and ``s3n://`` (Hadoop's names) read as ``s3://``.

    Examples
    --------
    >>> fs, path = filesystem("/tmp/snapshot")
    >>> fs.type_name, path
    ('local', '/tmp/snapshot')
    """
    text = str(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())
    scheme, rest = text.split("://", 1)
    if scheme in ("s3a", "s3n"):
        text = f"s3://{rest}"
    if scheme == "file":
        return pafs.LocalFileSystem(), rest
    return pafs.FileSystem.from_uri(text)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


@dataclass(frozen=True)
class ParquetFiles:
    """The Parquet files of a folder (or prefix) and what identifies their content."""

    names: tuple[str, ...]
    rows: tuple[int, ...]
    stamps: tuple[tuple[str, int, int, str], ...]  # (name, size, mtime in ns, ETag or "")

    @property
    def offsets(self) -> tuple[tuple[str, int], ...]:
        starts = np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(int)
        return tuple(zip(self.names, (int(s) for s in starts), strict=True))


def list_parquet(uri: str | Path, names: Sequence[str] | None = None) -> ParquetFiles:
    """The ``*.parquet`` files of a folder or object-store prefix (or the given ``names`` in
    it), in name order, with their row counts (from the footers), and their size,
    modification time and ETag (object stores) from the store.

    Examples
    --------
    >>> list_parquet("snapshot/").names  # doctest: +SKIP
    ('part-00000.parquet', 'part-00001.parquet')
    """
    fs, base = filesystem(uri)
    if names is None:
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=False))
        except FileNotFoundError:
            infos = []
        infos = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(
            ".parquet")]
    else:
        infos = fs.get_file_info([_join(base, n) for n in names])
        missing = [i.path for i in infos if i.type != pafs.FileType.File]
        if missing:
            raise FileNotFoundError(f"snapshot files missing: {missing}")
    infos = sorted(infos, key=lambda i: i.base_name)
    if not infos:
        raise FileNotFoundError(f"no Parquet files in {uri}")
    rows, etags = [], []
    for info in infos:
        with fs.open_input_file(info.path) as handle:
            rows.append(pq.ParquetFile(handle).metadata.num_rows)
            etag = (handle.metadata() or {}).get("ETag", b"")  # object stores; local: none
            etags.append(etag.decode() if isinstance(etag, bytes) else str(etag))
    stamps = tuple((i.base_name, int(i.size or 0), int(i.mtime_ns or 0), etag)
                   for i, etag in zip(infos, etags, strict=True))
    return ParquetFiles(tuple(i.base_name for i in infos), tuple(rows), stamps)


def balanced_groups(names: Sequence[str], rows: Sequence[int], parts: int) -> tuple:
    """``parts`` groups of consecutive files (in name order) holding about the same number of
    rows each: partitions balanced by rows, not by file count. A file is never split.

    Examples
    --------
    >>> balanced_groups(["a", "b", "c", "d"], [100, 10, 10, 80], 2)
    (('a',), ('b', 'c', 'd'))
    """
    if parts < 1:
        raise ValueError(f"partitions={parts} should be >= 1")
    cum = np.cumsum(np.asarray(rows, dtype=np.int64))
    total = int(cum[-1]) if len(cum) else 0
    cuts = [0]
    for j in range(1, min(parts, len(names))):
        target = total * j / parts
        i = int(np.searchsorted(cum, target, side="left"))  # file where the target falls
        before = int(cum[i - 1]) if i > 0 else 0  # rows up to a cut before that file
        after = int(cum[i]) if i < len(cum) else total  # ... and after it
        cut = i if target - before < after - target else i + 1  # the nearer of the two
        cut = max(cut, cuts[-1] + 1)
        if cut >= len(names):
            break
        cuts.append(cut)
    cuts.append(len(names))
    return tuple(tuple(names[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a)


def executor_stage_root() -> Path:
    """Where this process stages blocks when the spec names no stage dir: ``kmeans-blocks``
    beside Spark's own scratch space. A PySpark worker finds its executor's block-manager dirs
    in ``SPARK_LOCAL_DIRS`` (``spark.local.dir``, or the worker's or pod's local dirs); the
    application's own sub-folders (``spark-*``, ``executor-*``, ``blockmgr-*``) are left out,
    so blocks outlive one application and the retention policy decides when they go. Outside
    Spark: the temporary folder."""
    first = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0]
    root = Path(first) if first else Path(tempfile.gettempdir())
    while root.name.startswith(("blockmgr-", "spark-", "executor-")) and root.parent != root:
        root = root.parent
    return root / "kmeans-blocks"


def stage_root(spec: BlockSpec) -> Path:
    return Path(spec.stage_dir) if spec.stage_dir else executor_stage_root()


def executor_id() -> str:
    """This process's executor, as ``host:local-dir`` (the block-manager dir is unique per
    executor; on the driver, or in ``local`` mode, there is one)."""
    return f"{socket.gethostname()}:{os.environ.get('SPARK_LOCAL_DIRS', 'driver')}"


TEMP_SUFFIX = ".tmp"
TEMP_MAX_AGE_S = 3600.0


def _is_key(name: str) -> bool:
    """A folder named as :func:`block_key` names them (other folders are left alone)."""
    return len(name) == 20 and all(c in "0123456789abcdef" for c in name)


def _filesystem_now(root: Path) -> float:
    """Now, as the file system under ``root`` stamps it: a key's age is then the difference of
    two times the same clock wrote, so a process whose clock jumped (an NTP step, a restored
    VM, a faked clock) neither removes a block written a moment ago nor keeps a stale one.
    The process's clock where ``root`` cannot be written."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".now-", dir=root)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(probe)


def stage_usage(root: str | Path) -> list[dict]:
    """Every key under a stage dir: blocks, bytes, temporary files and hours since last use.

    Examples
    --------
    >>> stage_usage("/nonexistent")
    []
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = _filesystem_now(root)
    out = []
    for key in sorted(p for p in root.iterdir() if p.is_dir() and _is_key(p.name)):
        files = [f for f in key.iterdir() if f.is_file()]
        out.append({"key": key.name, "path": str(key),
                    "blocks": sum(f.suffix == ".f32" for f in files),
                    "bytes": sum(f.stat().st_size for f in files),
                    "temporary": sum(f.name.endswith(TEMP_SUFFIX) for f in files),
                    "idle_hours": round((now - key.stat().st_mtime) / 3600, 2)})
    return out


def clean_stage(root: str | Path, *, retention_hours: float, keep: Sequence[str] = (),
                dry_run: bool = False) -> list[str]:
    """Remove the keys of a stage dir unused for ``retention_hours`` (except ``keep``) and
    the temporary files of task attempts that died over an hour ago; return what went.

    Examples
    --------
    >>> clean_stage("/nonexistent", retention_hours=1)
    []
    """
    removed: list[str] = []
    now = _filesystem_now(Path(root)) if Path(root).is_dir() else time.time()
    cutoff = now - retention_hours * 3600
    for entry in stage_usage(root):
        key = Path(entry["path"])
        if entry["key"] not in keep and key.stat().st_mtime < cutoff:
            removed.append(str(key))
            if not dry_run:
                shutil.rmtree(key, ignore_errors=True)
            continue
        for tmp in key.glob(f"*{TEMP_SUFFIX}"):
            try:
                old = tmp.stat().st_mtime < now - TEMP_MAX_AGE_S
            except FileNotFoundError:
                continue
            if old:
                removed.append(str(tmp))
                if not dry_run:
                    tmp.unlink(missing_ok=True)
    return removed


_CLEANED: set[tuple[str, str]] = set()  # (root, key) this process has already cleaned for


def _touch_and_clean(spec: BlockSpec) -> Path:
    """The key's folder, marked as used now; the first time per process and key, the stage
    dir's retention policy runs."""
    root = stage_root(spec)
    folder = root / spec.key
    folder.mkdir(parents=True, exist_ok=True)
    os.utime(folder)
    if (str(root), spec.key) not in _CLEANED:
        _CLEANED.add((str(root), spec.key))
        gone = clean_stage(root, retention_hours=spec.retention_hours, keep=[spec.key])
        if gone:
            log.info("stage dir %s: removed %d expired entries", root, len(gone))
    return folder


# ---------------------------------------------------------------- blocks

@dataclass
class Block:
    """A staged block: float32 rows, their weights (or None) and their global ids."""

    x: np.ndarray
    weights: np.ndarray | None
    ids: np.ndarray
    staged: bool = False  # built by this call


def load_staged(spec: BlockSpec, index: int) -> Block:
    """The staged block of partition ``index`` (memory-mapped), staged from the snapshot if
    this executor lacks it.

    Staging streams the Parquet file(s) batch by batch into raw files (temporary names, then
    rename), so neither the file nor the block has to fit in memory; later passes
    memory-map them and read them from the page cache, or from local disk when they do not
    fit.

    Examples
    --------
    >>> spec = parquet_spec("snapshot/", ["a", "b"], "/tmp/stage")  # doctest: +SKIP
    >>> load_staged(spec, 0).x.shape  # doctest: +SKIP
    (1000, 2)
    """
    base = stage_root(spec) / spec.key / f"block-{index:05d}"
    data = base.with_suffix(".f32")
    staged = False
    if not data.exists():
        _stage(spec, index, base)
        staged = True
    meta = json.loads(base.with_suffix(".json").read_text())
    rows, cols = meta["rows"], meta["cols"]

    def mapped(suffix: str, dtype: Any, shape: tuple) -> np.ndarray:
        if not rows:
            return np.empty(shape, dtype)
        return np.memmap(base.with_suffix(suffix), dtype=dtype, mode="r", shape=shape)

    weights = mapped(".w64", np.float64, (rows,)) if spec.weight_column else None
    return Block(mapped(".f32", np.float32, (rows, cols)), weights,
                 mapped(".ids", np.uint64, (rows,)), staged)


def load_block(spec: BlockSpec, index: int) -> np.ndarray:
    """The staged float32 rows of partition ``index``, built if missing."""
    return load_staged(spec, index).x


def load_block_and_weights(spec: BlockSpec, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rows, weights or None)`` of partition ``index``, built if missing."""
    block = load_staged(spec, index)
    return block.x, block.weights


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


def _keep(spec: BlockSpec, frame: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    """Rows of a batch to stage: the row filter's, then a ``sample_fraction`` draw keyed by
    each row's id (so the draws depend neither on the filter nor on the blocks)."""
    keep = np.ones(len(frame), dtype=bool)
    if spec.row_filter is not None:
        keep = np.asarray(spec.row_filter(frame), dtype=bool)
        if keep.shape != (len(frame),):
            raise ValueError(f"row_filter returned shape {keep.shape}; expected ({len(frame)},)")
    if spec.sample_fraction < 1.0:
        keep = keep & (uniforms(ids, STAGE_STREAM, spec.sample_seed) < spec.sample_fraction)
    return keep


def _first_ids(spec: BlockSpec) -> dict[str, int]:
    """The global id of each file's first row."""
    offsets = dict(spec.row_offsets)
    every = sorted({n for entry in spec.files
                    for n in ((entry,) if isinstance(entry, str) else entry)})
    return {n: offsets.get(n, rank << 40) for rank, n in enumerate(every)}


def _stage(spec: BlockSpec, index: int, base: Path) -> None:
    folder = _touch_and_clean(spec)
    # unique to this task attempt, across hosts sharing a volume and speculative copies
    tag = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    parts = {s: folder / f"{base.name}{s}.{tag}" for s in (".f32", ".w64", ".ids", ".json")}
    entry = spec.files[index]
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    first = _first_ids(spec)
    fs, root = filesystem(spec.snapshot_dir)
    rows = 0
    cols: int | None = len(spec.columns) if spec.transform is None else None
    try:
        with open(parts[".f32"], "wb") as fx, open(parts[".w64"], "wb") as fw, \
                open(parts[".ids"], "wb") as fi:
            for name in names:
                position = first[name]
                with fs.open_input_file(_join(root, name)) as handle:
                    for batch in pq.ParquetFile(handle).iter_batches(batch_size=262_144):
                        frame = batch.to_pandas()
                        ids = np.arange(position, position + len(frame), dtype=np.uint64)
                        position += len(frame)
                        keep = _keep(spec, frame, ids)
                        frame, ids = frame.loc[keep], ids[keep]
                        x = _rows_of(spec, frame, names)
                        cols = x.shape[1]
                        fx.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
                        fi.write(ids.tobytes())
                        if spec.weight_column:
                            w = frame[spec.weight_column].to_numpy(dtype=np.float64)
                            if not (np.isfinite(w).all() and (w >= 0).all()):
                                raise ValueError(f"{names}: weight column "
                                                 f"{spec.weight_column!r} must be finite "
                                                 "and >= 0")
                            fw.write(w.tobytes())
                        rows += len(x)
        if cols is None:  # no batch at all: the transform's width, from an empty frame
            with fs.open_input_file(_join(root, names[0])) as handle:
                empty = pq.ParquetFile(handle).schema_arrow.empty_table()
            cols = _rows_of(spec, empty.to_pandas(), names).shape[1]
        parts[".json"].write_text(json.dumps({"rows": rows, "cols": cols}))
        for suffix in (".ids", ".w64", ".json", ".f32"):  # .f32 last: it means "whole"
            if suffix == ".w64" and not spec.weight_column:
                continue
            os.replace(parts[suffix], base.with_suffix(suffix))
    finally:
        for path in parts.values():
            path.unlink(missing_ok=True)


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
            _touch_and_clean(spec)
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


def parquet_spec(path: str | Path, columns: list[str], stage_dir: str | Path | None, *,
                 threads: int = 1, weight_column: str | None = None,
                 partitions: int | None = None) -> BlockSpec:
    """Spec over a folder (or object-store prefix) of Parquet files, taking ``columns`` as
    they are.

    One task per file, or ``partitions`` tasks each staging consecutive files holding about
    the same number of rows (:func:`balanced_groups`): fewer, larger tasks cut the fixed cost
    of every iteration's job (give each ``threads`` kernel threads and set ``spark.task.cpus``
    to match). ``stage_dir`` None or empty stages on each executor's local storage. The key
    covers the location, each file's size, modification time and ETag, the grouping, the
    columns and the weight column.

    Examples
    --------
    >>> spec = parquet_spec("data/", ["a", "b"], "/tmp/stage", partitions=2)  # doctest: +SKIP
    >>> len(spec.files)  # doctest: +SKIP
    2
    """
    listing = list_parquet(path)
    files: tuple = listing.names
    if partitions is not None:
        files = balanced_groups(listing.names, listing.rows, partitions)
    location = str(path) if "://" in str(path) else str(Path(path).resolve())
    digest = hashlib.sha256(json.dumps(
        [location, listing.stamps, [list(g) if isinstance(g, tuple) else g for g in files]]
    ).encode()).hexdigest()
    return BlockSpec(snapshot_dir=str(path), files=files, stage_dir=str(stage_dir or ""),
                     key=block_key(digest, list(columns), weight_column),
                     columns=tuple(columns), threads=threads, weight_column=weight_column,
                     row_offsets=listing.offsets)


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
    out = _join(write_dir, f"frame-{key}")
    fs, out_path = filesystem(out)
    if fs.get_file_info(_join(out_path, "_SUCCESS")).type != pafs.FileType.File:
        frame = df.select(*wanted)
        if partitions:
            frame = frame.repartition(partitions)
        frame.write.mode("overwrite").parquet(out)
    return SparkBlockSource(spark, parquet_spec(out, columns, stage_dir, threads=threads,
                                                weight_column=weight_column))
