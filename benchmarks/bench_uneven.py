"""Per-step time of the Spark engine on an uneven, misbehaving standalone cluster: this tree
against a base commit, side by side with ``local[2]``, in one run.

The cluster is three workers on loopback with 1, 1 and 2 cores (``tests/helpers/processes.py``
starts it; a fresh one per engine). Each engine fits 1M x 16 rows (24 Parquet files of uneven
size, 8 blocks, K=8, 12 Lloyd iterations from the same centroids) four times, each under a
fresh staging key:

- ``clean``;
- ``frozen``: a 1-core worker (worker JVM, executor, Python workers) SIGSTOPped 50 ms into the
  third step, for 20 s (then SIGCONT: the base engine would otherwise never finish);
- ``slowed``: a 1-core worker held to 10% of the time (SIGSTOP/SIGCONT every 100 ms) from the
  third step until the fit ends;
- ``lost``: a 1-core worker SIGKILLed 50 ms into the third step.

And both engines on ``local[2]``, clean. The base tree is exported with ``git archive`` and put
first on ``PYTHONPATH`` of the driver and of the executors (as ``compare_commits.py`` does).

    python benchmarks/bench_uneven.py [--base a144cd4]

Writes results/uneven-<base>-vs-<this>.json and UNEVEN.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
ROWS, DIM, K, BLOCKS, ITERATIONS = 1_000_000, 16, 8, 8, 12
CORES = [1, 1, 2]
FAULT_STEP = 2  # the third step
FREEZE_S = 20.0
SCENARIOS = ("warm-up", "clean", "frozen", "slowed", "lost")


def make_data(folder: Path) -> Path:
    import numpy as np
    import pandas as pd

    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(25)
    x = rng.random((ROWS, DIM), dtype=np.float32)
    sizes = rng.uniform(0.3, 1.7, 24)
    cuts = np.cumsum(sizes / sizes.sum() * ROWS).astype(int)[:-1]
    for i, part in enumerate(np.split(x, cuts)):
        pd.DataFrame(part, columns=[f"f{j}" for j in range(DIM)]).to_parquet(
            folder / f"part-{i:03d}.parquet")
    (folder / "_done").touch()
    return folder


# ------------------------------------------------------------------ child: one driver

def child(master: str, data: Path, sessions: list[int], salt: int, conf: dict) -> dict:
    """Every scenario on ``master`` with the engine on PYTHONPATH; step times per fit."""
    import signal
    from dataclasses import replace

    import numpy as np

    sys.path.append(str(ROOT))  # tests.helpers from this tree (the export holds pipeline/)
    from pipeline.engine.estimator import fit_sweep
    from pipeline.engine.session import spark_session
    from pipeline.engine.spark import SparkBlockSource, parquet_spec
    from tests.helpers.processes import (
        Throttle,
        kill_session_id,
        signal_session,
        wait_executors,
    )

    sys.path.insert(0, str(HERE))
    from compare_commits import _check_tree

    _check_tree()
    spark = spark_session(master, app_name="bench-uneven", driver_memory="1g", extra=conf)
    local = master.startswith("local")
    if not local:
        wait_executors(spark.sparkContext, len(sessions))
    init = np.random.default_rng(0).random((K, DIM), dtype=np.float32)
    out = {}
    for n, scenario in enumerate(("warm-up", "clean") if local else SCENARIOS):
        spec = parquet_spec(data, [f"f{j}" for j in range(DIM)], "", partitions=BLOCKS)
        spec = replace(spec, key=f"{spec.key[:-6]}{salt + n:06d}")
        t0 = time.perf_counter()
        source = SparkBlockSource(spark, spec)
        staging = time.perf_counter() - t0
        steps: list[float] = []
        step, undo = source.step, []

        def timed(centroids, step=step, steps=steps, scenario=scenario, undo=undo):
            if len(steps) == FAULT_STEP and scenario not in ("clean", "warm-up"):
                sid = sessions[0] if scenario != "slowed" else sessions[1]
                if scenario == "lost":
                    threading.Timer(0.05, kill_session_id, [sid]).start()
                elif scenario == "frozen":
                    threading.Timer(0.05, signal_session, [sid, signal.SIGSTOP]).start()
                    wake = threading.Timer(FREEZE_S, signal_session, [sid, signal.SIGCONT])
                    wake.start()
                    undo.append(wake.join)
                else:
                    throttle = Throttle(sid, 0.1)
                    threading.Timer(0.05, throttle.start).start()
                    undo.append(lambda: (time.sleep(0.1), throttle.stop()))
            t = time.perf_counter()
            try:
                return step(centroids)
            finally:
                steps.append(time.perf_counter() - t)

        source.step = timed
        fit = fit_sweep(source, [K], init=init, max_iter=ITERATIONS, tol=0).fits[K]
        for action in undo:
            action()
        report = source.report() if hasattr(source, "report") else {}
        source.close()
        if scenario == "warm-up":  # the application's first fit: JVM and page cache warm-up
            continue
        out[scenario] = {"staging_s": staging, "steps_s": steps, "inertia": fit.inertia,
                         "centroids_sum": float(np.asarray(fit.centroids, np.float64).sum()),
                         "report": report}
    spark.stop()
    return out


# ------------------------------------------------------------------ parent

def _run_child(tree: Path, master: str, data: Path, sessions: list[int], salt: int,
               conf: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    args = json.dumps({"master": master, "data": str(data), "sessions": sessions,
                       "salt": salt, "conf": conf})
    # cwd: the tree too (a local master's Python daemon runs `python -m` there, and `-m` puts
    # the working directory first on sys.path)
    done = subprocess.run([sys.executable, __file__, "--child", args], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({tree}, {master}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cluster_run(tree: Path, data: Path, work: Path, salt: int) -> dict:
    from tests.helpers.processes import SparkCluster

    with SparkCluster(Path(tempfile.mkdtemp(dir=work)), workers=3, cores=CORES) as cluster:
        conf = cluster.spark_conf({"spark.executorEnv.PYTHONPATH": str(tree)})
        return _run_child(tree, cluster.master_url, data,
                          [proc.pid for proc in cluster._workers], salt, conf)


def figures(fits: dict) -> dict:
    clean = sum(fits["clean"]["steps_s"][FAULT_STEP:])
    out = {}
    for name, fit in fits.items():
        steps = fit["steps_s"]
        out[name] = {"staging_s": fit["staging_s"], "first_s": steps[0], "second_s": steps[1],
                     "median_s": statistics.median(steps),
                     "faulty_step_s": steps[FAULT_STEP],
                     "extra_s": sum(steps[FAULT_STEP:]) - clean,
                     "inertia": fit["inertia"], "report": fit.get("report", {})}
    return out


def render(result: dict) -> str:
    base, this = result["base"], result["this"]
    lines = [
        "# The engine on an uneven, misbehaving cluster",
        "",
        f"`python benchmarks/bench_uneven.py --base {base}` on {result['machine']}, "
        f"load average {result['load']} at the start. Three standalone workers on loopback "
        "with 1, 1 and 2 cores (4 task slots on a 2-core machine); 1M x 16 rows in 24 uneven "
        f"Parquet files, {BLOCKS} blocks, K={K}, {ITERATIONS} Lloyd iterations from the same "
        "centroids; the fault starts 50 ms into the third step (frozen: SIGSTOP for "
        f"{FREEZE_S:.0f} s; slowed: 10% of the time until the end; lost: SIGKILL). "
        "Each application first runs a warm-up fit (not shown). `extra` is the time of the "
        "steps from the third on, less the same steps of the same engine's clean fit. Both "
        "engines reach the same inertia in every row (`same result`).",
        "",
        "| engine | master | fit | staging s | 1st step s | 2nd step s | median step s "
        "| 3rd step s | extra s | same result |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    reference = result["runs"][f"{this} local[2]"]["clean"]["inertia"]
    for key, fits in result["runs"].items():
        engine, master = key.split(" ", 1)
        for name, f in fits.items():
            same = "yes" if abs(f["inertia"] - reference) <= 1e-6 * abs(reference) else "NO"
            lines.append(
                f"| {engine} | {master} | {name} | {f['staging_s']:.2f} | {f['first_s']:.2f} "
                f"| {f['second_s']:.2f} | {f['median_s']:.2f} | {f['faulty_step_s']:.2f} "
                f"| {f['extra_s']:+.2f} | {same} |")
    lines += ["", "Placement reports of this tree's cluster fits (blocks per executor, stagings, "
              "rescued blocks, late and slow executors):", ""]
    for name, f in result["runs"][f"{this} cluster"].items():
        r = f["report"]
        keys = ("placement", "stagings", "restaged", "rescued", "lost_executors",
                "late_executors", "slow_executors")
        lines.append(f"- {name}: " + ", ".join(f"{k} {r.get(k)}" for k in keys))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="a144cd4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kmeans-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        c = json.loads(args.child)
        print(json.dumps(child(c["master"], Path(c["data"]), c["sessions"], c["salt"],
                               c["conf"])))
        return
    sys.path.insert(0, str(ROOT))
    from compare_commits import export

    from pipeline.devtools.machine import cpu_model

    args.work.mkdir(parents=True, exist_ok=True)
    data = make_data(args.work / "uneven-1M")
    base_tree, base = export(args.base)
    this = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "pipeline"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    this += "+changes" if dirty else ""
    salt = int(time.time()) % 100_000 * 10
    runs: dict[str, dict] = {}
    for engine, tree in ((base, base_tree), (this, ROOT)):
        runs[f"{engine} cluster"] = figures(_cluster_run(tree, data, args.work, salt))
        salt += 10
        local = _run_child(tree, "local[2]", data, [], salt, {"spark.ui.enabled": "false"})
        runs[f"{engine} local[2]"] = figures(local)
        salt += 10
    result = {"base": base, "this": this, "machine": cpu_model(),
              "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"uneven-{base}-vs-{this.replace('+', '-')}.json"
    out.write_text(json.dumps(result, indent=1))
    (HERE / "UNEVEN.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
