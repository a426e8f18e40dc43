"""Driver of the cluster tests: fits on a Spark standalone cluster and writes what it saw as JSON.

Run as a subprocess (``python tests/helpers/cluster_fit.py config.json result.json``) because a test
process may already hold a local SparkContext, and one process holds one. The config names the
master, the driver's Spark settings and the fits to run, each over a Parquet folder or an
``s3://`` URI:

- ``{"name", "data", "key_salt", "fault": {"kind", "session": sid, "after": i}}``: 50 ms into
  the fit's iteration ``i + 1``, worker session ``sid`` (the worker, its executor and Python
  workers) is ``kill``ed (SIGKILL), ``freeze``-d (SIGSTOP until the fit has ended) or
  ``slow``-ed (held to ``"share"`` of the time by SIGSTOP/SIGCONT until the fit has ended);
- ``{"slow_block": j, "attempt_log": path}``: staging block ``j`` sleeps 8 s on its first
  attempt, and every attempt is logged (a straggler for speculative execution).

Each fit is 20 Lloyd iterations (``max_iter``) from a seeded k-means++ (``tol=0``) for the
config's ``k`` or the fit's own (``"k"``), with Lloyd bounds unless ``"bounds": false``
(they run for K >= 16); the result holds the
centroids, the placement report (stagings, re-stagings, task moves), the executor of every
block in every job, and each iteration's wall time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo: ``tests`` imports

from pipeline.engine.estimator import fit_sweep  # noqa: E402
from pipeline.engine.session import spark_session  # noqa: E402
from pipeline.engine.spark import SparkBlockSource  # noqa: E402
from pipeline.engine.staging import parquet_spec  # noqa: E402
from tests.helpers.processes import (  # noqa: E402
    Throttle,
    kill_session_id,
    signal_session,
    wait_executors,
)


@dataclass(frozen=True)
class SlowFirstAttempt:
    """Row filter (keeps every row) that logs each staging attempt of every block and makes
    the first attempt at block ``slow`` (partition ``slow`` of the staging job) a straggler
    (pickled to the executors)."""

    slow: int
    log: str

    def _first(self) -> bool:
        """True for the first caller only (on any executor: the log's folder is shared)."""
        try:
            os.close(os.open(f"{self.log}.slow", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and len(frame):
            with open(self.log, "a") as out:
                out.write(json.dumps({"stage": ctx.stageId(), "partition": ctx.partitionId(),
                                      "attempt": ctx.attemptNumber(),
                                      "pid": os.getpid()}) + "\n")
            if ctx.partitionId() == self.slow and self._first():
                time.sleep(8.0)
        return np.ones(len(frame), dtype=bool)


class TimedSource(SparkBlockSource):
    """A source that times each Lloyd step and can kill, freeze or slow a worker in one."""

    def __init__(self, spark, spec, fault: dict | None = None, bounds: bool = True):
        self.fault = fault or {}
        self.steps: list[float] = []
        self.fault_at: int | None = None
        self._undo = None
        self._inside = False
        super().__init__(spark, spec, bounds=bounds)

    def _inject(self) -> None:
        kind, sid = self.fault["kind"], self.fault["session"]
        self.fault_at = len(self.steps)
        if kind == "kill":
            threading.Timer(0.05, kill_session_id, [sid]).start()
        elif kind == "freeze":
            threading.Timer(0.05, signal_session, [sid, signal.SIGSTOP]).start()
            self._undo = lambda: signal_session(sid, signal.SIGCONT)
        elif kind == "slow":
            throttle = Throttle(sid, self.fault["share"])
            threading.Timer(0.05, throttle.start).start()
            self._undo = throttle.stop
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def release(self) -> None:
        """Wake a frozen or slowed worker (after the fit)."""
        if self._undo is not None:
            time.sleep(0.1)  # a Timer that has not fired yet would stop it again
            self._undo()
            self._undo = None

    def _timed(self, run, centroids):
        if self._inside:  # lloyd_step without bounds calls step: one pass, timed once
            return run(centroids)
        if self.fault and self.fault_at is None and len(self.steps) == self.fault["after"] + 1:
            self._inject()
        start = time.perf_counter()
        self._inside = True
        try:
            return run(centroids)
        finally:
            self._inside = False
            self.steps.append(time.perf_counter() - start)

    def step(self, centroids):
        return self._timed(super().step, centroids)

    def lloyd_step(self, centroids):  # Lloyd's iterations (with bounds for K >= 16)
        return self._timed(super().lloyd_step, centroids)


def run_fit(spark, fit: dict, config: dict) -> dict:
    spec = parquet_spec(fit["data"], config["columns"], config.get("stage_dir") or None,
                        partitions=config.get("partitions"))
    spec = replace(spec, key=f"{spec.key[:-4]}{fit.get('key_salt', 0):04d}")
    if "slow_block" in fit:
        spec = replace(spec, row_filter=SlowFirstAttempt(fit["slow_block"], fit["attempt_log"]))
    start = time.perf_counter()
    source = TimedSource(spark, spec, fit.get("fault"), bounds=fit.get("bounds", True))
    staged_s = time.perf_counter() - start
    k = fit.get("k", config["k"])
    try:
        result = fit_sweep(source, [k], init="k-means++",
                           max_iter=config.get("max_iter", 20), tol=0,
                           seed=config.get("seed", 0)).fits[k]
    finally:
        source.release()
    report = source.report()
    source.close()
    return {"name": fit["name"], "centroids": result.centroids.tolist(),
            "inertia": result.inertia, "n_iter": result.n_iter, "report": report,
            "history": [{str(k): v for k, v in job.items()}
                        for job in source.placement.history],
            "step_seconds": source.steps, "fault_at": source.fault_at,
            "staging_seconds": staged_s}


def main(config_path: str, out_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    os.environ.update(config.get("env", {}))
    spark = spark_session(config["master"], app_name="kmeans-cluster-test",
                          driver_memory="1g", extra=config["conf"])
    try:
        executors = wait_executors(spark.sparkContext, config["executors"])
        cores = executor_cores(spark.sparkContext)
        results = [run_fit(spark, fit, config) for fit in config["fits"]]
    finally:
        spark.stop()
    Path(out_path).write_text(json.dumps({"executors": executors, "cores": cores,
                                         "fits": results}, indent=1))


def executor_cores(sc) -> dict[str, int]:
    """``{executor id: cores}`` of the active executors."""
    summaries = sc._jsc.sc().statusStore().executorList(True)
    return {e.id(): int(e.totalCores()) for e in (summaries.apply(i)
                                                   for i in range(summaries.size()))
            if e.id() != "driver"}


if __name__ == "__main__":
    main(*sys.argv[1:3])
