"""Side-by-side k-means benchmark: the platform's engine against Spark MLlib, scikit-learn and
FAISS, on the same data, from the same initial centroids, for the same fixed iterations.

    python benchmarks/bench_engine.py --suite 1m      # 1M x 32, K=50: all five
    python benchmarks/bench_engine.py --suite 10m     # 10M x 32, K=50: Spark engine, sklearn, MLlib
    python benchmarks/bench_engine.py --suite sweep   # K=2..32 over 10M x 32: one pass vs each K
    python benchmarks/bench_engine.py --suite 100m    # 100M x 32, K=50: Spark engine, time + memory
    python benchmarks/bench_engine.py --suite cluster # the 1m engine row on a 2-worker cluster

Each suite writes ``benchmarks/results/<suite>.json``; ``--report`` rebuilds
``benchmarks/RESULTS.md`` from every JSON present. Per-iteration figures are medians: of the
timed passes for the platform's engine, of repeated whole fits (total / iterations) for the
in-memory peers, and total / iterations of one fit for MLlib; in the 1m suite, scikit-learn and
the in-process engine run in turns, 5 rounds, and each reports its median round. MLlib gets
native BLAS (Debian's libopenblas through netlib's ``libblas.so.3``) as Spark's docs advise.
The command unsets ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` for itself (this machine sets
them; they slow a current NumPy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ITERS = 20
DIM = 32


# ------------------------------------------------------------------ data

def make_data(folder: Path, rows: int, files: int, seed: int = 0, k_true: int = 50) -> Path:
    """Overlapping Gaussian blobs (so Lloyd does not converge before 20 iterations), written
    as ``files`` Parquet files of float32 columns f0..f31. Reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "_DONE"
    if done.exists() and done.read_text() == f"{rows},{files},{seed}":
        return folder
    for old in folder.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3.0, (k_true, DIM)).astype(np.float32)
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    names = [f"f{j}" for j in range(DIM)]
    for i in range(files):
        writer = None
        for lo in range(int(bounds[i]), int(bounds[i + 1]), 1_000_000):
            hi = min(lo + 1_000_000, int(bounds[i + 1]))
            part = np.random.default_rng([seed, lo])
            x = centers[part.integers(0, k_true, hi - lo)] + part.normal(
                0, 2.0, (hi - lo, DIM)).astype(np.float32)
            table = pa.table({n: x[:, j] for j, n in enumerate(names)})
            if writer is None:
                writer = pq.ParquetWriter(folder / f"part-{i:05d}.parquet", table.schema)
            writer.write_table(table)
        writer.close()
    done.write_text(f"{rows},{files},{seed}")
    return folder


def load_array(folder: Path) -> np.ndarray:
    parts = [pq.read_table(f).to_pandas().to_numpy(dtype=np.float32)
             for f in sorted(folder.glob("*.parquet"))]
    return np.ascontiguousarray(np.concatenate(parts))


def initial_centroids(folder: Path, k: int, seed: int = 1) -> np.ndarray:
    first = pq.read_table(sorted(folder.glob("*.parquet"))[0]).slice(0, 100_000)
    x = first.to_pandas().to_numpy(dtype=np.float32)
    return x[np.random.default_rng(seed).choice(len(x), k, replace=False)]


# ------------------------------------------------------------------ peers

def run_sklearn(x, init, repeats):
    from sklearn.cluster import KMeans

    per = []
    for _ in range(repeats):
        model = KMeans(len(init), init=init, n_init=1, max_iter=ITERS, tol=0, algorithm="lloyd")
        t = time.perf_counter()
        model.fit(x)
        per.append((time.perf_counter() - t) / model.n_iter_)
    return {"ms_per_iter": 1000 * statistics.median(per), "iterations": int(model.n_iter_),
            "inertia": float(model.inertia_), "repeats": repeats}


def run_faiss(x, init, repeats):
    import faiss

    per = []
    for _ in range(repeats):
        km = faiss.Kmeans(x.shape[1], len(init), niter=ITERS, verbose=False, seed=1,
                          max_points_per_centroid=10**9, min_points_per_centroid=1)
        t = time.perf_counter()
        km.train(x, init_centroids=init)
        per.append((time.perf_counter() - t) / ITERS)
    return {"ms_per_iter": 1000 * statistics.median(per), "iterations": ITERS,
            "inertia": float(km.obj[-1]), "repeats": repeats}


#: Rounds of the 1m suite's in-memory peers, taken in turns.
ROUNDS = 5


def median_run(runs: list[dict]) -> dict:
    """The run with the median time per iteration of several (an odd number), and how many
    there were and what they ranged over."""
    ordered = sorted(runs, key=lambda r: r["ms_per_iter"])
    out = dict(ordered[len(ordered) // 2])
    out["rounds"] = len(runs)
    out["ms_per_iter_range"] = [ordered[0]["ms_per_iter"], ordered[-1]["ms_per_iter"]]
    return out


class Timed:
    """Wraps an engine source and times every pass."""

    def __init__(self, source):
        self.source = source
        self.n_rows, self.n_features = source.n_rows, source.n_features
        self.times: list[float] = []

    def sample(self, n, seed):
        return self.source.sample(n, seed)

    def sample_with_weights(self, n, seed):
        return self.source.sample_with_weights(n, seed)

    def sample_d2(self, *a):
        return self.source.sample_d2(*a)

    def step(self, centroids):
        t = time.perf_counter()
        out = self.source.step(centroids)
        self.times.append(time.perf_counter() - t)
        return out


def run_engine(source, ks, init=None, *, label=""):
    from pipeline.engine.estimator import fit_sweep

    timed = Timed(source)
    t = time.perf_counter()
    result = fit_sweep(timed, ks, init=init if init is not None else "k-means++", max_iter=ITERS,
                       tol=0, seed=1, init_sample=20_000)
    total = time.perf_counter() - t
    passes = timed.times[:ITERS]
    out = {"ms_per_iter": 1000 * statistics.median(passes), "iterations": len(passes),
           "total_s": total, "inertia": {str(k): f.inertia for k, f in result.fits.items()}}
    print(f"   {label}: {out['ms_per_iter']:.0f} ms/iter, total {total:.1f} s", flush=True)
    return out


def spark_session(memory: str, task_cpus: int = 1):
    try:
        from pipeline.engine.session import spark_session as make
    except ImportError:  # compare_commits.py against a commit before engine/session.py
        from pipeline.engine.spark import spark_session as make

    return make("local[2]", app_name="kmeans-bench", driver_memory=memory, extra={
        "spark.task.cpus": str(task_cpus),
        # netlib picks libblas.so.3, which update-alternatives points at OpenBLAS (pthread)
        "spark.driver.extraJavaOptions":
            "-Ddev.ludovic.netlib.blas.nativeLib=libblas.so.3",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.sql.files.maxPartitionBytes": str(2 << 30),
    })


def run_spark_engine(spark, folder: Path, ks, init, stage: Path, label: str, *,
                     partitions: int | None = None, threads: int = 1):
    from pipeline.engine.spark import SparkBlockSource, parquet_spec

    spec = parquet_spec(folder, [f"f{j}" for j in range(DIM)], stage, partitions=partitions,
                        threads=threads)
    t = time.perf_counter()
    source = SparkBlockSource(spark, spec)
    staging = time.perf_counter() - t
    print(f"   {label}: staged {source.n_rows} rows in {staging:.1f} s", flush=True)
    out = run_engine(source, ks, init, label=label)
    out["staging_s"] = staging
    out["partitions"] = len(spec.files)
    out["threads_per_task"] = threads
    return out


def run_mllib(spark, folder: Path, init):
    from pyspark.mllib.clustering import KMeans, KMeansModel
    from pyspark.mllib.linalg import Vectors

    df = spark.read.parquet(str(folder))
    rdd = df.rdd.map(lambda row: Vectors.dense([float(v) for v in row])).cache()
    t = time.perf_counter()
    n = rdd.count()
    cache_s = time.perf_counter() - t
    model = KMeansModel([c.astype(np.float64) for c in init])
    t = time.perf_counter()
    fitted = KMeans.train(rdd, len(init), maxIterations=ITERS, epsilon=0.0, initialModel=model)
    total = time.perf_counter() - t
    cost = fitted.computeCost(rdd)
    rdd.unpersist()
    blas = spark.sparkContext._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName()
    print(f"   mllib ({blas}): {1000 * total / ITERS:.0f} ms/iter, cache {cache_s:.1f} s",
          flush=True)
    return {"ms_per_iter": 1000 * total / ITERS, "iterations": ITERS, "cache_s": cache_s,
            "rows": n, "inertia": float(cost), "blas": blas}


# ------------------------------------------------------------------ memory

class PeakMemory:
    """Samples the RSS of this process tree (driver, JVM, Python workers) and the machine's
    used memory (excluding page cache) every 0.5 s."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.peak_tree = 0
        self.peak_used = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = self.psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me, *me.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except self.psutil.Error:
                rss = 0
            vm = self.psutil.virtual_memory()
            self.peak_tree = max(self.peak_tree, rss)
            self.peak_used = max(self.peak_used, vm.total - vm.available)
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ suites

def suite_1m(work: Path) -> dict:
    from pipeline.engine.estimator import ArraySource

    folder = make_data(work / "data-1m", 1_000_000, 2)
    x, init = load_array(folder), initial_centroids(folder, 50)
    out = {"rows": len(x), "dim": DIM, "k": 50}
    print("== 1M x 32, K=50", flush=True)
    out["faiss"] = run_faiss(x, init, 5)
    print(f"   faiss: {out['faiss']['ms_per_iter']:.0f} ms/iter", flush=True)
    # scikit-learn and the engine in turns, so that a slow spell of a shared machine (seen
    # here: passes of 43 and of 70 ms in one fit, for minutes) falls on both
    sk, eng = [], []
    for _ in range(ROUNDS):
        sk.append(run_sklearn(x, init, 1))
        eng.append(run_engine(ArraySource(x), [50], init, label="engine in-process"))
    out["sklearn"] = median_run(sk)
    out["engine_inprocess"] = median_run(eng)
    out["inprocess_rounds"] = [[a["ms_per_iter"], b["ms_per_iter"]]
                               for a, b in zip(sk, eng, strict=True)]
    print(f"   sklearn: {out['sklearn']['ms_per_iter']:.0f} ms/iter, engine in-process: "
          f"{out['engine_inprocess']['ms_per_iter']:.0f} ms/iter ({ROUNDS} rounds)", flush=True)
    spark = spark_session("6g", task_cpus=2)
    out["engine_spark"] = run_spark_engine(spark, folder, [50], init, work / "stage",
                                           "engine spark", partitions=1, threads=2)
    out["mllib"] = run_mllib(spark, folder, init)
    return out


def suite_cluster(work: Path) -> dict:
    """The 1m suite's engine row again on a standalone cluster, in a process of its own (one
    SparkContext per process); stored as ``engine_cluster`` of ``1m.json``."""
    folder = make_data(work / "data-1m", 1_000_000, 2)
    init = initial_centroids(folder, 50)
    print("== 1M x 32, K=50 on a standalone cluster", flush=True)
    row = run_cluster_engine(work, folder, [50], init)
    merged = json.loads((RESULTS / "1m.json").read_text())
    merged["engine_cluster"] = row
    return merged


def run_cluster_engine(work: Path, folder: Path, ks, init) -> dict:
    """The engine on a Spark standalone cluster on this machine: two workers of one core
    (``tests/helpers/processes.py``), one block per executor, staged on each executor's own disk."""
    sys.path.insert(0, str(HERE.parent))
    from pipeline.engine.session import spark_session as make
    from tests.helpers.processes import SparkCluster, wait_executors

    shutil.rmtree(work / "cluster", ignore_errors=True)
    with SparkCluster(work / "cluster", workers=2, memory="6g") as cluster:
        spark = make(cluster.master_url, app_name="kmeans-bench-cluster", driver_memory="2g",
                     extra=cluster.spark_conf({"spark.executor.memory": "4g"}))
        wait_executors(spark.sparkContext, 2)
        try:
            out = run_spark_engine(spark, folder, ks, init, None,
                                   "engine, standalone cluster (2 workers x 1 core)",
                                   partitions=2, threads=1)
        finally:
            spark.stop()
    return out


def suite_10m(work: Path) -> dict:
    folder = make_data(work / "data-10m", 10_000_000, 2)
    init = initial_centroids(folder, 50)
    out = {"rows": 10_000_000, "dim": DIM, "k": 50}
    print("== 10M x 32, K=50", flush=True)
    spark = spark_session("14g", task_cpus=2)
    out["engine_spark"] = run_spark_engine(spark, folder, [50], init, work / "stage",
                                           "engine spark", partitions=1, threads=2)
    x = load_array(folder)
    out["sklearn"] = run_sklearn(x, init, 3)
    print(f"   sklearn: {out['sklearn']['ms_per_iter']:.0f} ms/iter", flush=True)
    del x
    out["mllib"] = run_mllib(spark, folder, init)
    return out


def suite_sweep(work: Path) -> dict:
    from pipeline.engine.spark import SparkBlockSource, parquet_spec

    folder = make_data(work / "data-10m", 10_000_000, 2)
    ks = list(range(2, 33))
    inits = {k: initial_centroids(folder, k, seed=k) for k in ks}
    print("== sweep K=2..32 over 10M x 32", flush=True)
    spark = spark_session("4g", task_cpus=2)
    source = SparkBlockSource(spark, parquet_spec(folder, [f"f{j}" for j in range(DIM)],
                                                  work / "stage", partitions=1, threads=2))
    from pipeline.engine.estimator import lloyd

    sample = source.sample(20_000, 1)
    t = time.perf_counter()  # one pass per iteration carrying every K
    lloyd(source, {(k, 0): inits[k] for k in ks}, max_iter=ITERS, tol=0,
          empty_cluster="farthest", sample=sample)
    one_pass = time.perf_counter() - t
    print(f"   one pass for all K: {one_pass:.1f} s", flush=True)
    t = time.perf_counter()
    for k in ks:
        lloyd(source, {(k, 0): inits[k]}, max_iter=ITERS, tol=0, empty_cluster="farthest",
              sample=sample)
    separate = time.perf_counter() - t
    print(f"   each K separately: {separate:.1f} s", flush=True)
    return {"rows": 10_000_000, "dim": DIM, "ks": [ks[0], ks[-1]], "iterations": ITERS,
            "one_pass_s": one_pass, "separate_s": separate, "speedup": separate / one_pass}


def suite_100m(work: Path) -> dict:
    folder = make_data(work / "data-100m", 100_000_000, 8)
    init = initial_centroids(folder, 50)
    print("== 100M x 32, K=50 (Spark engine)", flush=True)
    with PeakMemory() as mem:
        spark = spark_session("2g")
        t = time.perf_counter()
        out = run_spark_engine(spark, folder, [50], init, work / "stage", "engine spark")
        out["wall_s"] = time.perf_counter() - t
    import psutil

    out.update({"rows": 100_000_000, "dim": DIM, "k": 50,
                "block_bytes": 100_000_000 * DIM * 4,
                "mllib_vectors_bytes_estimate": 100_000_000 * (DIM * 8 + 16 + 16),
                "peak_process_tree_rss_bytes": mem.peak_tree,
                "peak_machine_used_bytes": mem.peak_used,
                "machine_memory_bytes": psutil.virtual_memory().total})
    return out


SUITES = {"1m": suite_1m, "10m": suite_10m, "sweep": suite_sweep, "100m": suite_100m,
          "cluster": suite_cluster}


# ------------------------------------------------------------------ report

def _ms(v):
    return f"{v:,.0f}"


def report() -> str:
    res = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/bench_engine.py --report`; raw figures in "
             "`benchmarks/results/*.json`. 2 cores, float32 input, the same initial centroids "
             "for every peer, 20 fixed iterations (tol=0), per-iteration medians. Spark runs "
             "`local[2]`; MLlib uses native OpenBLAS through netlib.", ""]
    for name, title in (("1m", "1M x 32, K=50"), ("10m", "10M x 32, K=50")):
        if name not in res:
            continue
        r = res[name]
        base = r["sklearn"]["ms_per_iter"]
        load = f", load average {r['load']} at the end" if r.get("load") else ""
        lines += [f"## {title}", "", f"Machine: {r.get('machine', '')}{load}", "",
                  "| peer | ms per iteration | vs scikit-learn | vs MLlib |",
                  "| --- | ---: | ---: | ---: |"]
        native = "JNIBLAS" in str(r.get("mllib", {}).get("blas", ""))
        for key, label in (("mllib", "Spark MLlib KMeans (native BLAS)" if native else
                            "Spark MLlib KMeans (Java BLAS: no libblas.so.3)"),
                           ("sklearn", "scikit-learn KMeans (lloyd)"), ("faiss", "FAISS Kmeans"),
                           ("engine_inprocess", "platform engine, in-process"),
                           ("engine_spark", "platform engine, Spark `local[2]`"),
                           ("engine_cluster", "platform engine, standalone cluster "
                                              "(2 workers x 1 core)")):
            if key in r:
                ms = r[key]["ms_per_iter"]
                lines.append(f"| {label} | {_ms(ms)} | {ms / base:.2f}x | "
                             f"{r['mllib']['ms_per_iter'] / ms:.1f}x faster |"
                             if key != "mllib" else
                             f"| {label} | {_ms(ms)} | {ms / base:.2f}x | - |")
        extra = []
        if "engine_spark" in r:
            extra.append(f"Spark engine staging (Parquet -> float32 blocks, once): "
                         f"{r['engine_spark']['staging_s']:.1f} s; "
                         f"{r['engine_spark']['partitions']} task(s) of "
                         f"{r['engine_spark'].get('threads_per_task', 1)} kernel thread(s) "
                         f"per iteration")
        if "engine_cluster" in r:
            c = r["engine_cluster"]
            extra.append(f"Cluster row: {c['partitions']} blocks staged on the executors' "
                         f"own disks in {c['staging_s']:.1f} s, 1 kernel thread per task; "
                         f"{c['ms_per_iter'] / r['engine_spark']['ms_per_iter']:.2f}x the "
                         "`local[2]` time per iteration")
        if "inprocess_rounds" in r:
            rounds = r["inprocess_rounds"]
            ratios = sorted(e / k for k, e in rounds)
            extra.append(f"scikit-learn and the in-process engine ran in turns, {len(rounds)} "
                         "rounds of a whole fit each; the table gives each one's median round. "
                         "Per round, ms per iteration (scikit-learn / engine): "
                         + ", ".join(f"{k:.0f} / {e:.0f}" for k, e in rounds)
                         + f"; the engine's ratio per round: median "
                         f"{statistics.median(ratios):.2f}x, range {ratios[0]:.2f}-"
                         f"{ratios[-1]:.2f}x")
        if "mllib" in r:
            extra.append(f"MLlib caching the vectors: {r['mllib']['cache_s']:.1f} s "
                         f"(BLAS: `{r['mllib']['blas']}`)")
        lines += ["", *[f"- {e}" for e in extra], ""]
    if "sweep" in res:
        r = res["sweep"]
        lines += ["## K sweep 2..32 over 10M x 32", "",
                  "| how | seconds for 20 iterations of every K |", "| --- | ---: |",
                  f"| one pass per iteration carrying all 31 K | {r['one_pass_s']:.1f} |",
                  f"| each K fitted separately (31 fits) | {r['separate_s']:.1f} |",
                  "", f"One-pass sweep: **{r['speedup']:.1f}x** faster.", ""]
    if "100m" in res:
        r = res["100m"]
        gib = 1 << 30
        lines += ["## 100M x 32, K=50 (Spark engine, not in CI)", "",
                  f"- float32 blocks: {r['block_bytes'] / gib:.1f} GiB; the same data as MLlib "
                  f"double vectors would take about {r['mllib_vectors_bytes_estimate'] / gib:.0f} "
                  f"GiB on a {r['machine_memory_bytes'] / gib:.0f} GiB machine",
                  f"- staging: {r['staging_s']:.0f} s; {r['ms_per_iter'] / 1000:.1f} s per "
                  f"iteration (median); whole fit {r['total_s']:.0f} s; wall {r['wall_s']:.0f} s",
                  f"- peak RSS of the process tree (driver, JVM, Python workers; it counts the "
                  f"memory-mapped block pages, which are file-backed and dropped under pressure): "
                  f"{r['peak_process_tree_rss_bytes'] / gib:.1f} GiB; peak machine memory in use, "
                  f"page cache excluded: {r['peak_machine_used_bytes'] / gib:.1f} GiB",
                  f"- {r['partitions']} tasks of {r.get('threads_per_task', 1)} kernel thread "
                  "per iteration", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), action="append", default=[])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kmeans-bench"),
                        help="data and staged blocks (large)")
    parser.add_argument("--report", action="store_true", help="rewrite RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    RESULTS.mkdir(exist_ok=True)
    from pipeline.devtools.machine import describe

    for name in args.suite:
        out = SUITES[name](args.work)
        out["machine"] = describe()
        out["load"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        target = "1m" if name == "cluster" else name  # the cluster row joins the 1m table
        (RESULTS / f"{target}.json").write_text(json.dumps(out, indent=2))
    if args.report or args.suite:
        (HERE / "RESULTS.md").write_text(report() + "\n")


if __name__ == "__main__":
    main()
