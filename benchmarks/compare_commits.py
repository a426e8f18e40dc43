"""The engine's 1M suite and the one-row serving path, this tree against another commit, side
by side in one run (alternating rounds, medians), to show a change did not slow them down.

    .venv/bin/python benchmarks/compare_commits.py --base <commit> [--rounds 3]

Each round runs one child process per tree, in turn, with that tree's ``pipeline`` first on
``PYTHONPATH`` (the other commit is exported with ``git archive`` under
``.kmeans/bench/src/<commit>``), on the same data (1M x 32 float32, K=50, the same initial
centroids) and the same machine:

- ``engine in-process``: ms per Lloyd pass of the in-process source (``ArraySource.step``);
- ``engine spark``: ms per pass of the Spark block source (``local[2]``, one task with two
  kernel threads, blocks staged once; ``SparkBlockSource.step``), the 1M suite's setting;
- ``serving``: microseconds per one-row v2 infer through the server's ASGI app, called in
  process (no sockets: the app's own cost), K=8, 12 features, bearer token and metrics on;
- ``http``: the serving benchmark's ``ours`` server (``serving/targets.py``: uvicorn, pinned
  to CPU 0, token, metrics, access log, 10% canary) under the open-loop load generator on
  CPU 1: p99 latency at 2,000 and 8,000 one-row requests per second.

Writes ``results/compare-<base>-vs-<this>.json`` and ``COMPARE.md`` (a Markdown table); ratios
are this tree over the base (0.95-1.05 is noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # see bench_engine.py
    os.environ.pop(_var, None)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PASSES = 20
DIM, K = 32, 50


def _git(*cmd: str) -> str:
    return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def export(ref: str) -> tuple[Path, str]:
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    dest = ROOT / ".kmeans" / "bench" / "src" / commit
    if not (dest / "pipeline").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "pipeline"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest, commit[:12]


# ------------------------------------------------------------------ child: one tree

def _timed_passes(step, centroids, passes: int) -> float:
    step([centroids])  # warm: compile, page in, stage
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        step([centroids])
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _check_tree() -> None:
    """Every ``pipeline`` module came from the tree on PYTHONPATH (an editable install's
    finder could answer a module the tree lacks from the working tree)."""
    tree = Path(os.environ["PYTHONPATH"]).resolve()
    leaked = sorted({m.__file__ for m in list(sys.modules.values())
                     if getattr(m, "__name__", "").startswith("pipeline")
                     and getattr(m, "__file__", None)
                     and not Path(m.__file__).resolve().is_relative_to(tree)})
    if leaked:
        raise SystemExit(f"modules from another tree than {tree}: {leaked}")


def child_engine(data: Path, stage: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_engine import initial_centroids, load_array, spark_session

    from pipeline.engine.estimator import ArraySource
    from pipeline.engine.spark import SparkBlockSource, parquet_spec

    _check_tree()
    x, init = load_array(data), initial_centroids(data, K)
    out = {"inprocess_ms": _timed_passes(ArraySource(x).step, init, PASSES)}
    spark = spark_session("6g", task_cpus=2)
    spec = parquet_spec(data, [f"f{j}" for j in range(DIM)], stage, partitions=1, threads=2)
    out["spark_ms"] = _timed_passes(SparkBlockSource(spark, spec).step, init, PASSES)
    spark.stop()
    return out


def child_serving(requests: int) -> dict:
    sys.path.insert(0, str(HERE / "serving"))
    import numpy as np
    import orjson
    import targets

    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(8, 12)).astype(np.float32)
    app = targets.build_ours(centroids, "token", with_feast=False,
                             access_log=open(os.devnull, "wb"))  # noqa: SIM115
    bodies = [orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 12],
                                         "data": rng.normal(size=12).tolist()}]})
              for _ in range(256)]
    _check_tree()
    asyncio.run(targets.drive_asgi(app, bodies, 2000, "token"))  # warm
    per = [asyncio.run(targets.drive_asgi(app, bodies, requests, "token")) for _ in range(5)]
    return {"serving_us": 1e6 * statistics.median(per)}


def http_serving(tree: Path, work: Path, duration: float) -> dict:
    """p99 of the ``ours`` server running ``tree``'s pipeline at two open-loop rates."""
    sys.path.insert(0, str(HERE / "serving"))
    import bench_serving as bs
    import targets

    inputs = bs.make_inputs(work / "serving")
    bs.build_loadgen()
    out = {}
    with targets.start("ours", bs.free_port(), work / "servers", inputs["centroids"], bs.TOKEN,
                       inputs["probe"], {"PYTHONPATH": str(tree)}) as server:
        port = int(server.args[server.args.index("--port") + 1])
        for rate in (2000, 8000):
            # Three windows, the median: one of them holds the prediction log's flush (every
            # 10 s), which stalls the loop for tens of ms in either tree.
            points = [bs.at_rate(port, inputs["bodies"], rate, 1, duration, 1.0)
                      for _ in range(3 if rate == 2000 else 1)]
            out[f"p99_ms_at_{rate}"] = statistics.median(p["p99_ms"] for p in points)
            out[f"achieved_at_{rate}"] = statistics.median(p["achieved_rate"] for p in points)
    return out


LABELS = {"inprocess_ms": "engine in-process, ms per pass (1M x 32, K=50)",
          "spark_ms": "engine on Spark local[2], ms per pass (1M x 32, K=50)",
          "serving_us": "one-row v2 infer through the ASGI app, µs per request",
          "p99_ms_at_2000": "HTTP server, p99 ms at 2,000 one-row req/s (open loop)",
          "p99_ms_at_8000": "HTTP server, p99 ms at 8,000 one-row req/s (open loop)"}


def render(result: dict, base_ref: str) -> str:
    """COMPARE.md from a result (``results/compare-<base>.json``)."""
    med, ratio = result["medians"], result["ratio_this_over_base"]
    table = [f"| measure | base {result['base']} | this {result['this']} | this / base |",
             "|---|---:|---:|---:|"]
    table += [f"| {LABELS[k]} | {med['base'][k]:.2f} | {med['this'][k]:.2f} | {ratio[k]:.3f} |"
              for k in LABELS if k in ratio]
    return (f"# This tree against another commit\n\nWritten by `benchmarks/compare_commits.py "
            f"--base {base_ref}`; raw figures in `results/compare-{result['base']}-vs-"
            f"{result['this'].split()[0]}.json`. "
            f"{result['rounds']} alternating rounds on one machine ({result['machine']}), "
            f"medians; ratios below 1 mean this tree is faster, 0.95-1.05 is noise.\n\n"
            + "\n".join(table) + "\n")


# ------------------------------------------------------------------ parent

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the commit to compare with (required)")
    parser.add_argument("--this", help="measure this commit instead of the working tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/kmeans-bench"))
    parser.add_argument("--http-seconds", type=float, default=5.0,
                        help="seconds per open-loop run of the HTTP server")
    parser.add_argument("--report", type=Path, help="rewrite COMPARE.md from this JSON")
    parser.add_argument("--child", choices=["engine", "serving"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.work / "data-1m"
    if args.report:
        result = json.loads(args.report.read_text())
        (HERE / "COMPARE.md").write_text(render(result, result["base"]))
        return
    if args.child == "engine":
        print(json.dumps(child_engine(data, args.work / f"stage-{os.getpid()}")))
        return
    if args.child == "serving":
        print(json.dumps(child_serving(args.requests)))
        return

    if not args.base:
        parser.error("--base is required")
    sys.path.insert(0, str(HERE))
    from bench_engine import make_data

    make_data(data, 1_000_000, 2)
    base_dir, base = export(args.base)
    if args.this:
        this_dir, head = export(args.this)
        dirty = ""
    else:
        this_dir, head = ROOT, _git("rev-parse", "--short=12", "HEAD")
        dirty = " + uncommitted changes" if _git("status", "--porcelain", "pipeline") else ""
    trees = {"base": base_dir, "this": this_dir}
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    for r in range(args.rounds):
        for name in (("base", "this") if r % 2 == 0 else ("this", "base")):
            figures = {}
            for kind in ("engine", "serving"):
                env = {**os.environ, "PYTHONPATH": str(trees[name])}
                done = subprocess.run([sys.executable, __file__, "--child", kind,
                                       "--work", str(args.work), "--requests",
                                       str(args.requests)],
                                      env=env, capture_output=True, text=True, cwd=trees[name])
                if done.returncode:
                    raise SystemExit(f"{name} {kind} failed:\n{done.stderr[-3000:]}")
                figures.update(json.loads(done.stdout.strip().splitlines()[-1]))
            figures.update(http_serving(trees[name], args.work, args.http_seconds))
            runs[name].append(figures)
            print(f"round {r + 1} {name}: {figures}", flush=True)
    keys = ("inprocess_ms", "spark_ms", "serving_us", "p99_ms_at_2000", "p99_ms_at_8000")
    med = {n: {k: statistics.median(f[k] for f in runs[n]) for k in keys} for n in runs}
    ratio = {k: med["this"][k] / med["base"][k] for k in keys}
    result = {"base": base, "this": f"{head}{dirty}", "rounds": args.rounds,
              "medians": med, "ratio_this_over_base": ratio, "runs": runs,
              "machine": f"{os.cpu_count()} cores"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"compare-{base}-vs-{head}.json").write_text(json.dumps(result, indent=2))
    (HERE / "COMPARE.md").write_text(render(result, args.base))
    print("\n" + render(result, args.base))


if __name__ == "__main__":
    main()
