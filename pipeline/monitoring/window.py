"""One monitoring window: what production saw against the champion's reference.

The inference server's prediction log (:mod:`pipeline.core.predictions`) holds what it was
asked and what it answered. For one explicit interval ``[start, end)`` this module compares the
champion's rows of that window with the reference sample the champion was trained on:

- **feature drift**: Evidently's column test, the same as the training gate's (normalised
  Wasserstein distance per column, the share of drifted columns);
- **cluster-aware drift**, which feature drift alone misses: the population stability index
  (PSI) of the segment shares, the ratio of mean distance to the assigned centroid against the
  reference's, the novelty rate (share beyond the training 99th-percentile distance, about 1%
  by construction), the share of low-margin points (closer to a boundary than the reference's
  5th-percentile margin, about 5% by construction), the silhouette on a sample, and per
  cluster its share, mean distance and how its profile moved (feature means in the features'
  own units);
- **the streaming shadow's gap** (:mod:`pipeline.monitoring.shadow`): how far the centroids of
  the shadow model, kept up to date by the event stream, lie from the champion's, in the
  champion's mean distance to centroid, as last recorded in the window. It comes from the
  stream, not from the prediction log, so it is judged even in a window with too few
  predictions: over ``KMEANS_MONITOR_MAX_SHADOW_SHIFT`` the window is ``drift``.

The figures go to a JSON file and an HTML report under ``<reports>/monitoring/``, an index page
listing every window, the MLflow experiment ``<experiment>-monitoring`` (one run per window,
with the report files as its artifacts, and tags saying where the report is served; the
experiment's artifacts are under the home: :func:`pipeline.registry.monitoring_experiment`)
and a Prometheus text file that :mod:`pipeline.monitoring.exporter` serves. Re-running a
window rewrites its files and its run: it is idempotent like the training DAG.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import math
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_score

from pipeline import registry
from pipeline.core.io import atomic_write_bytes, make_private
from pipeline.core.predictions import read_window
from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.monitoring.shadow import shadow_figures
from pipeline.promotion import drift
from pipeline.promotion.gates import report_url

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
    novelty_rate: float
    low_margin_share: float
    min_rows: int
    shadow_shift: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(feature_drift_share=settings.drift_share_threshold,
                   segment_psi=settings.monitor_max_segment_psi,
                   distance_ratio=settings.monitor_max_distance_ratio,
                   novelty_rate=settings.monitor_max_novelty_rate,
                   low_margin_share=settings.monitor_max_low_margin_share,
                   min_rows=settings.monitor_min_rows,
                   shadow_shift=settings.monitor_max_shadow_shift)


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


def monitoring_dir(settings: Settings) -> Path:
    return settings.reports_dir / "monitoring"


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
        "novelty_rate": float((current["distance"] > distance_p99).mean()),
        "low_margin_share": float((current["margin"] < margin_low).mean()),
        "reference_novelty_rate": float((reference["distance"] > distance_p99).mean()),
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
    data), with ``status`` one of ``drift``, ``ok``, ``too_few_rows`` or ``no_champion``."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    if end <= start:
        raise ValueError(f"window end={end.isoformat()} must be after start={start.isoformat()}")
    limits = Thresholds.from_settings(settings)
    wid = window_id(start, end)
    out: dict = {"window": wid, "start": start.isoformat(), "end": end.isoformat(),
                 "thresholds": limits.__dict__, "reasons": []}
    if registry.alias_version(settings, "champion") is None:
        return _finish(settings, {**out, "status": "no_champion", "rows": 0})
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
        return _finish(settings, {**out, "status": "drift" if out["reasons"]
                                  else "too_few_rows"})
    reference = drift.load_reference(settings, champion.metadata["run_id"])
    if reference is None:
        raise LookupError(f"champion version {version} has no reference sample to compare with")
    assigned = champion.assign(reference)
    reference = reference.assign(cluster=assigned.cluster, distance=assigned.distance,
                                 margin=assigned.margin)
    folder = monitoring_dir(settings)
    features = drift.column_drift(frame[FEATURE_NAMES].astype("float64"),
                                  reference[FEATURE_NAMES], folder / f"{wid}-features.html",
                                  column_threshold=settings.drift_column_threshold,
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
              "novelty_rate": (clusters["novelty_rate"], limits.novelty_rate),
              "low_margin_share": (clusters["low_margin_share"], limits.low_margin_share),
              **checks}
    out["reasons"] = _reasons(checks)
    return _finish(settings, {**out, "status": "drift" if out["reasons"] else "ok"})


def _reasons(checks: dict[str, tuple[float, float]]) -> list[str]:
    """``name value > limit`` for each figure above its limit."""
    return [f"{name} {value:.3f} > {limit:g}" for name, (value, limit) in checks.items()
            if value > limit]


def _finish(settings: Settings, figures: dict) -> dict:
    """Write the window's JSON and HTML, the index, the Prometheus file and the MLflow run
    (whose artifacts are the window's report files)."""
    folder = monitoring_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    wid = figures["window"]
    figures["report"] = f"{wid}.html"
    with _window_run(settings, figures) as run_id:
        figures["mlflow_run_id"] = run_id
        _write(folder / f"{wid}.json", json.dumps(figures, indent=1, default=_plain))
        _write(folder / f"{wid}.html", render_window(figures))
        _log_report(folder, figures)
    _write(folder / "index.html", render_index(settings))
    write_prometheus(settings, figures)
    log.info("monitoring window %s: %s (%s rows)%s; report %s", wid, figures["status"],
             figures.get("rows", 0),
             f": {'; '.join(figures['reasons'])}" if figures["reasons"] else "",
             folder / figures["report"])
    return figures


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


METRICS = ("segment_psi", "distance_ratio", "novelty_rate", "low_margin_share", "silhouette")
#: Figures of the streaming shadow logged (as ``shadow_<name>``) with the window's.
SHADOW_METRICS = ("max_shift", "mean_shift", "points")


#: The run's artifact folder holding the window's report files.
REPORT_ARTIFACTS = "report"


def report_files(folder: Path, figures: dict) -> list[Path]:
    """The window's report files: its HTML and JSON, and Evidently's feature drift report when
    the window had enough rows for one."""
    names = [figures["report"], f"{figures['window']}.json", figures.get("features_report")]
    return [folder / name for name in names if name and (folder / name).is_file()]


def report_tags(settings: Settings, figures: dict) -> dict[str, str]:
    """Where the run's report is: ``report``, its path in the reports folder (the path after
    ``/kmeans/reports/`` in the reports app), and ``report_url``, its address in the reports
    app when the reports are served (``KMEANS_REPORTS_URL``), else its file's URI."""
    path = monitoring_dir(settings) / figures["report"]
    relative = path.relative_to(settings.reports_dir).as_posix()
    return {"report": relative, "report_url": report_url(settings, path) or path.as_uri()}


@contextmanager
def _window_run(settings: Settings, figures: dict) -> Iterator[str]:
    """One MLflow run per window (the same run again when a window is re-run), in the
    monitoring experiment (:func:`pipeline.registry.monitoring_experiment`); yields its id
    while it is active."""
    import mlflow

    experiment_id = registry.monitoring_experiment(settings)
    found = registry.client(settings).search_runs(
        [experiment_id], f"tags.window = '{figures['window']}'", max_results=1)
    run_id = found[0].info.run_id if found else None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id,
                          run_name=figures["window"]) as run:
        mlflow.set_tags({"window": figures["window"], "status": figures["status"],
                         "champion_version": figures.get("champion_version", ""),
                         "reasons": "; ".join(figures["reasons"])[:4000],
                         **report_tags(settings, figures)})
        values = {k: figures[k] for k in METRICS if _finite(figures.get(k))}
        share = (figures.get("feature_drift") or {}).get("drift_share")
        if _finite(share):
            values["feature_drift_share"] = share
        values["rows"] = float(figures.get("rows", 0))
        shadow = figures.get("shadow") or {}
        values.update({f"shadow_{k}": float(shadow[k]) for k in SHADOW_METRICS
                       if _finite(shadow.get(k))})
        mlflow.log_metrics(values)
        yield run.info.run_id


def _log_report(folder: Path, figures: dict) -> None:
    """The window's report files as artifacts of the active run (under ``report/``), owner-only
    when the artifacts are local files (MLflow copies them with the umask's modes)."""
    import mlflow

    for path in report_files(folder, figures):
        mlflow.log_artifact(str(path), artifact_path=REPORT_ARTIFACTS)
    uri = mlflow.get_artifact_uri(REPORT_ARTIFACTS)
    if uri.startswith("file:"):
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
        for path in [local, *local.glob("*")]:
            make_private(path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------- Prometheus

def prometheus_path(settings: Settings) -> Path:
    return monitoring_dir(settings) / "metrics.prom"


def write_prometheus(settings: Settings, figures: dict) -> None:
    """The latest window as Prometheus text (served by :mod:`pipeline.monitoring.exporter`)."""
    version = figures.get("champion_version", "")
    lines: list[str] = []

    def gauge(name: str, help_: str, value, labels: str = "") -> None:
        if not _finite(value):
            return
        if f"# HELP {name} " not in "\n".join(lines):
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} gauge"])
        lines.append(f"{name}{{{labels}}} {float(value)!r}")

    base = f'model_version="{version}"'
    share = (figures.get("feature_drift") or {}).get("drift_share")
    gauge("kmeans_drift_share", "Share of feature columns drifted in the last window", share,
          base)
    gauge("kmeans_segment_psi", "PSI of the segment shares against the reference",
          figures.get("segment_psi"), base)
    gauge("kmeans_distance_ratio", "Mean distance to centroid over the reference's",
          figures.get("distance_ratio"), base)
    gauge("kmeans_far_point_share", "Share of points beyond the training p99 distance",
          figures.get("novelty_rate"), base)
    gauge("kmeans_low_margin_share", "Share of points near a cluster boundary",
          figures.get("low_margin_share"), base)
    gauge("kmeans_silhouette", "Silhouette of the last window's sample",
          figures.get("silhouette"), base)
    for c in figures.get("clusters", []):
        gauge("kmeans_segment_share", "Share of the last window's rows per cluster",
              c["share"], f'{base},cluster="{c["cluster"]}"')
    shadow = figures.get("shadow") or {}
    gauge("kmeans_shadow_max_shift", "Largest shift of a streaming shadow centroid from the "
          "champion's, in the champion's mean distance to centroid", shadow.get("max_shift"),
          base)
    gauge("kmeans_shadow_mean_shift", "Mean shift of the streaming shadow centroids from the "
          "champion's, in the champion's mean distance to centroid", shadow.get("mean_shift"),
          base)
    for c in shadow.get("clusters", []):
        gauge("kmeans_shadow_shift", "Shift of each streaming shadow centroid from the "
              "champion's, in the champion's mean distance to centroid", c["shift"],
              f'{base},cluster="{c["cluster"]}"')
    gauge("kmeans_shadow_points", "Events the streaming shadow model has learnt from since "
          "it started from the champion", shadow.get("points"), base)
    gauge("kmeans_monitor_window_rows", "Rows of the champion in the last window",
          figures.get("rows", 0), base)
    gauge("kmeans_monitor_drift", "1 when the last window was flagged as drifted",
          1.0 if figures["status"] == "drift" else 0.0, base)
    end = dt.datetime.fromisoformat(figures["end"]).timestamp()
    gauge("kmeans_monitor_window_end_timestamp_seconds", "End of the last monitored window",
          end, base)
    _write(prometheus_path(settings), "\n".join(lines) + "\n")


# ---------------------------------------------------------------- reports

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;color:#222}"
          "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;"
          "padding:.3rem .6rem;text-align:right}th{background:#f4f4f4}"
          ".drift{color:#b00020;font-weight:600}.ok{color:#1b5e20}")


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value)) if value is not None else "-"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def render_window(f: dict) -> str:
    """One window's report: status and reasons, the figures, per-cluster moves."""
    status = f["status"]
    parts = [f"<h1>Monitoring window {html.escape(f['window'])}</h1>",
             f"<p>{html.escape(f['start'])} to {html.escape(f['end'])}, champion version "
             f"{_fmt(f.get('champion_version'))}, {f.get('rows', 0)} rows. Status: "
             f"<span class='{'drift' if status == 'drift' else 'ok'}'>{status}</span></p>",
             "<p><a href='index.html'>All windows</a></p>"]
    if f["reasons"]:
        parts.append("<ul>" + "".join(f"<li class='drift'>{html.escape(r)}</li>"
                                      for r in f["reasons"]) + "</ul>")
    if "segment_psi" in f:
        share = f["feature_drift"]["drift_share"]
        rows = [("feature drift share", share, f["thresholds"]["feature_drift_share"]),
                ("segment share PSI", f["segment_psi"], f["thresholds"]["segment_psi"]),
                ("mean distance / reference", f["distance_ratio"],
                 f["thresholds"]["distance_ratio"]),
                ("novelty rate (beyond training p99)", f["novelty_rate"],
                 f["thresholds"]["novelty_rate"]),
                ("low-margin share", f["low_margin_share"],
                 f["thresholds"]["low_margin_share"]),
                ("silhouette (sample)", f["silhouette"], None)]
        parts.append("<table><tr><th>figure</th><th>window</th><th>threshold</th></tr>" + "".join(
            f"<tr><td style='text-align:left'>{n}</td><td>{_fmt(v)}</td><td>{_fmt(t)}</td></tr>"
            for n, v, t in rows) + "</table>")
        parts.append(f"<p><a href='{html.escape(f['features_report'])}'>Evidently feature "
                     f"drift report</a>; drifted columns: "
                     f"{html.escape(', '.join(f['feature_drift']['drifted_columns']) or 'none')}"
                     "</p>")
        head = "".join(f"<th>{html.escape(n)} (shift, sd)</th>" for n in FEATURE_NAMES)
        body = "".join(
            f"<tr><td>{c['cluster']}</td><td>{_fmt(c['reference_share'])}</td>"
            f"<td>{_fmt(c['share'])}</td><td>{_fmt(c['reference_mean_distance'])}</td>"
            f"<td>{_fmt(c['mean_distance'])}</td>"
            + "".join(f"<td>{_fmt(c['profile'][n]['shift_sd'], 2)}</td>" for n in FEATURE_NAMES)
            + "</tr>" for c in f["clusters"])
        profile = monitoring_profile_link(f.get("champion_version"))
        parts.append(f"<h2>Segments</h2><p>How each segment moved in the window: its share, "
                     f"its mean distance and each feature's mean shift in reference standard "
                     f"deviations. {profile}</p>"
                     "<table><tr><th>cluster</th><th>reference share</th>"
                     "<th>share</th><th>reference mean distance</th><th>mean distance</th>"
                     f"{head}</tr>{body}</table>")
    if f.get("shadow"):
        parts.append(render_shadow(f["shadow"], f["thresholds"].get("shadow_shift")))
    parts.append(f"<p>MLflow run: <code>{html.escape(f.get('mlflow_run_id') or '')}</code></p>")
    return _page(f"Monitoring {f['window']}", "".join(parts))


def render_shadow(shadow: dict, limit) -> str:
    """The streaming shadow's gap from the champion: the summary and a row per cluster."""
    rows = "".join(
        f"<tr><td>{c['cluster']}</td><td>{_fmt(c['shift'])}</td><td>{_fmt(c['distance'])}</td>"
        f"<td>{_fmt(c.get('champion_share'))}</td><td>{_fmt(c.get('share'))}</td></tr>"
        for c in shadow.get("clusters", []))
    over = limit is not None and shadow["max_shift"] > limit
    return (f"<h2>Streaming shadow model</h2><p>Centroids kept up to date by the event stream "
            f"since champion version {_fmt(shadow['champion_version'])} "
            f"({shadow['points']} events, recorded {html.escape(str(shadow.get('at', '')))}). "
            f"Largest shift <span class='{'drift' if over else 'ok'}'>"
            f"{_fmt(shadow['max_shift'])}</span> (threshold {_fmt(limit)}), mean "
            f"{_fmt(shadow['mean_shift'])}, in units of the champion's "
            f"{html.escape(str(shadow['scale_source']))} ({_fmt(shadow['scale'])}).</p>"
            "<table><tr><th>cluster</th><th>shift</th><th>distance (model space)</th>"
            f"<th>champion share</th><th>shadow share</th></tr>{rows}</table>")


def monitoring_profile_link(version) -> str:
    """The link from a window's report to the champion's segment profile (written at its
    registration under ``<reports>/profiles/version-<N>/``)."""
    if version is None:
        return ""
    return (f"<a href='../profiles/version-{html.escape(str(version))}/profile.html'>Segment "
            f"profile of version {html.escape(str(version))}</a> (sizes, means and medians, "
            f"distinguishing features, heatmap, silhouette diagram).")


def render_index(settings: Settings) -> str:
    """Every window, newest first, with its status, key figures and links."""
    folder = monitoring_dir(settings)
    windows = []
    for path in folder.glob("*.json"):
        try:
            windows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    windows.sort(key=lambda w: w.get("start", ""), reverse=True)
    rows = "".join(
        f"<tr><td style='text-align:left'><a href='{html.escape(w['report'])}'>"
        f"{html.escape(w['window'])}</a></td>"
        f"<td class='{'drift' if w['status'] == 'drift' else 'ok'}'>{w['status']}</td>"
        f"<td>{w.get('rows', 0)}</td><td>{_fmt(w.get('champion_version'))}</td>"
        f"<td>{_fmt((w.get('feature_drift') or {}).get('drift_share'))}</td>"
        f"<td>{_fmt(w.get('segment_psi'))}</td><td>{_fmt(w.get('distance_ratio'))}</td>"
        f"<td>{_fmt(w.get('novelty_rate'))}</td>"
        f"<td>{_fmt((w.get('shadow') or {}).get('max_shift'))}</td>"
        f"<td style='text-align:left'>{html.escape('; '.join(w.get('reasons', [])))}</td>"
        f"<td><code>{html.escape(w.get('mlflow_run_id') or '')}</code></td></tr>"
        for w in windows)
    return _page("Monitoring windows", (
        "<h1>Monitoring windows</h1><table><tr><th>window (UTC)</th><th>status</th><th>rows</th>"
        "<th>champion</th><th>feature drift share</th><th>segment PSI</th>"
        "<th>distance ratio</th><th>novelty rate</th><th>shadow shift</th><th>reasons</th>"
        "<th>MLflow run</th></tr>"
        f"{rows}</table>"))
