"""Driver of the cluster tests: fits on a Spark standalone cluster and writes what it saw as JSON.

Run as a subprocess (``python tests/helpers/cluster_fit.py config.json result.json``) because a test
process may already hold a local SparkContext, and one process holds one. The config names the
master, the driver's Spark settings and the fits to run, each over a Parquet folder or an
``s3://`` URI:

- ``{"name", "data", "key_salt", "kill_session": sid, "kill_after": i}``: the fit's
  iteration ``i + 1`` starts with worker session ``sid`` SIGKILLed (its executor, mid-job);
- ``{"slow_block": j, "attempt_log": path}``: staging block ``j`` sleeps 8 s on its first
  attempt, and every attempt is logged (a straggler for speculative execution).

Each fit is 20 Lloyd iterations from a seeded k-means++ (``tol=0``); the result holds the
centroids, the placement report (stagings, re-stagings, task moves), the executor of every
block in every job, and each iteration's wall time.
"""

from __future__ import annotations

import json
import os
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
from tests.helpers.processes import kill_session_id, wait_executors  # noqa: E402


@dataclass(frozen=True)
class SlowFirstAttempt:
    """Row filter (keeps every row) that logs each staging attempt of every block and makes
    the first attempt at block ``slow`` a straggler (pickled to the executors)."""

    slow: int
    log: str

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and len(frame):
            with open(self.log, "a") as out:
                out.write(json.dumps({"block": ctx.partitionId(), "attempt": ctx.attemptNumber(),
                                      "pid": os.getpid()}) + "\n")
            if ctx.partitionId() == self.slow and ctx.attemptNumber() == 0:
                time.sleep(8.0)
        return np.ones(len(frame), dtype=bool)


class TimedSource(SparkBlockSource):
    """A source that times each Lloyd step and can lose a worker at the start of one."""

    def __init__(self, spark, spec, kill_session: int | None = None, kill_after: int = 0):
        super().__init__(spark, spec)
        self.kill_session, self.kill_after = kill_session, kill_after
        self.steps: list[float] = []
        self.killed_at: int | None = None

    def step(self, centroids):
        if self.kill_session is not None and len(self.steps) == self.kill_after + 1:
            # mid-job: the executor dies while it runs this step's tasks
            threading.Timer(0.05, kill_session_id, [self.kill_session]).start()
            self.killed_at, self.kill_session = len(self.steps), None
        start = time.perf_counter()
        try:
            return super().step(centroids)
        finally:
            self.steps.append(time.perf_counter() - start)


def run_fit(spark, fit: dict, config: dict) -> dict:
    spec = parquet_spec(fit["data"], config["columns"], config.get("stage_dir") or None,
                        partitions=config.get("partitions"))
    spec = replace(spec, key=f"{spec.key[:-4]}{fit.get('key_salt', 0):04d}")
    if "slow_block" in fit:
        spec = replace(spec, row_filter=SlowFirstAttempt(fit["slow_block"], fit["attempt_log"]))
    start = time.perf_counter()
    source = TimedSource(spark, spec, fit.get("kill_session"), fit.get("kill_after", 0))
    staged_s = time.perf_counter() - start
    result = fit_sweep(source, [config["k"]], init="k-means++", max_iter=20, tol=0,
                       seed=config.get("seed", 0)).fits[config["k"]]
    report = source.report()
    source.close()
    return {"name": fit["name"], "centroids": result.centroids.tolist(),
            "inertia": result.inertia, "n_iter": result.n_iter, "report": report,
            "history": [{str(k): v for k, v in job.items()}
                        for job in source.placement.history],
            "step_seconds": source.steps, "killed_at": source.killed_at,
            "staging_seconds": staged_s}


def main(config_path: str, out_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    os.environ.update(config.get("env", {}))
    spark = spark_session(config["master"], app_name="kmeans-cluster-test",
                          driver_memory="1g", extra=config["conf"])
    try:
        executors = wait_executors(spark.sparkContext, config["executors"])
        results = [run_fit(spark, fit, config) for fit in config["fits"]]
    finally:
        spark.stop()
    Path(out_path).write_text(json.dumps({"executors": executors, "fits": results}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
