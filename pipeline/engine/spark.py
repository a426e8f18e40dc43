"""The Spark block source of the engine: one Spark job per Lloyd pass over staged blocks.

The driver spreads the blocks over the executors by cores (:mod:`pipeline.engine.placement`);
each pass is a job over an RDD of block indices whose tasks prefer the executor that holds
their block (``executor_<host>_<id>`` locations), and each task stages its block from the
snapshot first if that executor lacks it (:mod:`pipeline.engine.staging`). Nothing of a pass
is cached in Spark, so no task ever fetches anything from another executor but the stage's
task binary, which an executor fetches when it runs its first task of the stage (the driver
holds it; so does every executor that ran a task of it).

Each task's result goes to the driver through an accumulator the moment the task ends, so the
driver sees a pass's progress block by block and works around lost and late executors
(:class:`SparkBlockSource`). The centroids of every candidate K travel in the task closure (a
few KB). Each task returns per-K sums, counts and inertia; the driver adds them up. Every
random draw is keyed by a row's global position, so the result does not depend on how the
rows are split into blocks or where a block's task runs. The session comes from
:mod:`pipeline.engine.session`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from pyspark.accumulators import AccumulatorParam

from pipeline.engine.blockbounds import bounded_block_stats
from pipeline.engine.bounds import BoundedLloyd, continued
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
from pipeline.engine.placement import (
    Executor,
    Placement,
    assign,
    behind_executors,
    late_executors,
    loads,
)
from pipeline.engine.snapshot import filesystem, join_path
from pipeline.engine.staging import (
    Block,
    BlockSpec,
    executor_id,
    load_staged,
    logged_stagings,
    parquet_spec,
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


_EXECUTOR: list[str] = []  # this process's Spark executor id, once looked up


def spark_executor_id() -> str:
    """The Spark executor this Python worker serves, as the driver names it: the
    ``--executor-id`` of the executor JVM the worker descends from (standalone, YARN and
    Kubernetes executors are all started with one; read from Linux's /proc). ``driver`` when
    no ancestor has one (local mode), and ``host:local dir`` where /proc is missing."""
    if not _EXECUTOR:
        _EXECUTOR.append(_executor_from_proc() or
                         ("driver" if Path("/proc/self").exists() else executor_id()))
    return _EXECUTOR[0]


def _executor_from_proc(levels: int = 4) -> str | None:
    pid = os.getppid()
    for _ in range(levels):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--executor-id" in args:
                return args[args.index(b"--executor-id") + 1].decode()
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if pid <= 1:
            return None
    return None


@dataclass(frozen=True)
class Outcome:
    """What a task sends the driver for its block, the moment it finishes (through the
    source's accumulator, not the job's result: see :class:`Inbox`)."""

    pass_id: str
    index: int
    executor: str  # spark_executor_id() of the worker that ran it
    staged: bool  # this task staged the block
    rows: int
    cols: int
    seconds: float  # in the task: staging (if any) and the work
    payload: Any
    stagings: tuple[tuple[int, str], ...]  # stagings under this source logged on its executor


class Inbox(AccumulatorParam):
    """The channel from tasks to the driver. Spark merges a task's accumulator updates on the
    driver as the task finishes (once per block and job, never for a failed or killed
    attempt), before its job ends: so the driver has every block's result as soon as it
    exists, and a pass is over when every block is in, whatever Spark still waits for (a
    frozen executor's task, a lost executor's pending one). On the driver ``sink`` takes the
    outcomes; it does not travel to the executors."""

    def __init__(self, sink: Callable[[list[Outcome]], None] | None = None) -> None:
        self.sink = sink

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.sink = None

    def zero(self, value: Any) -> list:
        return []

    def addInPlace(self, value1: list, value2: list) -> list:  # noqa: N802 - PySpark's name
        if self.sink is not None:  # the driver: hand them over, keep nothing
            self.sink(value2)
            return value1
        value1.extend(value2)
        return value1


def _block_task(spec: BlockSpec, work: Callable[[int, Block], Any], pass_id: str, run: str,
                inbox: Any) -> TaskFn:
    """A task over block indices: loads each block (staging it from the snapshot if this
    executor lacks it), runs ``work`` on it and sends the outcome to the driver."""
    def run_task(_partition: int, rows: Iterator[Any]) -> Iterator[Any]:
        for index in _drain(rows):
            start = time.perf_counter()
            block = load_staged(spec, index, run)
            payload = work(index, block)
            inbox.add([Outcome(pass_id, index, spark_executor_id(), block.staged,
                               int(block.x.shape[0]), int(block.x.shape[1]),
                               time.perf_counter() - start, payload,
                               tuple(logged_stagings(spec, run)))])
        return iter(())
    return run_task


def _each(indices: list[int]) -> list[int]:
    return indices


def _warm_task(rows: Iterator[Any]) -> Iterator[str]:
    _drain(rows)
    time.sleep(0.2)  # hold the core while the other slots take their task
    yield executor_id()


def _step(centroids: list[np.ndarray], threads: int) -> Callable[[int, Block], list[Stats]]:
    def work(_index: int, block: Block) -> list[Stats]:
        return partial_stats(block.x, centroids, block.weights, threads=threads)
    return work


def _d2(centers: np.ndarray, scale: float, seed: list[int],
        threads: int) -> Callable[[int, Block], Any]:
    def work(_index: int, block: Block) -> np.ndarray:
        return draw_d2(block.x, centers, scale, uniforms(block.ids, D2_STREAM, *seed),
                       block.weights, threads=threads)
    return work


def _sample(threshold: float, seed: int) -> Callable[[int, Block], Any]:
    def work(_index: int, block: Block) -> tuple:
        u = uniforms(block.ids, SAMPLE_STREAM, seed)
        keep = u < threshold
        w = (np.ones(int(keep.sum())) if block.weights is None
             else np.asarray(block.weights[keep]))
        return np.asarray(block.x[keep]), w, np.asarray(block.ids[keep]), u[keep]
    return work


def _nothing(_index: int, _block: Block) -> None:
    return None


def _bounded(spec: BlockSpec, run: str, centroids: list[np.ndarray], entry_ids: list[int],
             threads: int) -> Callable[[int, Block], Any]:
    def work(index: int, block: Block) -> tuple[list[Stats], float, int]:
        stats, skipped = bounded_block_stats(spec, run, index, block, centroids, entry_ids,
                                             threads)
        return stats, skipped, int(block.x.shape[0])
    return work


# ---------------------------------------------------------------- the source

#: An executor with blocks still to deliver in a pass is late when it has delivered nothing
#: for max(LATE_FLOOR_S, LATE_MULTIPLIER x the median task time of the pass so far, the median
#: time to stage a block); its missing blocks are then recomputed on the other executors
#: (staged there from the snapshot if need be), and they stay there while it is on probation.
#: Waiting for a block is given up only when it has cost as much as staging it elsewhere
#: would (large blocks from an object store take seconds each), and at least the floor, which
#: keeps a busy machine's hiccups from moving small ones.
LATE_FLOOR_S = 1.0
LATE_MULTIPLIER = 3.0
POLL_S = 0.05  # how often a pass looks at lost and late executors


@dataclass
class _Job:
    group: str
    blocks: tuple[int, ...]
    future: Future | None = None


class SparkBlockSource:
    """Engine source over Parquet files, one Spark task per block (a file or a group of files).

    The blocks are spread over the executors by cores (and rows) and staged when the source
    is built; every later pass is one Spark job whose tasks prefer the executor that holds
    their block (Spark's executor-level locality), so a block is read from its executor's
    local disk or page cache. Each task's result reaches the driver the moment it finishes
    (:class:`Inbox`), so a pass does not wait for Spark's view of the job:

    - an executor lost mid-pass: its missing blocks are sent at once to the survivors, spread
      by free cores, where they are staged from the snapshot; the survivors' tasks run on;
    - an executor that stops delivering (frozen by a GC pause or SIGSTOP): after
      :data:`LATE_FLOOR_S` / :data:`LATE_MULTIPLIER` its missing blocks are recomputed on the
      others, read from the snapshot (nothing is fetched from the late executor);
    - an executor still at its share of the pass when the others have been done with theirs
      for as long again (slowed: a throttled container, a noisy neighbour): the same, within
      that pass (:func:`~pipeline.engine.placement.behind_executors`);
    - either way those blocks stay where they were recomputed, and the pass's leftover job is
      cancelled (only the late or lost executor's tasks were still in it).

    Every block's result is the same wherever it is computed, so the fit is too.
    ``placement`` counts the stagings, moves and rescues; :meth:`report` sums them up.

    Examples
    --------
    >>> source = SparkBlockSource(spark, parquet_spec("data/", ["a", "b"], "/tmp/stage"))
    ... # doctest: +SKIP
    >>> fit_sweep(source, [3, 4], seed=0).fits[3].centroids.shape  # doctest: +SKIP
    (3, 2)
    """

    def __init__(self, spark: Any, spec: BlockSpec, *, late_floor_s: float = LATE_FLOOR_S,
                 late_multiplier: float = LATE_MULTIPLIER, bounds: bool = True):
        self.spark = spark
        self.sc = spark.sparkContext
        self.spec = spec
        self.parts = len(spec.files)
        self.local = self.sc.master.startswith("local")
        self.late_floor_s, self.late_multiplier = late_floor_s, late_multiplier
        self.staging_s = 0.0  # median seconds to stage a block here (the late limit's part)
        self._staged_seconds: list[float] = []
        self.run = uuid.uuid4().hex[:16]
        self.bounds = bounds
        self.skipped: list[float] = []  # per bounded pass: share of rows that skipped
        self._entry_ids: list[tuple[int, int]] = []  # (entry id, k) of the last bounded pass
        self._next_entry = 0
        self.jobs = 0
        self.placement = Placement()
        self._cond = threading.Condition()
        self._boxes: dict[str, dict[int, Outcome]] = {}
        self._arrivals: dict[str, dict[int, float]] = {}  # pass -> block -> when it came
        self._inbox = Inbox(self._receive)
        self._acc = self.sc.accumulator([], self._inbox)
        self._rdds: dict[tuple, Any] = {}
        self._pool = None if self.local else ThreadPoolExecutor(4, thread_name_prefix="kmeans")
        if not self.local:
            self._warm_up()
        self.executors = self._alive()
        self.weights = {i: float(spec.block_rows[i]) if spec.block_rows else 1.0
                        for i in range(self.parts)}
        self.placement.home = assign(self.weights, self.executors.values())
        shapes = self._pass(_nothing)
        self.rows_per_part = {i: o.rows for i, o in shapes.items()}
        self.n_rows = sum(self.rows_per_part.values())
        self.n_features = shapes[0].cols
        if self.n_rows == 0:
            raise ValueError(f"{spec.snapshot_dir} has no rows left after the row filter and "
                             f"sample_fraction={spec.sample_fraction}")

    # ---- executors

    def _warm_up(self) -> None:
        """One task per core, each starting its executor's Python daemon (which warms the
        kernel), before the staging pass: without it the executor whose Python worker starts
        first would deliver its blocks seconds before the other, which then looks late."""
        slots = max(1, self.sc.defaultParallelism)
        self.sc.parallelize(range(slots), slots).mapPartitions(_warm_task).collect()

    def _block_managers(self) -> int:
        """Block managers registered with the driver (executors, and the driver's own)."""
        return int(self.sc._jsc.sc().getExecutorMemoryStatus().size())

    def _scheduled_executors(self) -> set[str]:
        """The executors the scheduler backend has registered (SparkContext.getExecutorIds,
        Spark's own; empty when this Spark does not expose it)."""
        try:
            ids = self.sc._jsc.sc().getExecutorIds()
            return {str(ids.apply(i)) for i in range(ids.size())}
        except Exception:  # noqa: BLE001 - a private API: the block managers still count
            return set()

    def _alive(self, timeout: float = 30.0) -> dict[str, Executor]:
        """The active executors: id, host and cores, from the application's status store
        (what the UI's executors page shows). It follows the scheduler by a few ms, and an
        executor's block manager registers after the executor does, so this waits until it
        lists every executor the scheduler knows and as many as there are block managers (the
        block managers alone once let a fit start with one executor of two: the second's had
        not registered yet)."""
        if self.local:
            return {"driver": Executor("driver", "localhost", self.sc.defaultParallelism)}
        deadline = time.monotonic() + timeout
        while True:
            summaries = self.sc._jsc.sc().statusStore().executorList(True)
            found = {}
            for i in range(summaries.size()):
                e = summaries.apply(i)
                if e.id() != "driver":
                    found[e.id()] = Executor(e.id(), e.hostPort().rsplit(":", 1)[0],
                                             int(e.totalCores()))
            known = self._scheduled_executors()
            if (found and len(found) == self._block_managers() - 1
                    and known <= set(found)) or time.monotonic() > deadline:
                if not found:
                    raise RuntimeError("no executor registered with the driver within "
                                       f"{timeout:.0f} s")
                return found
            time.sleep(0.02)

    def _lost(self) -> set[str]:
        """Executors gone since the last look (and the new list taken)."""
        if self._block_managers() - 1 == len(self.executors):
            return set()
        alive = self._alive(timeout=0.5)
        lost = set(self.executors) - set(alive)
        self.executors = alive
        return lost

    # ---- jobs

    def _receive(self, outcomes: list[Outcome]) -> None:
        """The accumulator's sink on the driver (its update server's thread)."""
        with self._cond:
            for outcome in outcomes:
                self.placement.tokens.update(outcome.stagings)
                box = self._boxes.get(outcome.pass_id)
                if box is not None and outcome.index not in box:  # the first result wins
                    box[outcome.index] = outcome
                    self._arrivals[outcome.pass_id][outcome.index] = time.monotonic()
            self._cond.notify_all()

    def _task(self, work: Callable[[int, Block], Any], pass_id: str) -> TaskFn:
        return _block_task(self.spec, work, pass_id, self.run, self._acc)

    def _placed(self, blocks: dict[int, str]) -> Any:
        """An RDD of block indices, one per partition, each preferring its executor; on a
        local master, one partition per core, each with its share of the blocks by rows (a
        task costs ~8 ms on top of a job's ~70 ms here: 8 blocks in 2 tasks save ~50 ms a
        pass, and nothing is late or lost in one process)."""
        key = tuple(sorted(blocks.items()))
        if key in self._rdds:
            return self._rdds[key]
        if self.local:
            slots = max(1, min(len(key), self.sc.defaultParallelism))
            share = assign({i: self.weights[i] for i, _ in key},
                           [Executor(str(s), "local", 1) for s in range(slots)])
            bins = [[i for i, _ in key if share[i] == str(s)] for s in range(slots)]
            rdd = self.sc.parallelize(bins, slots).flatMap(_each)
        else:
            from pyspark.rdd import RDD
            from pyspark.serializers import CPickleSerializer

            jvm = self.sc._jvm
            convert = jvm.scala.jdk.javaapi.CollectionConverters
            items = jvm.java.util.ArrayList()
            for index, executor in key:
                prefs = jvm.java.util.ArrayList()
                if executor in self.executors:
                    prefs.add(self.executors[executor].location)
                items.add(jvm.scala.Tuple2(bytearray(pickle.dumps(index)),
                                           convert.asScala(prefs).toSeq()))
            tag = jvm.scala.reflect.ClassTag.apply(jvm.java.lang.Class.forName("[B"))
            made = self.sc._jsc.sc().makeRDD(convert.asScala(items).toSeq(), tag)
            rdd = RDD(jvm.org.apache.spark.api.java.JavaRDD.fromRDD(made, tag), self.sc,
                      CPickleSerializer())
        if len(self._rdds) >= 8:
            self._rdds.clear()
        self._rdds[key] = rdd
        return rdd

    def _submit(self, pass_id: str, work: Callable[[int, Block], Any],
                blocks: dict[int, str]) -> _Job:
        self.jobs += 1
        job = _Job(f"kmeans-{pass_id}-{self.jobs}", tuple(sorted(blocks)))
        rdd = self._placed(blocks).mapPartitionsWithIndex(self._task(work, pass_id))
        if self._pool is None:  # local: nothing to watch, the job runs here
            rdd.count()
            return job

        def run() -> None:
            self.sc.setJobGroup(job.group, f"k-means pass over {self.spec.key}",
                                interruptOnCancel=False)
            try:
                rdd.count()
            finally:
                with self._cond:
                    self._cond.notify_all()

        job.future = self._pool.submit(run)
        return job

    def _pass(self, work: Callable[[int, Block], Any]) -> dict[int, Outcome]:
        """One pass over every block; the outcome of each, by block."""
        pass_id = uuid.uuid4().hex[:12]
        with self._cond:
            box = self._boxes[pass_id] = {}
            arrivals = self._arrivals[pass_id] = {}
        target = self.placement.targets()  # block -> executor of its latest job
        jobs: list[_Job] = []
        late: set[str] = set()
        start = time.monotonic()
        try:
            jobs.append(self._submit(pass_id, work, target))
            if self._pool is not None:
                late = self._watch(pass_id, work, box, target, jobs)
        finally:
            with self._cond:
                self._boxes.pop(pass_id, None)
                self._arrivals.pop(pass_id, None)
            self._finish(jobs)
        missing = sorted(set(range(self.parts)) - set(box))
        if missing:
            raise RuntimeError(f"the pass over {self.spec.key} ended without results for "
                               f"blocks {missing[:10]}")
        self.placement.record({i: o.executor for i, o in box.items()}, late)
        self._staged_seconds.extend(o.seconds for o in box.values() if o.staged)
        if self._staged_seconds:
            self.staging_s = float(np.median(self._staged_seconds[-64:]))
        if self._pool is not None and len(jobs) == 1:  # a pass without rescues
            finish: dict[str, float] = {}
            for index, outcome in box.items():
                finish[outcome.executor] = max(finish.get(outcome.executor, 0.0),
                                               arrivals[index] - start)
            self._demote_slow(finish)
        return box

    def _demote_slow(self, finish: dict[str, float]) -> None:
        """Executors slow over the last passes (:meth:`Placement.observe`) go on probation:
        from the next pass their blocks run on the others (staged there on first use)."""
        slow = self.placement.observe(finish)
        helpers = [e for e in self.executors.values()
                   if e.id not in slow and e.id not in self.placement.probation]
        if not slow or not helpers:
            return
        target = self.placement.targets()
        moving = assign({i: self.weights[i] for i, e in target.items() if e in slow}, helpers,
                        loads({i: e for i, e in target.items() if e not in slow},
                              self.weights))
        for executor in slow:
            self.placement.mark_late(executor)
        self.placement.late -= len(slow)
        self.placement.slow += len(slow)
        self.placement.stand_ins(moving)
        log.warning("executors %s ran at under half the others' rate: blocks %s go to %s "
                    "while they are on probation", slow, sorted(moving),
                    sorted(set(moving.values())))

    def _watch(self, pass_id: str, work: Callable[[int, Block], Any], box: dict[int, Outcome],
               target: dict[int, str], jobs: list[_Job]) -> set[str]:
        """Until every block is in: blocks of lost executors go to the survivors at once,
        blocks of late ones after the late limit, and those of an executor still at its
        share long after the others finished theirs (:func:`behind_executors`) then; a job's
        error is raised. Returns the executors found late or behind."""
        start = time.monotonic()
        progress = {e: start for e in self.executors}
        seconds: list[float] = []
        seen = 0
        late: set[str] = set()
        helping: set[str] = set()  # executors that took over blocks in this pass
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(box) == self.parts or any(
                    j.future is not None and j.future.done() for j in jobs), POLL_S)
                arrived = list(box.values())
            if len(arrived) == self.parts:
                return late
            now = time.monotonic()
            for outcome in arrived[seen:]:
                progress[outcome.executor] = now
                seconds.append(outcome.seconds)
            seen = len(arrived)
            for job in jobs:
                if job.future is not None and job.future.done() and job.future.exception():
                    raise job.future.exception()  # type: ignore[misc]
            if all(j.future is not None and j.future.done() for j in jobs):
                return late  # every job ended and blocks are missing: _pass says which
            waiting = {i: e for i, e in target.items() if i not in box}
            lost = self._lost()
            if lost:
                homes = self.placement.rehome(lost, self.executors.values(), self.weights)
                log.warning("executors %s lost during a pass: their blocks go to %s",
                            sorted(lost), sorted(set(homes.values())))
                now_at = self.placement.targets()
                moving = {i: now_at[i] for i, e in waiting.items() if e in lost}
                if moving:
                    self.placement.rescued += len(moving)
                    helping |= set(moving.values())
                    self._resubmit(pass_id, work, moving, target, jobs, progress, now)
                continue
            pending: dict[str, int] = {}
            for e in waiting.values():
                if e not in helping:  # staging what it took over: not judged in this pass
                    pending[e] = pending.get(e, 0) + 1
            newly = set(late_executors(pending, progress, now, seconds,
                                       floor=max(self.late_floor_s, self.staging_s),
                                       multiplier=self.late_multiplier)) - late
            behind: set[str] = set()
            if self.placement.passes:  # not while the blocks are first staged
                behind = set(behind_executors(
                    pending, self._finished(pass_id, target, late, start), now - start,
                    last={e: t - start for e, t in progress.items()},
                    extra_s=self.staging_s, share=self._shares(target),
                    cores={e: ex.cores for e, ex in self.executors.items()})) - late - newly
            newly |= behind
            helpers = [ex for ex in self.executors.values()
                       if ex.id not in late | newly and ex.id not in self.placement.probation]
            if not newly or not helpers:
                continue
            late |= newly
            for executor in newly:
                self.placement.mark_late(executor)
            self.placement.late -= len(behind)  # counted as slow, as _demote_slow does
            self.placement.slow += len(behind)
            moving_blocks = {i: self.weights[i] for i, e in waiting.items() if e in newly}
            busy = loads({i: e for i, e in target.items() if e not in late}, self.weights)
            moving = assign(moving_blocks, helpers, busy)
            # what they delivered before falling behind runs elsewhere too from the next
            # pass, while they are on probation (else it would wait on them once more)
            delivered = {i: self.weights[i] for i, e in target.items()
                         if e in newly and i not in waiting}
            if delivered:
                after = dict(busy)
                for index, executor in moving.items():
                    after[executor] = after.get(executor, 0.0) + self.weights[index]
                self.placement.stand_in.update(assign(delivered, helpers, after))
            log.warning("executors %s delivered nothing for %.1f s or were still at their "
                        "share of the pass long after the others: blocks %s recomputed on "
                        "%s", sorted(newly), now - start, sorted(moving),
                        sorted(set(moving.values())))
            self.placement.stand_ins(moving)
            helping |= set(moving.values())
            self._resubmit(pass_id, work, moving, target, jobs, progress, now)

    def _finished(self, pass_id: str, target: dict[int, str], late: set[str],
                  start: float) -> dict[str, float]:
        """Executors whose every block of the pass is in, and when the last came (seconds
        from the pass's start)."""
        with self._cond:
            arrivals = dict(self._arrivals.get(pass_id, {}))
        last: dict[str, float] = {}
        open_: set[str] = set(late)
        for index, executor in target.items():
            if index not in arrivals:
                open_.add(executor)
            else:
                last[executor] = max(last.get(executor, 0.0), arrivals[index] - start)
        return {e: t for e, t in last.items() if e not in open_}

    def _shares(self, target: dict[int, str]) -> dict[str, float]:
        """Rows per core of each executor's blocks in a pass."""
        return {e: w / max(self.executors[e].cores, 1) if e in self.executors else w
                for e, w in loads(target, self.weights).items()}

    def _resubmit(self, pass_id: str, work: Callable[[int, Block], Any],
                  moving: dict[int, str], target: dict[int, str], jobs: list[_Job],
                  progress: dict[str, float], now: float) -> None:
        """A job for blocks sent elsewhere within a pass."""
        target.update(moving)
        for executor in set(moving.values()):
            progress[executor] = now  # its clock starts with the new work
        jobs.append(self._submit(pass_id, work, moving))

    def _finish(self, jobs: list[_Job]) -> None:
        """Cancel what is left of a pass's jobs (tasks of late or lost executors) and wait
        until Spark has let go of them."""
        for job in jobs:
            if job.future is not None and not job.future.done():
                self.sc.cancelJobGroup(job.group)
        for job in jobs:
            if job.future is not None:
                try:
                    job.future.result(timeout=60)
                except Exception as error:  # noqa: BLE001 - cancelled: expected
                    log.debug("job %s: %s", job.group, error)

    # ---- the engine's source protocol

    def _collect(self, work: Callable[[int, Block], Any]) -> list[Any]:
        box = self._pass(work)
        return [box[i].payload for i in range(self.parts)]

    def report(self) -> dict:
        """Blocks, executors, stagings, re-stagings, task moves, rescued blocks, lost and late
        executors, and row imbalance (largest block over the mean) so far."""
        return {**self.placement.summary(self.rows_per_part), "jobs": self.jobs,
                "bounded_passes": len(self.skipped),
                "bounds_skipped_mean": (float(np.mean(self.skipped)) if self.skipped
                                        else None)}

    def close(self) -> None:
        """Let go of the pass machinery (the staged blocks stay for the next source with the
        same key)."""
        self._inbox.sink = None
        self._rdds.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.sample_with_weights(n, seed)[0]

    def sample_with_weights(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return take_sample(self._collect(_sample(sample_threshold(n, self.n_rows), seed)), n)

    def sample_d2(self, centers: np.ndarray, scale: float, seed: Sequence[int]) -> np.ndarray:
        centers = np.asarray(centers, dtype=np.float32)
        draw = _d2(centers, scale, [int(s) for s in seed], self.spec.threads)
        return np.concatenate(self._collect(draw))

    def step(self, centroids: list[np.ndarray]) -> list[Stats]:
        sent = [np.asarray(c, dtype=np.float32) for c in centroids]
        return reduce(add_stats, self._collect(_step(sent, self.spec.threads)))

    def lloyd_step(self, centroids: list[np.ndarray]) -> list[Stats]:
        """A Lloyd iteration: :meth:`step`'s sums and counts, from Hamerly's bounds kept
        beside each block on its executor (:mod:`pipeline.engine.blockbounds`) when
        ``bounds`` is on and they pay; the inertia is then NaN. ``skipped`` records the share
        of rows that skipped the distances per pass."""
        ks = [len(c) for c in centroids]
        largest = max(self.rows_per_part.values(), default=0)
        if not (self.bounds and BoundedLloyd.fits(self.n_rows, ks, largest=largest)):
            return self.step(centroids)
        # the same (k, init) entry keeps its id while Lloyd drops converged ones: matched by
        # the number of centroids, in order
        ids = []
        for at in continued([k for _, k in self._entry_ids], ks):
            if at is None:
                self._next_entry += 1
            ids.append(self._next_entry if at is None else self._entry_ids[at][0])
        self._entry_ids = list(zip(ids, ks, strict=True))
        sent = [np.asarray(c, dtype=np.float32) for c in centroids]
        parts = self._collect(_bounded(self.spec, self.run, sent, ids, self.spec.threads))
        rows = sum(p[2] for p in parts)
        self.skipped.append(sum(p[1] * p[2] for p in parts) / max(rows, 1))
        return reduce(add_stats, [p[0] for p in parts])


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
