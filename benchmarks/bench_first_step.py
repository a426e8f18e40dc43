"""The first Lloyd step of a new Spark application against its second, with the worker daemon
warming the kernel (``pipeline.engine.daemon``) and without (the daemon as it was: the engine
imported, the kernel never called). Alternating rounds, each a new SparkSession on
``local[2]`` over the same staged blocks, so staging is not in the steps, and with an empty
numba cache (``NUMBA_CACHE_DIR``), as on a new executor whose site-packages is read-only.

    python benchmarks/bench_first_step.py [--rounds 4]

Writes results/first_step.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(daemon: str, data: Path, stage: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from pipeline.engine.session import spark_session, stop_session
    from pipeline.engine.spark import SparkBlockSource
    from pipeline.engine.staging import parquet_spec

    spark = spark_session("local[2]", app_name="first-step",
                          extra={"spark.python.daemon.module": daemon, "spark.ui.enabled": "false"})
    t0 = time.perf_counter()
    source = SparkBlockSource(spark, parquet_spec(data, [f"f{j}" for j in range(32)], stage))
    staged = time.perf_counter() - t0
    centroids = [np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)]
    steps = []
    for _ in range(3):
        t = time.perf_counter()
        source.step(centroids)
        steps.append(time.perf_counter() - t)
    source.close()
    stop_session()
    return {"staging_s": staged, "steps_s": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/kmeans-bench"))
    args = parser.parse_args()
    data = args.work / "data-200k"
    if args.child:
        print(json.dumps(child(args.child, data, args.work / "stage-first-step")))
        return
    sys.path.insert(0, str(HERE))
    from bench_engine import make_data

    make_data(data, 200_000, 8)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}"}
    modes = {"warm": "pipeline.engine.daemon", "cold": "_cold_daemon"}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in (("warm", "cold") if r % 2 == 0 else ("cold", "warm")):
            with tempfile.TemporaryDirectory() as cache:
                done = subprocess.run([sys.executable, __file__, "--child", modes[mode],
                                       "--work", str(args.work)],
                                      env={**env, "NUMBA_CACHE_DIR": cache},
                                      capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(mode, runs[mode][-1], flush=True)
    med = {m: {"first": statistics.median(x["steps_s"][0] for x in v),
               "second": statistics.median(x["steps_s"][1] for x in v),
               "staging": statistics.median(x["staging_s"] for x in v)} for m, v in runs.items()}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "first_step.json").write_text(json.dumps(
        {"rounds": args.rounds, "medians_s": med, "runs": runs}, indent=1))
    print("| daemon | first step, s | second step, s | first / second | staging, s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for m, v in med.items():
        print(f"| {m} | {v['first']:.2f} | {v['second']:.2f} | {v['first'] / v['second']:.1f} | "
              f"{v['staging']:.2f} |")


if __name__ == "__main__":
    main()
