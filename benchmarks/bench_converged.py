"""Fits to convergence, in-process: the engine with Hamerly's bounds and without, against
scikit-learn's ``lloyd`` and ``elkan``, from the same initial centroids, to the same
tolerance; and single starts with each library's own initialisation.

    python benchmarks/bench_converged.py [--rounds 3] [--rows 1000000] [--spark-rows 10000000]

Data: a well-separated and an overlapping set of Gaussian blobs (``make_blobs``, 50 centres,
standard deviation 1 and 4 around centres spread over +-10), 32 features, K = 8 and 50. Each
round runs every method once per case, interleaved; the table holds medians. Writes
results/converged.json and CONVERGED.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from sklearn.cluster import KMeans as SkKMeans  # noqa: E402
from sklearn.cluster import kmeans_plusplus  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402

from pipeline.devtools.machine import cpu_model  # noqa: E402
from pipeline.engine.bounds import MIN_K  # noqa: E402
from pipeline.engine.estimator import ArraySource, KMeans, lloyd  # noqa: E402

TOL = 1e-4
MAX_ITER = 300
DIM = 32


def data(rows: int, spread: float, seed: int = 0) -> np.ndarray:
    x, _ = make_blobs(rows, n_features=DIM, centers=50, cluster_std=spread,
                      center_box=(-10, 10), random_state=seed)
    return x.astype(np.float32)


def engine(x: np.ndarray, init: np.ndarray, bounds: bool) -> dict:
    t = time.perf_counter()
    source = ArraySource(x, bounds=bounds)
    fit = lloyd(source, {(len(init), 0): init}, max_iter=MAX_ITER, tol=TOL,
                empty_cluster="farthest", sample=x[:: max(1, len(x) // 50_000)])[
        (len(init), 0)]
    seconds = time.perf_counter() - t
    used = source._bounded is not None  # BoundedLloyd.fits: not below MIN_K centroids
    skipped = [s[0] for s in source._bounded.skipped] if used else []
    return {"seconds": seconds, "n_iter": fit.n_iter, "inertia": fit.inertia,
            "skipped": skipped, "bounds_used": used if bounds else None}


def sklearn(x: np.ndarray, init: np.ndarray, algorithm: str) -> dict:
    t = time.perf_counter()
    model = SkKMeans(len(init), init=init, n_init=1, max_iter=MAX_ITER, tol=TOL,
                     algorithm=algorithm).fit(x)
    return {"seconds": time.perf_counter() - t, "n_iter": int(model.n_iter_),
            "inertia": float(model.inertia_)}


def own_init(x: np.ndarray, k: int, which: str, seed: int) -> dict:
    """One start with the library's own initialisation (ours: k-means||; scikit-learn's:
    greedy k-means++), to convergence."""
    t = time.perf_counter()
    if which == "engine":
        model = KMeans(k, n_init=1, random_state=seed, max_iter=MAX_ITER, tol=TOL).fit(x)
    else:
        model = SkKMeans(k, n_init=1, random_state=seed, max_iter=MAX_ITER, tol=TOL).fit(x)
    return {"seconds": time.perf_counter() - t, "n_iter": int(model.n_iter_),
            "inertia": float(model.inertia_)}


def spark_case(rows: int, work: Path, cluster: bool) -> dict[str, dict]:
    """The overlapping set at ``rows`` x 32, K=50: the engine on Spark ``local[2]`` (and, with
    ``cluster``, on a standalone cluster of two one-core workers on loopback) with and without
    bounds, staging not counted (the data is staged once for every fit), against scikit-learn
    lloyd on the array in memory; one round each."""
    import pandas as pd

    x = data(rows, 4.0)
    init, _ = kmeans_plusplus(x[:100_000], 50, random_state=1)
    folder = work / f"converged-{rows}"
    if not (folder / "_done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(x, 16)):
            pd.DataFrame(part, columns=[f"f{j}" for j in range(DIM)]).to_parquet(
                folder / f"part-{i:03d}.parquet")
        (folder / "_done").touch()
    sample = x[:: max(1, len(x) // 50_000)]
    out = {"scikit-learn lloyd (in memory)": sklearn(x, init, "lloyd")}
    del x
    out |= _spark_fits("local[2]", {}, folder, str(work / "stage-converged"), init, sample)
    if cluster:
        from tests.helpers.processes import SparkCluster

        with SparkCluster(Path(tempfile.mkdtemp(dir=work)), workers=2, cores=1) as spark_cluster:
            conf = spark_cluster.spark_conf({"spark.executorEnv.PYTHONPATH": str(ROOT)})
            out |= _spark_fits(spark_cluster.master_url, conf, folder, "", init, sample,
                               label="standalone 2 x 1 core")
    return out


def _spark_fits(master: str, conf: dict, folder: Path, stage_dir: str, init: np.ndarray,
                sample: np.ndarray, label: str = "") -> dict[str, dict]:
    from pipeline.engine.session import spark_session
    from pipeline.engine.spark import SparkBlockSource
    from pipeline.engine.staging import parquet_spec

    spark = spark_session(master, app_name="bench-converged", driver_memory="1g",
                          extra={"spark.ui.enabled": "false", **conf})
    spec = parquet_spec(folder, [f"f{j}" for j in range(DIM)], stage_dir, partitions=8)
    out = {}
    try:
        for bounds in (True, False):
            source = SparkBlockSource(spark, spec, bounds=bounds)
            source.step([init.astype(np.float32)])  # staged here, once for both fits
            t = time.perf_counter()
            fit = lloyd(source, {(50, 0): init}, max_iter=MAX_ITER, tol=TOL,
                        empty_cluster="farthest", sample=sample)[(50, 0)]
            name = f"engine on Spark {label or master}, {'bounds' if bounds else 'plain'}"
            out[name] = {"seconds": time.perf_counter() - t, "n_iter": fit.n_iter,
                         "inertia": fit.inertia, "skipped": list(source.skipped),
                         "report": source.report()}
            source.close()
    finally:
        spark.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)  # each method first once
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--spark-rows", type=int, default=0,
                        help="also fit this many rows on Spark local[2] (e.g. 10000000)")
    parser.add_argument("--cluster", action="store_true",
                        help="with --spark-rows: also on a two-worker standalone cluster")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kmeans-bench"))
    parser.add_argument("--add-spark", action="store_true",
                        help="keep results/converged.json's in-process cases, add the Spark one")
    args = parser.parse_args()
    if args.add_spark:
        result = json.loads((HERE / "results" / "converged.json").read_text())
        case = spark_case(args.spark_rows or 10_000_000, args.work, args.cluster)
        result["table"][f"overlapping K=50, {args.spark_rows or 10_000_000:,} rows"] = {
            name: _summary([r]) for name, r in case.items()}
        (HERE / "results" / "converged.json").write_text(json.dumps(result, indent=1))
        (HERE / "CONVERGED.md").write_text(render(result))
        print(render(result))
        return
    cases = [("separated", 1.0), ("overlapping", 4.0)]
    sets = {name: data(args.rows, spread) for name, spread in cases}
    runs: dict[str, dict[str, list[dict]]] = {}
    methods = (("engine, bounds", engine, True), ("engine, plain", engine, False),
               ("scikit-learn lloyd", sklearn, "lloyd"), ("scikit-learn elkan", sklearn, "elkan"))
    for r in range(args.rounds):
        for name, x in sets.items():
            for k in (8, 50):
                init, _ = kmeans_plusplus(x[:100_000], k, random_state=1)
                key = f"{name} K={k}"
                per = runs.setdefault(key, {m: [] for m, _, _ in methods})  # table order
                # each round starts with another method: the first fit after a data set
                # changes pays for bringing it into the caches (seen: 0.75 s against 0.43 s
                # for the same plain passes)
                for method, run, option in rotated(methods, r):
                    per[method].append(run(x, init, option))
            for k in (8,):
                key = f"{name} K={k}, own init"
                per = runs.setdefault(key, {"engine, own init": [],
                                            "scikit-learn, own init": []})
                for which in rotated(("engine", "scikit-learn"), r):
                    per[f"{which}, own init"].append(own_init(x, k, which, 3))
    if args.spark_rows:
        case = spark_case(args.spark_rows, args.work, args.cluster)
        runs[f"overlapping K=50, {args.spark_rows:,} rows"] = {
            name: [r] for name, r in case.items()}
    table = {key: {method: _summary(results) for method, results in per.items()}
             for key, per in runs.items()}
    result = {"rows": args.rows, "dim": DIM, "rounds": args.rounds, "tol": TOL,
              "machine": cpu_model(), "cpus": os.cpu_count(),
              "load": " ".join(f"{v:.2f}" for v in os.getloadavg()), "table": table}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "converged.json").write_text(json.dumps(result, indent=1))
    (HERE / "CONVERGED.md").write_text(render(result))
    print(render(result))


def rotated(items, by: int) -> tuple:
    """``items`` starting at ``by`` (mod their number): round ``by``'s order."""
    at = by % len(items)
    return tuple(items[at:]) + tuple(items[:at])


def _summary(results: list[dict]) -> dict:
    skipped = results[-1].get("skipped", [])
    return {"seconds": statistics.median(r["seconds"] for r in results),
            "bounds_used": results[-1].get("bounds_used"),
            "n_iter": results[-1]["n_iter"], "inertia": results[-1]["inertia"],
            "skipped_mean": float(np.mean(skipped)) if skipped else None,
            "skipped_per_iteration": [round(s, 3) for s in skipped]}


def render(result: dict) -> str:
    lines = [
        "# Fits to convergence, in-process",
        "",
        f"`python benchmarks/bench_converged.py --rounds {result['rounds']}`: "
        f"{result['rows']:,} rows x {result['dim']}, tol {result['tol']}, "
        f"{result['cpus']} cores ({result['machine']}), load average {result['load']} at the "
        "end; medians of interleaved rounds, each round starting with another method. The "
        "first rows of each case start every method "
        "from the same k-means++ centroids; `own init` rows start each library its own way "
        "(the engine's k-means||, scikit-learn's greedy k-means++). `x lloyd` is the time "
        "over scikit-learn lloyd's in the same case (under 1 is faster); `skipped` is the "
        "mean share of rows whose distances the bounds skipped per iteration. A case named "
        "with its rows runs the engine on Spark `local[2]`, and with `--cluster` on a "
        "standalone cluster of two one-core workers on loopback (staging not counted), "
        "against scikit-learn on the array in memory, one round.",
        "",
        "| case | method | seconds | x lloyd | x elkan | iterations | inertia | skipped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, per in result["table"].items():
        ref = per.get("scikit-learn lloyd", per.get("scikit-learn, own init",
                                                     per.get("scikit-learn lloyd (in memory)")))
        elkan = per.get("scikit-learn elkan")
        for method, r in per.items():
            skipped = "" if r["skipped_mean"] is None else f"{r['skipped_mean']:.0%}"
            if r.get("bounds_used") is False:
                skipped = f"not used (K < {MIN_K}: plain passes)"
            vs_elkan = f"{r['seconds'] / elkan['seconds']:.2f}" if elkan else ""
            lines.append(f"| {key} | {method} | {r['seconds']:.2f} | "
                         f"{r['seconds'] / ref['seconds']:.2f} | {vs_elkan} | {r['n_iter']} "
                         f"| {r['inertia']:.6g} | {skipped} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
