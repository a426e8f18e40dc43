"""Batch publication of every customer's segment: 1M customers, Spark local[2].

A lake with one day of 1,000,000 customers (and an earlier day of 5,000, the training window)
is landed; a champion (k=5) is trained on the small day and registered. Then, side by side on
the same Spark session and the same latest-row-per-customer DataFrame:

- **kernel**: what ``kmeans publish-segments`` runs (``mapInPandas`` with the model's own
  ``assign``, the model shipped as arrays);
- **spark_udf**: the registered MLflow pyfunc through ``mlflow.pyfunc.spark_udf`` (what a user
  of MLflow would write);

each scoring every customer into a no-op sink (median of 3). Then the full publication
(``publish_segments``: score, write the offline table, materialize to the SQLite online store),
with the process tree's peak memory, and the online lookup of one published segment (median of
200 ``get_online_features`` calls).

    .venv/bin/python benchmarks/bench_publish.py [--customers 1000000]

Writes benchmarks/results/publish.json and benchmarks/PUBLISH.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "publish.json"
REPORT = ROOT / "benchmarks" / "PUBLISH.md"


class PeakMemory:
    """Peak resident memory of this process and its children (the JVM, Python workers)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_home(work: Path, customers: int):
    from pipeline.core.settings import load_settings
    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake
    from pipeline.promotion.register import register
    from pipeline.training import stages

    home = work / "home"
    os.environ["KMEANS_HOME"] = str(home)
    settings = load_settings(home=home)
    d1 = dt.date.today() - dt.timedelta(days=2)
    d2 = d1 + dt.timedelta(days=1)
    generate_lake(settings.lake_dir, n_customers=5000, start=d1, days=1, seed=3)
    generate_lake(settings.lake_dir, n_customers=customers, start=d2, days=1, seed=4,
                  active_share=1.0)
    ingest_lake(settings, d1, d2 + dt.timedelta(days=1))
    features.apply_repo(settings)
    begin = dt.datetime(d1.year, d1.month, d1.day, tzinfo=dt.UTC)
    snap = features.training_snapshot(settings, begin, begin + dt.timedelta(days=1))
    trained = stages.train(settings, snap.path, {"k_min": 5, "k_max": 5, "engine": "local",
                                                 "max_iter": 50, "seed": 1})
    register(settings, trained["run_id"])
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import mlflow
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from pipeline import registry
    from pipeline.core.logs import quiet_dependencies
    from pipeline.core.settings import FEATURE_NAMES
    from pipeline.data import features
    from pipeline.data.ingest import OFFLINE_TABLE
    from pipeline.engine.session import spark_session
    from pipeline.promotion import publish

    quiet_dependencies()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        settings = build_home(Path(tmp), args.customers)
        setup = time.monotonic() - t0
        spark = spark_session("local[2]", app_name="bench-publish", driver_memory="2g")
        spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
        raw = spark.read.parquet(str(settings.offline_dir / OFFLINE_TABLE))
        rows = raw.select("customer_id", *(publish._timestamp(F, raw, c) for c in (
            "event_timestamp", "created_timestamp")), *FEATURE_NAMES)
        order = Window.partitionBy("customer_id").orderBy(F.col("event_timestamp").desc(),
                                                          F.col("created_timestamp").desc())
        latest = (rows.withColumn("_r", F.row_number().over(order)).where("_r = 1")
                  .drop("_r", "created_timestamp")).cache()
        n = latest.count()
        model, version = registry.download_model(settings)
        kernel = latest.mapInPandas(
            publish._assigner(publish._payload(model), version, dt.datetime.now(dt.UTC)),
            publish.OUTPUT_DDL)
        registry.configure(settings)
        udf = mlflow.pyfunc.spark_udf(
            spark, f"models:/{settings.model_name}/{version}",
            result_type="cluster long, distance double, runner_up long, margin double, "
                        "ood boolean", env_manager="local")
        by_udf = latest.withColumn("out", udf(F.struct(*FEATURE_NAMES)))
        timings: dict[str, list[float]] = {"kernel (mapInPandas)": [],
                                           "mlflow.pyfunc.spark_udf": []}
        for frame in (kernel, by_udf):  # warm-up: workers started, model loaded, JIT compiled
            frame.write.format("noop").mode("overwrite").save()
        for _ in range(args.rounds):
            for name, frame in (("kernel (mapInPandas)", kernel),
                                ("mlflow.pyfunc.spark_udf", by_udf)):
                t = time.monotonic()
                frame.write.format("noop").mode("overwrite").save()
                timings[name].append(time.monotonic() - t)
        latest.unpersist()
        with PeakMemory() as memory:
            done = publish.publish_segments(settings, spark=spark)
        store = features.feature_store(settings)
        some = [100_001 + i * 997 for i in range(20)]
        lookups = []
        for i in range(200):
            t = time.perf_counter()
            features.online_segments(store, [some[i % len(some)]])
            lookups.append((time.perf_counter() - t) * 1000)
        sample = features.online_segments(store, some[:3])
    scoring = {k: {"median_s": statistics.median(v), "rows_per_s": n / statistics.median(v),
                   "runs_s": v} for k, v in timings.items()}
    result = {"date": dt.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "customers": n, "setup_seconds": setup, "scoring": scoring,
              "publish": done, "peak_rss_mb": memory.peak / 2**20,
              "online_lookup_ms": {"p50": statistics.median(lookups),
                                   "p99": sorted(lookups)[int(0.99 * len(lookups)) - 1]},
              "sample": sample.astype(str).to_dict(orient="records")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=str))
    k, u = scoring["kernel (mapInPandas)"], scoring["mlflow.pyfunc.spark_udf"]
    lines = [
        "# Publishing every customer's segment",
        "",
        f"Measured {result['date']} on {result['machine']} by `benchmarks/bench_publish.py`: "
        f"{n:,} customers (their latest feature row), Spark `local[2]`, champion k=5.",
        "",
        "| scoring every customer (no-op sink, median of "
        f"{args.rounds}) | seconds | rows/s | ratio |",
        "|---|---|---|---|",
        f"| kernel: `mapInPandas` with the model's `assign` (what `publish-segments` runs) | "
        f"{k['median_s']:.2f} | {k['rows_per_s']:,.0f} | 1.00 |",
        f"| `mlflow.pyfunc.spark_udf` of the registered model | {u['median_s']:.2f} | "
        f"{u['rows_per_s']:,.0f} | {u['median_s'] / k['median_s']:.2f}x the time |",
        "",
        f"The whole publication (`publish_segments`): Spark job (read, latest row, score, write "
        f"the offline table) {done['spark_seconds']:.1f} s ({done['customers_per_second']:,} "
        f"customers/s), materialization of {done['customers']:,} rows to the SQLite online "
        f"store {done['materialize_seconds']:.1f} s; peak resident memory of the process tree "
        f"(driver, JVM, Python workers) {result['peak_rss_mb']:,.0f} MB.",
        "",
        f"Online lookup of one customer's published segment through Feast "
        f"(`get_online_features`, SQLite): p50 {result['online_lookup_ms']['p50']:.2f} ms, "
        f"p99 {result['online_lookup_ms']['p99']:.2f} ms over 200 calls.",
        "",
        "Raw figures: [results/publish.json](results/publish.json).",
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
