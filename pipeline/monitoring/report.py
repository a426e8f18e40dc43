"""The HTML sink of a monitoring window: its report page, the index of every window, and the
window's figures as JSON beside them, under ``<reports>/monitoring/`` (served by the reports
app). Rendering is pure: figures in, HTML out.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_write_bytes
from pipeline.core.settings import FEATURE_NAMES, Settings


def monitoring_dir(settings: Settings) -> Path:
    return settings.reports_dir / "monitoring"


def write_window(settings: Settings, figures: dict) -> Path:
    """Write the window's JSON and HTML report; returns the HTML's path."""
    folder = monitoring_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f"{figures['window']}.json", json.dumps(figures, indent=1, default=_plain))
    return _write(folder / figures["report"], render_window(figures))


def write_index(settings: Settings) -> Path:
    """Rewrite the index of every window kept in the folder."""
    return _write(monitoring_dir(settings) / "index.html", render_index(settings))


def _write(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


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
                ("ood rate (beyond training p99)", f["ood_rate"],
                 f["thresholds"]["ood_rate"]),
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
        f"<td>{_fmt(w.get('ood_rate'))}</td>"
        f"<td>{_fmt((w.get('shadow') or {}).get('max_shift'))}</td>"
        f"<td style='text-align:left'>{html.escape('; '.join(w.get('reasons', [])))}</td>"
        f"<td><code>{html.escape(w.get('mlflow_run_id') or '')}</code></td></tr>"
        for w in windows)
    return _page("Monitoring windows", (
        "<h1>Monitoring windows</h1><table><tr><th>window (UTC)</th><th>status</th><th>rows</th>"
        "<th>champion</th><th>feature drift share</th><th>segment PSI</th>"
        "<th>distance ratio</th><th>ood rate</th><th>shadow shift</th><th>reasons</th>"
        "<th>MLflow run</th></tr>"
        f"{rows}</table>"))
