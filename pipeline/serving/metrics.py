"""The server's Prometheus metrics: requests, assignments, distances, routing, refusals.

One registry per app (a test builds many apps in one process); :class:`Metrics` caches the
labelled children, since looking one up costs more than the increment.
"""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.serving.model import MODES, Prediction


def observe_many(hist, values: np.ndarray) -> None:
    """``hist.observe(v)`` for every finite value, in one update per bucket: a batch's rows
    are counted in full for about the cost of one observation (a Python loop of observations
    was 29% of a 100-row request's time, and sampled 256 rows of bigger ones). Falls back to
    the loop on a prometheus_client without the histogram's ``_upper_bounds``, ``_buckets``
    and ``_sum``."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]  # a non-finite figure would poison the sum for good
    if not len(values):
        return
    bounds, buckets = getattr(hist, "_upper_bounds", None), getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if bounds is None or buckets is None or total is None or len(values) < 4:
        for value in values.tolist():
            hist.observe(value)
        return
    # a value goes to the first bucket whose bound it does not exceed, as observe() puts it
    counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"),
                         minlength=len(bounds))
    total.inc(float(values.sum()))
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))


class Metrics:
    """The app's metrics, in a registry of their own."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kmeans_requests_total", "Requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("kmeans_request_latency_seconds", "Request latency", ["route"],
                                 registry=r, buckets=(.0002, .0005, .001, .002, .005, .01, .025,
                                                      .05, .1, .25, 1))
        self.assignments = Counter("kmeans_assignments_total", "Assignments per cluster",
                                   ["model_version", "cluster"], registry=r)
        self.distance = Histogram("kmeans_distance", "Distance to the assigned centroid",
                                  ["model_version"], registry=r,
                                  buckets=(.25, .5, 1, 1.5, 2, 3, 4, 6, 8, 12))
        self.ood = Counter("kmeans_ood_total", "Out-of-distribution assignments",
                           ["model_version"], registry=r)
        self.stale = Counter("kmeans_stale_features_total",
                             "Rows whose online features are older than the feature view's TTL",
                             registry=r)
        self.unknown = Counter("kmeans_unknown_entities_total",
                               "Ids without online features", registry=r)
        self.inflight = Gauge("kmeans_inflight_requests", "Requests in flight", registry=r)
        self.limited = Counter("kmeans_rejected_busy_total",
                               "Requests refused at the concurrency limit", registry=r)
        self.closed = Counter("kmeans_connections_closed_total",
                              "Connections the server closed, by reason (write_timeout: the "
                              "client read none of its answers in time)", ["reason"],
                              registry=r)
        self.lookup_ids = Counter("kmeans_lookup_ids_total",
                                  "Customer ids read from the online store (a lookup whose "
                                  "client went stops reading)", registry=r)
        self.slot = Gauge("kmeans_model_version", "Version loaded in each slot (-1: empty)",
                          ["slot"], registry=r)
        self.weight = Gauge("kmeans_canary_weight_percent", "Share of keys sent to the canary",
                            ["mode"], registry=r)
        self._children: dict = {}

    def child(self, metric, *labels):
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def observe(self, pred: Prediction) -> None:
        if len(pred) == 1 and pred.error is None:  # the common case, kept cheap
            version = pred.model_version[0]
            self.child(self.assignments, version, str(int(pred.cluster[0]))).inc()
            distance = float(pred.distance[0])
            if math.isfinite(distance):  # a non-finite figure would poison the sum for good
                self.child(self.distance, version).observe(distance)
            if pred.ood[0]:
                self.child(self.ood, version).inc()
            if pred.stale is not None and pred.stale[0]:
                self.stale.inc()
            return
        ok = pred.ok()
        if pred.error is not None:
            self.unknown.inc(int((~ok).sum()))
        if pred.stale is not None and pred.stale.any():
            self.stale.inc(int(pred.stale.sum()))
        versions = pred.model_version
        single = len(pred.versions_used) == 1
        for v in pred.versions_used:
            mine = ok if single else ok & (np.asarray(versions) == v)
            clusters, dist, ood = pred.cluster[mine], pred.distance[mine], pred.ood[mine]
            if len(clusters) == 1:
                self.child(self.assignments, v, str(int(clusters[0]))).inc()
            else:
                for c, n in zip(*np.unique(clusters, return_counts=True), strict=True):
                    self.child(self.assignments, v, str(int(c))).inc(int(n))
            observe_many(self.child(self.distance, v), dist)
            n_ood = int(ood.sum())
            if n_ood:
                self.child(self.ood, v).inc(n_ood)

    def routing(self, describe: dict) -> None:
        for slot in ("stable", "canary"):
            version = describe[slot] or ""
            self.slot.labels(slot).set(int(version) if version.isdigit() else -1)
        for mode in MODES:
            self.weight.labels(mode).set(describe["weight"] if describe["canary"]
                                         and mode == describe["mode"] else 0)
