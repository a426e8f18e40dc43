"""The staging store: a snapshot's rows staged once per executor as float32 blocks.

Each task decodes its Parquet file(s) once into a contiguous float32 block in executor-local
storage (temporary name unique to the task attempt, then rename; under a key the caller derives
from what defines the block: snapshot hash, preprocessing, row filter, sampling) and
memory-maps it in every later iteration. A stage dir keeps the keys used within its retention
period and the temporary files of live task attempts; :func:`stage_usage` and
:func:`clean_stage` report and apply that policy (``kmeans stage``).

Preprocessing and row selection are passed in as picklable callables (:class:`BlockSpec`), so
the engine knows nothing of the project's features or splits. A row's id is its global
position in the snapshot, so every random draw keyed by it does not depend on how the rows
are split into blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.engine.kernel import (
    STAGE_STREAM,
    uniforms,
)
from pipeline.engine.snapshot import balanced_groups, filesystem, join_path, list_parquet

log = logging.getLogger(__name__)


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
    block_rows : tuple of int
        Rows in each task's file(s) before any filter, when known: a Spark source spreads the
        blocks over the executors by them (empty: every block counts the same).
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
    block_rows: tuple[int, ...] = ()


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
    """Remove the keys of a stage dir unused for ``retention_hours`` (except ``keep``), the
    temporary files of task attempts that died over an hour ago, and Lloyd bounds unused for
    an hour; return what went.

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
        for bounds in key.glob("bounds-*"):  # a Spark source's bounds (blockbounds.py)
            try:
                old = bounds.stat().st_mtime < now - TEMP_MAX_AGE_S
            except FileNotFoundError:
                continue
            if old and bounds.is_dir():
                removed.append(str(bounds))
                if not dry_run:
                    shutil.rmtree(bounds, ignore_errors=True)
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


def touch_and_clean(spec: BlockSpec) -> Path:
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


def load_staged(spec: BlockSpec, index: int, run: str = "") -> Block:
    """The staged block of partition ``index`` (memory-mapped), staged from the snapshot if
    this executor lacks it. A staging under a ``run`` (a Spark source's id) is logged in the
    key's folder (:func:`logged_stagings`).

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
        if run:
            with open(base.parent / STAGING_LOG, "a") as out:  # one short line: one write
                out.write(f"{run} {index} {uuid.uuid4().hex}\n")
    meta = json.loads(base.with_suffix(".json").read_text())
    rows, cols = meta["rows"], meta["cols"]

    def mapped(suffix: str, dtype: Any, shape: tuple) -> np.ndarray:
        if not rows:
            return np.empty(shape, dtype)
        return mapped_file(base.with_suffix(suffix), dtype, shape)

    weights = mapped(".w64", np.float64, (rows,)) if spec.weight_column else None
    return Block(mapped(".f32", np.float32, (rows, cols)), weights,
                 mapped(".ids", np.uint64, (rows,)), staged)


#: The memory maps this process keeps for the next pass: (path, mode) -> (the file's device,
#: inode and size when mapped, the map). A Spark worker runs a task per pass and is reused,
#: and mapping a block anew each pass costs a page fault per 4 KiB page on first touch: 10 ms
#: of a 1.25M x 32 block's pass, and with its bounds files 30 ms of a pass that skips most
#: rows (48 ms against 17 ms on kept maps, measured here).
_MAPS: OrderedDict[tuple[str, str], tuple[tuple[int, int, int], np.memmap]] = OrderedDict()
MAX_MAPS = 256
_MAPS_LOCK = threading.Lock()


def mapped_file(path: Path, dtype: Any, shape: tuple,
                mode: Literal["r", "r+"] = "r") -> np.memmap:
    """``np.memmap(path, dtype, mode, shape)``, kept in this process and given again while
    the file is the same one (device, inode, size): a re-staged block is a new file (written
    under a temporary name, then renamed), so it is mapped anew. Maps of files that are gone
    are let go whenever another file is mapped, so a cleaned stage dir's space comes back.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.f32"
    >>> np.arange(4, dtype=np.float32).tofile(path)
    >>> mapped_file(path, np.float32, (4,)) is mapped_file(path, np.float32, (4,))
    True
    """
    info = os.stat(path)
    ident = (info.st_dev, info.st_ino, info.st_size)
    key = (str(path), mode)
    with _MAPS_LOCK:  # a process may load blocks from several threads
        kept = _MAPS.get(key)
        if (kept is not None and kept[0] == ident and kept[1].shape == tuple(shape)
                and kept[1].dtype == np.dtype(dtype)):
            _MAPS.move_to_end(key)
            return kept[1]
        for other, (other_ident, _map) in list(_MAPS.items()):
            try:
                gone = other == key or _ident(other[0]) != other_ident
            except OSError:
                gone = True
            if gone:
                del _MAPS[other]
        made = np.memmap(path, dtype=dtype, mode=mode, shape=shape)
        _MAPS[key] = (ident, made)
        while len(_MAPS) > MAX_MAPS:
            _MAPS.popitem(last=False)
        return made


def forget_mapped(path: Path) -> None:
    """Let go of this process's maps of ``path`` (before the file is rewritten in place)."""
    with _MAPS_LOCK:
        for key in [k for k in _MAPS if k[0] == str(path)]:
            del _MAPS[key]


def _ident(path: str) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino, info.st_size


STAGING_LOG = "stagings.log"


def logged_stagings(spec: BlockSpec, run: str) -> list[tuple[int, str]]:
    """``(block, token)`` of every staging logged under ``run`` in this process's stage dir
    for the spec's key: what a source counts, including stagings by attempts whose result
    Spark dropped."""
    try:
        text = (stage_root(spec) / spec.key / STAGING_LOG).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == run:
            out.append((int(parts[1]), parts[2]))
    return out


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
    folder = touch_and_clean(spec)
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
                with fs.open_input_file(join_path(root, name)) as handle:
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
            with fs.open_input_file(join_path(root, names[0])) as handle:
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
    per_file = dict(zip(listing.names, listing.rows, strict=True))
    block_rows = tuple(sum(per_file[n] for n in ((g,) if isinstance(g, str) else g))
                       for g in files)
    location = str(path) if "://" in str(path) else str(Path(path).resolve())
    digest = hashlib.sha256(json.dumps(
        [location, listing.stamps, [list(g) if isinstance(g, tuple) else g for g in files]]
    ).encode()).hexdigest()
    return BlockSpec(snapshot_dir=str(path), files=files, stage_dir=str(stage_dir or ""),
                     key=block_key(digest, list(columns), weight_column),
                     columns=tuple(columns), threads=threads, weight_column=weight_column,
                     row_offsets=listing.offsets, block_rows=block_rows)

