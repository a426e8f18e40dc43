"""Monitoring sensitivity: false alarms on stationary traffic and detection delay per drift kind.

A champion is trained on the generated lake (3,000 customers, 3 days), the inference server
runs on loopback with its prediction log, and :func:`pipeline.devtools.replay.sensitivity`
sends 20 stationary windows and 10 windows of each drift kind (``shift``, ``new_segment``,
``vanished_segment``, ``trend``: a tenth of the shift more each window) through it, then
monitors each window with the configured thresholds.

Side by side, from the same windows: what a user would get from Evidently's feature drift test
alone (the training gate's column test: share of drifted columns over
``KMEANS_DRIFT_SHARE_THRESHOLD``), from the cluster-aware figures alone (segment PSI, distance
ratio, ood rate, low-margin share), and from both (what the monitoring DAG flags).

    .venv/bin/python benchmarks/bench_monitoring.py      # about 2 minutes

Writes benchmarks/results/monitoring.json and benchmarks/MONITORING.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "monitoring.json"
REPORT = ROOT / "benchmarks" / "MONITORING.md"
CUSTOMERS, SEED = 3000, 11
CLUSTER_FIGURES = ("segment_psi", "distance_ratio", "ood_rate", "low_margin_share")


def champion_home(work: Path) -> Path:
    from pipeline.core.settings import load_settings
    from pipeline.data import features
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import ingest_lake
    from pipeline.promotion.register import register
    from pipeline.training import stages

    home = work / "home"
    os.environ["KMEANS_HOME"] = str(home)
    settings = load_settings(home=home)
    start = dt.date.today() - dt.timedelta(days=3)
    begin = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
    end = begin + dt.timedelta(days=3)
    generate_lake(settings.lake_dir, n_customers=CUSTOMERS, start=start, days=3, seed=SEED)
    ingest_lake(settings, begin.date(), end.date())
    features.apply_repo(settings)
    snap = features.training_snapshot(settings, begin, end)
    trained = stages.train(settings, snap.path, {"k_min": 5, "k_max": 5, "engine": "local",
                                                 "max_iter": 50, "seed": 1})
    register(settings, trained["run_id"])
    return home


def flags(window: dict, thresholds: dict) -> dict[str, bool]:
    feature = (window["feature_drift_share"] or 0) > thresholds["feature_drift_share"]
    cluster = any((window[k] or 0) > thresholds[k] for k in CLUSTER_FIGURES)
    return {"feature drift alone (Evidently)": feature, "cluster-aware alone": cluster,
            "both (the monitoring DAG)": feature or cluster}


def summarise(found: dict, thresholds: dict) -> dict:
    out = {}
    for detector in flags(found["windows"][0], thresholds):
        calm = [flags(w, thresholds)[detector] for w in found["windows"]
                if w["kind"] == "stationary"]
        delays = {}
        for kind in found["detection_delay_windows"]:
            seen = [flags(w, thresholds)[detector] for w in found["windows"] if w["kind"] == kind]
            delays[kind] = seen.index(True) if True in seen else None
        out[detector] = {"false_alarms": sum(calm), "stationary_windows": len(calm),
                         "delay": delays}
    return out


def write_report(result: dict) -> None:
    s = result["summary"]
    kinds = list(result["detection_delay_windows"])
    lines = [
        "# Monitoring: false alarms and detection delay",
        "",
        f"Measured {result['date']} on {result['machine']} by `benchmarks/bench_monitoring.py` "
        f"({result['seconds']:.0f} s). A champion (k=5) trained on {CUSTOMERS:,} generated "
        f"customers; each window is one period of the same population (about "
        f"{result['rows_per_window']:.0f} rows) sent through the inference server over HTTP "
        f"and monitored from its prediction log with the default thresholds. "
        f"{result['stationary_windows']} stationary windows, then {result['per_kind_windows']} "
        "windows of each drift kind, drifted from the kind's first window on "
        "(`kmeans generate --drift KIND` injects the same drift into the lake).",
        "",
        "Delay: windows before the first flagged one (0: flagged in the first drifted "
        "window; never: not flagged within the kind's windows).",
        "",
        "| detector | false alarms | " + " | ".join(f"delay: {k}" for k in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for name, d in s.items():
        delays = " | ".join("never" if d["delay"][k] is None else str(d["delay"][k])
                            for k in kinds)
        lines.append(f"| {name} | {d['false_alarms']} of {d['stationary_windows']} | {delays} |")
    lines += ["", "Per drift kind, the monitoring's reasons in the first drifted window:", ""]
    for kind in kinds:
        first = next(w for w in result["windows"] if w["kind"] == kind)
        lines.append(f"- `{kind}`: {'; '.join(first['reasons']) or 'none (ok)'}")
    calm = [w for w in result["windows"] if w["kind"] == "stationary"]
    top = {k: max(w[k] or 0 for w in calm) for k in (*CLUSTER_FIGURES, "feature_drift_share")}
    lines += ["", "Stationary windows, the largest figure seen against its threshold: "
              + ", ".join(f"{k} {v:.3f} (threshold {result['thresholds'][k]:g})"
                          for k, v in top.items()) + ".",
              "", "Raw figures: [results/monitoring.json](results/monitoring.json).", ""]
    REPORT.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stationary", type=int, default=20)
    parser.add_argument("--per-kind", type=int, default=10)
    args = parser.parse_args()
    from pipeline.core.logs import quiet_dependencies
    from pipeline.core.settings import load_settings
    from pipeline.data.datagen import generate_customers
    from pipeline.devtools.replay import sensitivity
    from pipeline.monitoring.window import Thresholds
    from pipeline.serving.server import build_app, running

    quiet_dependencies()
    with tempfile.TemporaryDirectory() as tmp:
        home = champion_home(Path(tmp))
        settings = load_settings(home=home)
        customers = generate_customers(CUSTOMERS, np.random.default_rng(SEED))
        app = build_app(settings, with_feast=False)
        app.prediction_log.flush_seconds = 0.2
        t0 = time.monotonic()
        with running(app) as url:
            found = sensitivity(settings, url, customers, seed=SEED,
                                stationary=args.stationary, per_kind=args.per_kind)
        seconds = time.monotonic() - t0
        thresholds = Thresholds.from_settings(settings).__dict__
    result = {**found, "date": dt.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "seconds": seconds, "thresholds": thresholds,
              "rows_per_window": float(np.mean([w["rows"] for w in found["windows"]])),
              "summary": summarise(found, thresholds)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=str))
    write_report(result)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
