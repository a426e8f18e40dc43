"""One monitoring window: what production saw against the champion's reference.

The inference server's prediction log (:mod:`pipeline.core.predictions`) holds what it was
asked and what it answered. For one explicit interval ``[start, end)`` this module compares the
champion's rows of that window with the reference sample the champion was trained on:

- **feature drift**: Evidently's column test, the same as the training gate's (normalised
  Wasserstein distance per column, the share of drifted columns);
- **cluster-aware drift**, which feature drift alone misses: the population stability index
  (PSI) of the segment shares, the ratio of mean distance to the assigned centroid against the
  reference's, the ood (out-of-distribution) rate (share beyond the training 99th-percentile
  distance, about 1% by construction), the share of low-margin points (closer to a boundary
  than the reference's 5th-percentile margin, about 5% by construction), the silhouette on a
  sample, and per cluster its share, mean distance and how its profile moved (feature means in
  the features' own units);
- **the streaming shadow's gap** (:mod:`pipeline.monitoring.shadow`): how far the centroids of
  the shadow model, kept up to date by the event stream, lie from the champion's, in the
  champion's mean distance to centroid, as last recorded in the window. It comes from the
  stream, not from the prediction log, so it is judged even in a window with too few
  predictions: over ``KMEANS_MONITOR_MAX_SHADOW_SHIFT`` the window is ``drift``.

:func:`compute_window` only computes: it returns the window's figures (a JSON-ready dict,
the same one the DAG passes on as XCom and :mod:`pipeline.monitoring.actions` reads).
:func:`monitor_window` computes and hands the figures to the sinks: the JSON file and HTML
report under ``<reports>/monitoring/`` with an index page listing every window
(:mod:`pipeline.monitoring.report`), the MLflow experiment ``<experiment>-monitoring``, one run
per window with the report files as its artifacts (:mod:`pipeline.monitoring.tracking`), and
the Prometheus text file that :mod:`pipeline.monitoring.exporter` serves
(:mod:`pipeline.monitoring.exposition`). Re-running a window rewrites its files and its run:
it is idempotent like the training DAG.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_score

from pipeline import registry
from pipeline.core.predictions import read_window
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.monitoring import report, tracking
from pipeline.monitoring.exposition import prometheus_path, write_prometheus
from pipeline.monitoring.report import monitoring_dir
from pipeline.monitoring.shadow import shadow_figures
from pipeline.promotion import drift

log = logging.getLogger(__name__)

PSI_FLOOR = 1e-4  # shares below this count as this much in the PSI (no log of zero)
SILHOUETTE_ROWS = 2000
LOW_MARGIN_QUANTILE = 5.0  # percent of reference rows below the low-margin threshold


@dataclass(frozen=True)
class Thresholds:
    """Over any of these, the window is flagged as drifted."""

    feature_drift_share: float
    segment_psi: float
    distance_ratio: float
    ood_rate: float
    low_margin_share: float
    min_rows: int
    shadow_shift: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        m = settings.monitoring
        return cls(feature_drift_share=settings.gates.drift_share_threshold,
                   segment_psi=m.monitor_max_segment_psi,
                   distance_ratio=m.monitor_max_distance_ratio,
                   ood_rate=m.monitor_max_ood_rate,
                   low_margin_share=m.monitor_max_low_margin_share,
                   min_rows=m.monitor_min_rows,
                   shadow_shift=m.monitor_max_shadow_shift)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors: sum((c - r) * ln(c / r)).

    Examples
    --------
    >>> psi(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 3)
    0.879
    """
    r = np.maximum(np.asarray(reference, dtype=np.float64), PSI_FLOOR)
    c = np.maximum(np.asarray(current, dtype=np.float64), PSI_FLOOR)
    return float(((c - r) * np.log(c / r)).sum())


def window_id(start: dt.datetime, end: dt.datetime) -> str:
    """``20261130T140000-20261130T150000``: the window's name in files and runs (with
    milliseconds when a boundary is not a whole second).

    Examples
    --------
    >>> window_id(dt.datetime(2026, 11, 30, 14, tzinfo=dt.UTC),
    ...           dt.datetime(2026, 11, 30, 15, tzinfo=dt.UTC))
    '20261130T140000-20261130T150000'
    >>> window_id(dt.datetime(2026, 11, 30, 14, 0, 0, 250_000, tzinfo=dt.UTC),
    ...           dt.datetime(2026, 11, 30, 14, 0, 1, tzinfo=dt.UTC))
    '20261130T140000.250-20261130T140001.000'
    """
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    fmt = "%Y%m%dT%H%M%S"
    if start.microsecond or end.microsecond:
        return f"{start.strftime(fmt)}.{start.microsecond // 1000:03d}-" \
               f"{end.strftime(fmt)}.{end.microsecond // 1000:03d}"
    return f"{start.strftime(fmt)}-{end.strftime(fmt)}"


def _shares(labels: pd.Series, ids: list[int]) -> np.ndarray:
    counts = labels.value_counts()
    return np.array([counts.get(c, 0) for c in ids], dtype=np.float64) / max(len(labels), 1)


def cluster_figures(ids: list[int], reference: pd.DataFrame, current: pd.DataFrame, *,
                    distance_p99: float, margin_low: float) -> dict:
    """Cluster-aware drift of ``current`` against ``reference``; both hold ``cluster`` (the
    model's stable cluster ids, ``ids``), ``distance`` and ``margin`` per row, and the raw
    feature columns."""
    ref_shares, cur_shares = _shares(reference["cluster"], ids), _shares(current["cluster"], ids)
    ref_mean = float(reference["distance"].mean())
    clusters = []
    for i, c in enumerate(ids):
        ref_rows, cur_rows = reference[reference.cluster == c], current[current.cluster == c]
        moved = {}
        for name in FEATURE_NAMES:
            before = float(ref_rows[name].mean()) if len(ref_rows) else math.nan
            after = float(cur_rows[name].mean()) if len(cur_rows) else math.nan
            spread = float(reference[name].std()) or 1.0
            moved[name] = {"reference": before, "window": after,
                           "shift_sd": (after - before) / spread}
        clusters.append({
            "cluster": c, "reference_share": float(ref_shares[i]), "share": float(cur_shares[i]),
            "reference_mean_distance": float(ref_rows["distance"].mean()) if len(ref_rows)
            else None,
            "mean_distance": float(cur_rows["distance"].mean()) if len(cur_rows) else None,
            "profile": moved})
    return {
        "segment_psi": psi(ref_shares, cur_shares),
        "distance_ratio": float(current["distance"].mean()) / ref_mean if ref_mean else math.inf,
        "ood_rate": float((current["distance"] > distance_p99).mean()),
        "low_margin_share": float((current["margin"] < margin_low).mean()),
        "reference_ood_rate": float((reference["distance"] > distance_p99).mean()),
        "clusters": clusters,
    }


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    if len(np.unique(labels)) < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    if len(x) > SILHOUETTE_ROWS:
        pick = rng.choice(len(x), SILHOUETTE_ROWS, replace=False)
        x, labels = x[pick], labels[pick]
    return float(silhouette_score(x, labels))


def monitor_window(settings: Settings, start: dt.datetime, end: dt.datetime) -> dict:
    """Compute, report and record one window; returns its figures (XCom-sized: no per-row
    data), with ``status`` one of ``drift``, ``ok``, ``too_few_rows`` or ``no_champion``, and
    where they were recorded (``report``, ``mlflow_run_id``)."""
    return record_window(settings, compute_window(settings, start, end))


def compute_window(settings: Settings, start: dt.datetime, end: dt.datetime) -> dict:
    """The figures of one window against the champion's reference, recorded nowhere (but
    Evidently's feature drift page, written where the window's report will link to it)."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    if end <= start:
        raise ValueError(f"window end={end.isoformat()} must be after start={start.isoformat()}")
    limits = Thresholds.from_settings(settings)
    wid = window_id(start, end)
    out: dict = {"window": wid, "start": start.isoformat(), "end": end.isoformat(),
                 "thresholds": asdict(limits), "reasons": []}
    if registry.alias_version(settings, "champion") is None:
        return {**out, "status": "no_champion", "rows": 0}
    champion, version = registry.download_model(settings, "champion")
    out["champion_version"] = version
    shadow = shadow_figures(settings, start=start, end=end, version=version)
    checks: dict[str, tuple[float, float]] = {}
    if shadow is not None:
        out["shadow"] = shadow
        checks["shadow_max_shift"] = (shadow["max_shift"], limits.shadow_shift)
    table = read_window(settings.predictions_dir, start, end)
    frame = table.to_pandas() if table is not None else pd.DataFrame()
    frame = frame[frame["model_version"] == version] if len(frame) else frame
    out["rows"] = len(frame)
    if len(frame) < limits.min_rows:  # the stream's figure is judged all the same
        out["reasons"] = _reasons(checks)
        return {**out, "status": "drift" if out["reasons"] else "too_few_rows"}
    reference = drift.load_reference(settings, champion.metadata["run_id"])
    if reference is None:
        raise LookupError(f"champion version {version} has no reference sample to compare with")
    assigned = champion.assign(reference)
    reference = reference.assign(cluster=assigned.cluster, distance=assigned.distance,
                                 margin=assigned.margin)
    folder = monitoring_dir(settings)
    features = drift.column_drift(frame[FEATURE_NAMES].astype("float64"),
                                  reference[FEATURE_NAMES], folder / f"{wid}-features.html",
                                  column_threshold=settings.gates.drift_column_threshold,
                                  share_threshold=limits.feature_drift_share)
    p99 = float(champion.metadata.get("distance_p99") or np.percentile(assigned.distance, 99))
    margin_low = float(np.percentile(assigned.margin, LOW_MARGIN_QUANTILE))
    clusters = cluster_figures([int(c) for c in champion.cluster_ids], reference, frame,
                               distance_p99=p99,
                               margin_low=margin_low)
    silhouette = _silhouette(champion.preprocessor.transform(frame[FEATURE_NAMES]),
                             frame["cluster"].to_numpy(), seed=0)
    out.update(feature_drift={k: features[k] for k in (
                   "drift_share", "drifted_columns", "scores", "current_rows",
                   "reference_rows")},
               features_report=f"{wid}-features.html", silhouette=silhouette,
               reference_silhouette=(champion.metadata.get("metrics") or {}).get("silhouette"),
               **{k: v for k, v in clusters.items()})
    checks = {"feature_drift_share": (features["drift_share"], limits.feature_drift_share),
              "segment_psi": (clusters["segment_psi"], limits.segment_psi),
              "distance_ratio": (clusters["distance_ratio"], limits.distance_ratio),
              "ood_rate": (clusters["ood_rate"], limits.ood_rate),
              "low_margin_share": (clusters["low_margin_share"], limits.low_margin_share),
              **checks}
    out["reasons"] = _reasons(checks)
    return {**out, "status": "drift" if out["reasons"] else "ok"}


def _reasons(checks: dict[str, tuple[float, float]]) -> list[str]:
    """``name value > limit`` for each figure above its limit."""
    return [f"{name} {value:.3f} > {limit:g}" for name, (value, limit) in checks.items()
            if value > limit]


def record_window(settings: Settings, figures: dict) -> dict:
    """Hand a window's figures to the sinks: its MLflow run (whose id the report shows, and
    whose artifacts are the report files), the JSON and HTML report, the index and the
    Prometheus file. Returns the figures with ``report`` and ``mlflow_run_id`` added."""
    folder = monitoring_dir(settings)
    figures["report"] = f"{figures['window']}.html"
    with tracking.window_run(settings, figures) as run_id:
        figures["mlflow_run_id"] = run_id
        report.write_window(settings, figures)
        tracking.log_report(folder, figures)
    report.write_index(settings)
    write_prometheus(settings, figures)
    log.info("monitoring window %s: %s (%s rows)%s; report %s", figures["window"],
             figures["status"], figures.get("rows", 0),
             f": {'; '.join(figures['reasons'])}" if figures["reasons"] else "",
             folder / figures["report"])
    return figures


__all__ = ["Thresholds", "compute_window", "monitor_window", "monitoring_dir",
           "prometheus_path", "psi", "record_window", "window_id", "write_prometheus"]
