"""The Prometheus sink of a monitoring window: its figures as gauges, through
``prometheus_client``, in the text file :mod:`pipeline.monitoring.exporter` serves.

The gauges are declared once, in :class:`WindowMetrics`; the alert rules
(:mod:`pipeline.monitoring.alerts`) name them through the constants below, and the tests
collect the names from an instance's registry, so a rule cannot name a series nobody exports.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from pipeline.core.io import atomic_write_bytes
from pipeline.core.settings import Settings

# The series names, for the rules and the dashboard.
DRIFT_SHARE = "kmeans_drift_share"
SEGMENT_PSI = "kmeans_segment_psi"
DISTANCE_RATIO = "kmeans_distance_ratio"
OOD_RATE = "kmeans_ood_rate"
LOW_MARGIN_SHARE = "kmeans_low_margin_share"
SILHOUETTE = "kmeans_silhouette"
SEGMENT_SHARE = "kmeans_segment_share"
SHADOW_MAX_SHIFT = "kmeans_shadow_max_shift"
SHADOW_MEAN_SHIFT = "kmeans_shadow_mean_shift"
SHADOW_SHIFT = "kmeans_shadow_shift"
SHADOW_POINTS = "kmeans_shadow_points"
WINDOW_ROWS = "kmeans_monitor_window_rows"
WINDOW_DRIFT = "kmeans_monitor_drift"
WINDOW_END = "kmeans_monitor_window_end_timestamp_seconds"

_SHIFT_UNIT = "in the champion's mean distance to centroid"


class WindowMetrics:
    """The gauges of the latest monitoring window, in a registry of their own (every series
    is labelled with the champion's ``model_version``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        v = ["model_version"]
        vc = ["model_version", "cluster"]
        self.drift_share = Gauge(DRIFT_SHARE, "Share of feature columns drifted in the last "
                                 "window", v, registry=r)
        self.segment_psi = Gauge(SEGMENT_PSI, "PSI of the segment shares against the "
                                 "reference", v, registry=r)
        self.distance_ratio = Gauge(DISTANCE_RATIO, "Mean distance to centroid over the "
                                    "reference's", v, registry=r)
        self.ood_rate = Gauge(OOD_RATE, "Share of points beyond the training p99 distance "
                              "(out of distribution)", v, registry=r)
        self.low_margin_share = Gauge(LOW_MARGIN_SHARE, "Share of points near a cluster "
                                      "boundary", v, registry=r)
        self.silhouette = Gauge(SILHOUETTE, "Silhouette of the last window's sample", v,
                                registry=r)
        self.segment_share = Gauge(SEGMENT_SHARE, "Share of the last window's rows per "
                                   "cluster", vc, registry=r)
        self.shadow_max_shift = Gauge(SHADOW_MAX_SHIFT, "Largest shift of a streaming shadow "
                                      f"centroid from the champion's, {_SHIFT_UNIT}", v,
                                      registry=r)
        self.shadow_mean_shift = Gauge(SHADOW_MEAN_SHIFT, "Mean shift of the streaming shadow "
                                       f"centroids from the champion's, {_SHIFT_UNIT}", v,
                                       registry=r)
        self.shadow_shift = Gauge(SHADOW_SHIFT, "Shift of each streaming shadow centroid from "
                                  f"the champion's, {_SHIFT_UNIT}", vc, registry=r)
        self.shadow_points = Gauge(SHADOW_POINTS, "Events the streaming shadow model has "
                                   "learnt from since it started from the champion", v,
                                   registry=r)
        self.rows = Gauge(WINDOW_ROWS, "Rows of the champion in the last window", v,
                          registry=r)
        self.drift = Gauge(WINDOW_DRIFT, "1 when the last window was flagged as drifted", v,
                           registry=r)
        self.end = Gauge(WINDOW_END, "End of the last monitored window", v, registry=r)

    def names(self) -> set[str]:
        """The series names this registry exports."""
        return {family.name for family in self.registry.collect()}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _set(gauge: Gauge, value, *labels: str) -> None:
    """A figure that is missing or not finite is left out (no series), as Prometheus cannot
    alert on NaN the way it alerts on an absent series."""
    if _finite(value):
        gauge.labels(*labels).set(float(value))


def window_metrics(figures: dict) -> WindowMetrics:
    """The gauges of one window's figures (the dict :func:`pipeline.monitoring.window.
    compute_window` returns)."""
    m = WindowMetrics()
    version = str(figures.get("champion_version", ""))
    _set(m.drift_share, (figures.get("feature_drift") or {}).get("drift_share"), version)
    _set(m.segment_psi, figures.get("segment_psi"), version)
    _set(m.distance_ratio, figures.get("distance_ratio"), version)
    _set(m.ood_rate, figures.get("ood_rate"), version)
    _set(m.low_margin_share, figures.get("low_margin_share"), version)
    _set(m.silhouette, figures.get("silhouette"), version)
    for c in figures.get("clusters", []):
        _set(m.segment_share, c["share"], version, str(c["cluster"]))
    shadow = figures.get("shadow") or {}
    _set(m.shadow_max_shift, shadow.get("max_shift"), version)
    _set(m.shadow_mean_shift, shadow.get("mean_shift"), version)
    for c in shadow.get("clusters", []):
        _set(m.shadow_shift, c["shift"], version, str(c["cluster"]))
    _set(m.shadow_points, shadow.get("points"), version)
    _set(m.rows, figures.get("rows", 0), version)
    _set(m.drift, 1.0 if figures["status"] == "drift" else 0.0, version)
    _set(m.end, dt.datetime.fromisoformat(figures["end"]).timestamp(), version)
    return m


def prometheus_path(settings: Settings) -> Path:
    """The text file the exporter serves: ``<reports>/monitoring/metrics.prom``."""
    return settings.reports_dir / "monitoring" / "metrics.prom"


def write_prometheus(settings: Settings, figures: dict) -> None:
    """The latest window in Prometheus' text format (served by
    :mod:`pipeline.monitoring.exporter`), replaced atomically so a scrape never reads half."""
    path = prometheus_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, generate_latest(window_metrics(figures).registry))
