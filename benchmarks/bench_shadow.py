"""The streaming shadow model: tracking drift, stationary quality, speed, and its gap on the
demo generator's drift kinds.

1. **Drifting stream** (synthetic: 5 Gaussian centres in 12 dimensions, unit noise, each moving
   4 units in a straight line over 20 windows of 2,000 points, batches of 200): per window, the
   mean distance from the true centres (at the window's end, matched one to one) of the shadow
   (:class:`pipeline.engine.streaming.StreamingKMeans`, half-lives 1,000 / 2,000 / 5,000
   points), the frozen champion (k-means on 2,000 points before the drift) and a full refit
   on the window's 2,000 points (scikit-learn ``KMeans``, ``n_init=10``).
2. **Stationary stream** (6 overlapping centres in 8 dimensions, 32,000 points; the champion
   fitted on the first 2,000, the rest in batches of 500): inertia on every point of the
   shadow's final centres, and of scikit-learn's ``MiniBatchKMeans.partial_fit`` over the same
   batches from the same start, over a full refit (``KMeans``, ``n_init=10``, every point).
3. **Speed**: mini-batch updates per second of ``StreamingKMeans.update`` against
   ``MiniBatchKMeans.partial_fit`` (same data, same batch sizes, same start; k=5, d=12),
   alternating rounds, medians; and :meth:`pipeline.monitoring.shadow.Shadow.observe` (the
   champion's preprocessing, the update, the JSON state written under its lock) on batches of
   the consumer's default size.
4. **The demo generator** (``pipeline.data.datagen``, the population the monitoring benchmark
   uses): a champion (k=5) fitted on 3,000 customers x 3 periods, then the shadow with the
   default settings fed 12 windows (about 1,800 events each) of a stationary stream and of each
   drift kind; its ``max_shift`` per window and the first window over
   ``KMEANS_MONITOR_MAX_SHADOW_SHIFT``. And the stationary gap after 20 windows against the
   champion's training size (a k-means solution of a small sample may not be one of the
   population: the shadow then moves to the population's).

    .venv/bin/python benchmarks/bench_shadow.py      # about 2 minutes

Writes benchmarks/results/shadow.json and benchmarks/SHADOW.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.settings import FEATURE_NAMES, load_settings  # noqa: E402
from pipeline.data.datagen import DRIFT_KINDS, Drift, generate_customers, period_rows  # noqa: E402
from pipeline.engine.streaming import StreamingKMeans  # noqa: E402
from pipeline.model.artifact import SegmentModel  # noqa: E402
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor  # noqa: E402
from pipeline.monitoring.shadow import Shadow, memory, shadow_figures  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "shadow.json"
REPORT = ROOT / "benchmarks" / "SHADOW.md"
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DAY = dt.date(2030, 1, 1)


def centres(rng, k, d, separation):
    while True:
        c = rng.normal(0.0, separation, size=(k, d))
        gaps = np.linalg.norm(c[:, None] - c[None], axis=2) + np.eye(k) * 1e9
        if gaps.min() >= separation:
            return c


def draw(rng, true, n):
    return true[rng.integers(0, len(true), n)] + rng.normal(size=(n, true.shape[1]))


def error(found, true) -> float:
    cost = np.linalg.norm(found[:, None] - true[None], axis=2)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def shadow_start(champion: KMeans, n: int, half_life: float) -> StreamingKMeans:
    k = len(champion.cluster_centers_)
    shares = np.bincount(champion.labels_, minlength=k) / n
    return StreamingKMeans(half_life=half_life, time_unit="points").initialize(
        champion.cluster_centers_, shares * memory(half_life))


# ---------------------------------------------------------------- 1. drift


def drifting(seed: int = 7, half_lives=(1000.0, 2000.0, 5000.0)) -> dict:
    rng = np.random.default_rng(seed)
    k, d, windows, per_window, batch = 5, 12, 20, 2000, 200
    start = centres(rng, k, d, 10.0)
    direction = rng.normal(size=(k, d))
    direction *= 4.0 / np.linalg.norm(direction, axis=1, keepdims=True)
    before = draw(rng, start, per_window)
    champion = KMeans(k, n_init=10, random_state=0).fit(before)
    shadows = {h: shadow_start(champion, per_window, h) for h in half_lives}
    rows = []
    for w in range(windows):
        points = []
        for b in range(per_window // batch):
            t = (w * per_window + (b + 1) * batch) / (windows * per_window)
            x = draw(rng, start + t * direction, batch)
            points.append(x)
            for model in shadows.values():
                model.update(x)
        true = start + (w + 1) / windows * direction
        refit = KMeans(k, n_init=10, random_state=w).fit(np.concatenate(points))
        rows.append({"window": w + 1, "moved": float(np.linalg.norm(
                         (w + 1) / windows * direction, axis=1).mean()),
                     "frozen": error(champion.cluster_centers_, true),
                     "refit": error(refit.cluster_centers_, true),
                     **{f"shadow_h{int(h)}": error(m.centroids_, true)
                        for h, m in shadows.items()}})
    return {"k": k, "d": d, "windows": windows, "per_window": per_window, "batch": batch,
            "half_lives": list(half_lives), "rows": rows}


# ---------------------------------------------------------------- 2. stationary


def stationary(seeds=(3, 4, 5, 6, 7)) -> dict:
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        true = centres(rng, 6, 8, 3.0)
        x = draw(rng, true, 32_000)
        champion = KMeans(6, n_init=3, random_state=0).fit(x[:2000])
        refit = KMeans(6, n_init=10, random_state=0).fit(x)
        row = {"seed": seed, "refit_inertia": float(refit.inertia_)}
        for h in (10_000.0, float("inf")):
            model = shadow_start(champion, 2000, h) if np.isfinite(h) else \
                StreamingKMeans().initialize(champion.cluster_centers_,
                                             np.bincount(champion.labels_, minlength=6))
            for lo in range(2000, len(x), 500):
                model.update(x[lo:lo + 500])
            row["shadow_h10000" if np.isfinite(h) else "shadow_no_forgetting"] = \
                model.inertia(x) / refit.inertia_
        peer = MiniBatchKMeans(6, init=champion.cluster_centers_, n_init=1, batch_size=500,
                               random_state=0)
        for lo in range(2000, len(x), 500):
            peer.partial_fit(x[lo:lo + 500])
        row["minibatch_kmeans"] = float(((x[:, None] - peer.cluster_centers_[None]) ** 2)
                                        .sum(axis=2).min(axis=1).sum() / refit.inertia_)
        row["champion"] = float(((x[:, None] - champion.cluster_centers_[None]) ** 2)
                                .sum(axis=2).min(axis=1).sum() / refit.inertia_)
        out.append(row)
    return {"points": 32_000, "k": 6, "d": 8, "batch": 500, "rows": out}


# ---------------------------------------------------------------- 3. speed


def speed(rounds: int = 5) -> dict:
    rng = np.random.default_rng(11)
    k, d = 5, 12
    true = centres(rng, k, d, 6.0)
    out = []
    for batch in (200, 1000, 5000):
        batches = [draw(rng, true, batch) for _ in range(max(20, 200_000 // batch))]
        ours, theirs, single = [], [], []
        for _ in range(rounds):
            model = StreamingKMeans(half_life=10_000.0, time_unit="points").initialize(
                true, np.full(k, 100.0))
            t = time.perf_counter()
            for x in batches:
                model.update(x)
            ours.append(time.perf_counter() - t)
            for threads, times in ((None, theirs), (1, single)):
                peer = MiniBatchKMeans(k, init=true, n_init=1, batch_size=batch,
                                       random_state=0)
                with threadpool_limits(limits=threads):
                    t = time.perf_counter()
                    for x in batches:
                        peer.partial_fit(x)
                    times.append(time.perf_counter() - t)
        n = len(batches)
        ours_s, theirs_s = float(np.median(ours)), float(np.median(theirs))
        single_s = float(np.median(single))
        out.append({"batch": batch, "batches": n,
                    "ours_updates_per_s": n / ours_s, "peer_updates_per_s": n / theirs_s,
                    "peer_1thread_updates_per_s": n / single_s,
                    "ours_points_per_s": n * batch / ours_s,
                    "peer_points_per_s": n * batch / theirs_s,
                    "peer_1thread_points_per_s": n * batch / single_s,
                    "ratio": theirs_s / ours_s, "ratio_1thread": single_s / ours_s})
    return {"k": k, "d": d, "rounds": rounds, "rows": out}


def observe_speed(model: SegmentModel, customers: pd.DataFrame, rounds: int = 5) -> dict:
    rows = pd.concat([period_rows(customers, DAY, period=p, seed=11) for p in range(40, 50)])
    batches = [rows.iloc[lo:lo + 1000] for lo in range(0, len(rows) - 999, 1000)]
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as home:
            shadow = Shadow(load_settings(home=Path(home)), champion=lambda: (model, "1"))
            t = time.perf_counter()
            for i, b in enumerate(batches):
                shadow.observe(b, now=T0 + dt.timedelta(seconds=i))
            times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    return {"batch": 1000, "batches": len(batches), "seconds": seconds,
            "events_per_s": len(batches) * 1000 / seconds,
            "ms_per_batch": seconds / len(batches) * 1000}


# ---------------------------------------------------------------- 4. the demo generator


def demo_champion(customers: pd.DataFrame, periods: int, seed: int) -> SegmentModel:
    rows = pd.concat([period_rows(customers, DAY, period=p, seed=seed) for p in range(periods)])
    pre = Preprocessor.fit(rows, FEATURE_NAMES, log_features=LOG_FEATURES)
    x = pre.transform(rows)
    km = KMeans(5, n_init=10, random_state=0).fit(x)
    distance = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    return SegmentModel(km.cluster_centers_, pre, {
        "metrics": {"mean_distance": float(distance.mean())},
        "cluster_shares": (np.bincount(km.labels_, minlength=5) / len(x)).tolist(),
        "training_rows": len(x)})


def feed(model: SegmentModel, customers, seed: int, windows: int, drift=None,
         first: int = 100) -> list[dict]:
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home))
        shadow = Shadow(settings, champion=lambda: (model, "1"))
        out = []
        for w in range(windows):
            rows = period_rows(customers, DAY, period=first + w, seed=seed, drift=drift)
            for lo in range(0, len(rows), 1000):
                shadow.observe(rows.iloc[lo:lo + 1000], now=T0 + dt.timedelta(hours=w))
            f = shadow_figures(settings)
            out.append({"window": w + 1, "events": len(rows), "max_shift": f["max_shift"],
                        "mean_shift": f["mean_shift"], "points": f["points"]})
        return out


def demo(threshold: float) -> tuple[dict, SegmentModel, pd.DataFrame]:
    seed = 11
    customers = generate_customers(3000, np.random.default_rng(seed))
    model = demo_champion(customers, 3, seed)
    kinds = {"stationary": None, **{k: Drift(k, start=100) for k in DRIFT_KINDS}}
    found = {}
    for name, drift in kinds.items():
        rows = feed(model, customers, seed, 12, drift)
        over = [r["window"] for r in rows if r["max_shift"] > threshold]
        found[name] = {"rows": rows, "first_window_over": over[0] if over else None}
    sizes = []
    for customers_n, periods in ((2000, 2), (3000, 3), (3000, 10)):
        gaps = []
        for s in (1, 2, 3, 4, 5, 6):
            population = generate_customers(customers_n, np.random.default_rng(s))
            champion = demo_champion(population, periods, s)
            gaps.append(feed(champion, population, s, 20)[-1]["max_shift"])
        sizes.append({"customers": customers_n, "periods": periods,
                      "training_rows": champion.metadata["training_rows"], "max_shift": gaps})
    return {"kinds": found, "training_size": sizes}, model, customers


# ---------------------------------------------------------------- report


def write_report(r: dict) -> None:
    d, st, sp, dm = r["drift"], r["stationary"], r["speed"], r["demo"]
    hs = [f"shadow_h{int(h)}" for h in d["half_lives"]]
    lines = [
        "# Streaming shadow model: drift tracking, stationary quality, speed",
        "",
        f"Measured {r['date']} on {r['machine']} by `benchmarks/bench_shadow.py` "
        f"({r['seconds']:.0f} s; the machine was shared with a test run, load average "
        f"{r['load']:.1f}, so the speeds are indicative; the ratios come from alternating "
        "rounds). Raw figures: [results/shadow.json](results/shadow.json).",
        "",
        "## 1. Tracking centres that move",
        "",
        f"{d['k']} Gaussian centres in {d['d']} dimensions (unit noise per feature: a point lies "
        f"about {np.sqrt(d['d']):.1f} from its centre), each moving 4 units in a straight line "
        f"over {d['windows']} windows of {d['per_window']:,} points, fed in batches of "
        f"{d['batch']}. Mean distance of the centres found to the true ones at each window's "
        "end (matched one to one). Frozen: the champion fitted before the drift. Refit: "
        "scikit-learn `KMeans` (`n_init=10`) on the window's points alone, which estimates the "
        "window's middle and so lags half a window (0.1 units).",
        "",
        "| window | moved | frozen | refit | " + " | ".join(
            f"shadow, half-life {int(h):,} pts" for h in d["half_lives"]) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(hs),
    ]
    for row in d["rows"]:
        lines.append(f"| {row['window']} | {row['moved']:.2f} | {row['frozen']:.2f} | "
                     f"{row['refit']:.2f} | " + " | ".join(f"{row[h]:.2f}" for h in hs) + " |")
    last = d["rows"][-1]
    lines += [
        "",
        f"At the last window the frozen champion is {last['frozen']:.2f} off; the shadow with a "
        f"half-life of 2,000 points {last['shadow_h2000']:.2f} "
        f"({last['shadow_h2000'] / last['frozen']:.0%} of it), the refit "
        f"{last['refit']:.2f}. A shorter half-life lags less and is noisier: the shadow's error "
        "is its lag (speed times about 1.44 half-lives) plus the noise of the points it "
        "remembers.",
        "",
        "## 2. Stationary data: inertia against a full refit",
        "",
        f"{st['k']} overlapping centres in {st['d']} dimensions, {st['points']:,} points; the "
        f"champion fitted on the first 2,000, the rest fed in batches of {st['batch']}. "
        "Inertia of the final centres on every point over that of scikit-learn's `KMeans` "
        "(`n_init=10`) refitted on every point.",
        "",
        "| seed | champion | shadow, half-life 10,000 pts | shadow, no forgetting | "
        "scikit-learn MiniBatchKMeans.partial_fit |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in st["rows"]:
        lines.append(f"| {row['seed']} | {row['champion']:.5f} | {row['shadow_h10000']:.5f} | "
                     f"{row['shadow_no_forgetting']:.5f} | {row['minibatch_kmeans']:.5f} |")
    worst = max(row["shadow_h10000"] for row in st["rows"])
    lines += [
        "",
        f"Worst shadow ratio {worst:.5f}: within {100 * (worst - 1):.3f}% of the full refit "
        "(the issue asks for 1%).",
        "",
        "## 3. Speed",
        "",
        f"k={sp['k']}, d={sp['d']}, float64, the same batches and start for both; median of "
        f"{sp['rounds']} alternating rounds. Updates (mini-batches) per second; scikit-learn "
        "with its default OpenMP threads (2 here, on a machine busy with another run: "
        "oversubscribed) and limited to one thread (`threadpool_limits(1)`), the fair peer of "
        "the single-threaded NumPy update. scikit-learn's `partial_fit` also validates its "
        "input, computes the labels twice (the step, then the inertia) and checks for "
        "reassignments on every call.",
        "",
        "| batch | StreamingKMeans.update | MiniBatchKMeans.partial_fit, 1 thread | "
        "partial_fit, default threads | speed-up vs 1 thread | vs default |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sp["rows"]:
        lines.append(f"| {row['batch']:,} | {row['ours_updates_per_s']:,.0f} | "
                     f"{row['peer_1thread_updates_per_s']:,.0f} | "
                     f"{row['peer_updates_per_s']:,.0f} | {row['ratio_1thread']:.1f}x | "
                     f"{row['ratio']:.1f}x |")
    ob = r["observe"]
    lines += [
        "",
        f"`Shadow.observe`, everything the consumer's observer does per batch (the champion's "
        f"preprocessing, the update, the JSON state rewritten under its file lock, the history "
        f"line every 5 minutes): {ob['ms_per_batch']:.1f} ms per batch of "
        f"{ob['batch']:,} events, {ob['events_per_s']:,.0f} events/s, against the consumer's "
        "own 1,670 events/s ([STREAM.md](STREAM.md)).",
        "",
        "## 4. The demo generator's drift kinds, default settings",
        "",
        f"A champion (k=5) fitted on 3,000 generated customers x 3 periods; the shadow "
        f"(half-life {r['half_life']:,.0f} events) fed 12 windows of about "
        f"{np.mean([x['events'] for x in dm['kinds']['stationary']['rows']]):,.0f} events of "
        f"each kind, drifted from the first window. `max_shift` per window (largest centroid "
        f"shift in the champion's mean distance to centroid); threshold "
        f"{r['threshold']:g} (`KMEANS_MONITOR_MAX_SHADOW_SHIFT`).",
        "",
        "| kind | " + " | ".join(str(i) for i in range(1, 13)) + " | first window over |",
        "|---|" + "---:|" * 13,
    ]
    for kind, v in dm["kinds"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{x['max_shift']:.2f}" for x in v["rows"])
                     + f" | {v['first_window_over'] or 'never'} |")
    lines += [
        "",
        "The shift and the new segment move centroids and are flagged; a vanished segment "
        "does not move the others (its centroid only stops learning, and its weight fades: "
        "the window's segment-share PSI catches it from the prediction log).",
        "",
        "Stationary gap after 20 windows against the champion's training size (6 "
        "populations each): a k-means solution of a small sample need not be one of the "
        "population, and the shadow then moves to the population's, which also calls for a "
        "retraining.",
        "",
        "| customers x periods | training rows | max_shift per population |",
        "|---|---:|---|",
    ]
    for row in dm["training_size"]:
        lines.append(f"| {row['customers']:,} x {row['periods']} | {row['training_rows']:,} | "
                     + ", ".join(f"{g:.2f}" for g in row["max_shift"]) + " |")
    lines.append("")
    REPORT.write_text("\n".join(lines))


def main() -> None:
    t0 = time.monotonic()
    settings = load_settings(home=Path(tempfile.mkdtemp()))
    monitoring = settings.monitoring
    threshold, half_life = monitoring.monitor_max_shadow_shift, monitoring.shadow_half_life_points
    demo_found, model, customers = demo(threshold)
    result = {"date": dt.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}",
              "load": os.getloadavg()[0], "threshold": threshold, "half_life": half_life,
              "drift": drifting(), "stationary": stationary(), "speed": speed(),
              "observe": observe_speed(model, customers), "demo": demo_found}
    result["seconds"] = time.monotonic() - t0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=float))
    write_report(result)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
