"""The server's Prometheus metrics: requests, assignments, distances, routing, refusals.

One registry per app (a test builds many apps in one process). The series a request updates
are plain numbers (:class:`LoopCounter`, :class:`LoopHistogram`), read by the registry only
when it is scraped: prometheus_client's own counter takes a lock and a value object per
increment (0.33 us an increment, 0.7-0.8 us an observation, against 0.08 and 0.13 us here), and
a one-row request makes four such updates. They are updated on the event loop's thread only
(requests, REST and gRPC alike, and scrapes all run there), so they need no lock; what a thread
updates (the store lookups' id count) and the gauges stay prometheus_client's.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from pipeline.serving.model import MODES, Prediction


class LoopCounter:
    """A counter family as a float per label values, for the event loop's thread only.

    Examples
    --------
    >>> c = LoopCounter("hits_total", "Hits", ["route"])
    >>> c.inc(("infer",)); c.inc(("infer",), 2.0)
    >>> [(s.labels, s.value) for s in c.family().samples]
    [({'route': 'infer'}, 3.0)]
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()):
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self, samples: bool = True) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()) if samples else ():
            family.add_metric(labels, value)
        return family


class LoopHistogram:
    """A histogram family as counts per bucket and a sum per label values, for the event
    loop's thread only; a non-finite value is not observed (it would poison the sum for good).

    Examples
    --------
    >>> h = LoopHistogram("d", "Distance", ["v"], (0.5, 1.0))
    >>> h.observe(("7",), 0.5); h.observe(("7",), 3.0); h.observe(("7",), float("nan"))
    >>> [(s.name, s.labels["le"], s.value) for s in h.family().samples if "le" in s.labels]
    [('d_bucket', '0.5', 1.0), ('d_bucket', '1.0', 1.0), ('d_bucket', '+Inf', 2.0)]
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float]):
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.bounds = [float(b) for b in buckets]  # finite, increasing: +Inf is implied
        if self.bounds != sorted(set(self.bounds)) or not all(map(math.isfinite, self.bounds)):
            raise ValueError(f"{name}: bucket bounds must be finite and increasing: {buckets}")
        #: The buckets' upper bounds, +Inf included, as prometheus_client's histogram has them.
        self.upper_bounds = (*self.bounds, math.inf)
        self._les = [floatToGoString(b) for b in self.upper_bounds]
        # per label values: the count of each bucket (not cumulative; +Inf's last), then the sum
        self.rows: dict[tuple[str, ...], list[float]] = {}

    def _row(self, labels: tuple[str, ...]) -> list[float]:
        row = self.rows.get(labels)
        if row is None:
            row = self.rows[labels] = [0.0] * (len(self.bounds) + 2)
        return row

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        if value - value != 0.0:  # inf or NaN
            return
        row = self._row(labels)
        # a value goes to the first bucket whose bound it does not exceed
        row[bisect_left(self.bounds, value)] += 1.0
        row[-1] += value

    def observe_many(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        """:meth:`observe` of every value, in one update per bucket: a batch's rows are
        counted in full for about the cost of one observation."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        if len(values) < 4:
            for value in values.tolist():
                self.observe(labels, value)
            return
        counts = np.bincount(np.searchsorted(np.asarray(self.bounds), values, side="left"),
                             minlength=len(self.bounds) + 1)
        row = self._row(labels)
        for index in np.flatnonzero(counts).tolist():
            row[index] += float(counts[index])
        row[-1] += float(values.sum())

    def family(self, samples: bool = True) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, row in list(self.rows.items()) if samples else ():
            cumulative, buckets = 0.0, []
            for le, count in zip(self._les, row, strict=False):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(labels, buckets, row[-1])
        return family


class _LoopCollector:
    """The loop's families, read by the registry at scrape time."""

    def __init__(self, families: Sequence[LoopCounter | LoopHistogram]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family()

    def describe(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family(samples=False)


class Metrics:
    """The app's metrics, in a registry of their own."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = LoopCounter("kmeans_requests_total", "Requests by route and status",
                                    ["route", "status"])
        self.latency = LoopHistogram("kmeans_request_latency_seconds", "Request latency",
                                     ["route"], (.0002, .0005, .001, .002, .005, .01, .025,
                                                 .05, .1, .25, 1))
        self.assignments = LoopCounter("kmeans_assignments_total", "Assignments per cluster",
                                       ["model_version", "cluster"])
        self.distance = LoopHistogram("kmeans_distance", "Distance to the assigned centroid",
                                      ["model_version"], (.25, .5, 1, 1.5, 2, 3, 4, 6, 8, 12))
        self.ood = LoopCounter("kmeans_ood_total", "Out-of-distribution assignments",
                               ["model_version"])
        self.stale = LoopCounter("kmeans_stale_features_total",
                                 "Rows whose online features are older than the feature "
                                 "view's TTL")
        self.unknown = LoopCounter("kmeans_unknown_entities_total",
                                   "Ids without online features")
        self.limited = LoopCounter("kmeans_rejected_busy_total",
                                   "Requests refused at the concurrency limit")
        self.closed = LoopCounter("kmeans_connections_closed_total",
                                  "Connections the server closed, by reason (write_timeout: "
                                  "the client read none of its answers in time)", ["reason"])
        r.register(_LoopCollector([self.requests, self.latency, self.assignments,
                                   self.distance, self.ood, self.stale, self.unknown,
                                   self.limited, self.closed]))
        # read by lookups in threads of the pool: prometheus_client's, with its lock
        self.lookup_ids = Counter("kmeans_lookup_ids_total",
                                  "Customer ids read from the online store (a lookup whose "
                                  "client went stops reading)", registry=r)
        self.inflight = Gauge("kmeans_inflight_requests", "Requests in flight", registry=r)
        self.slot = Gauge("kmeans_model_version", "Version loaded in each slot (-1: empty)",
                          ["slot"], registry=r)
        self.weight = Gauge("kmeans_canary_weight_percent", "Share of keys sent to the canary",
                            ["mode"], registry=r)
        self._clusters: dict[int, str] = {}  # a cluster id's label

    def _cluster(self, cluster) -> str:
        c = int(cluster)
        label = self._clusters.get(c)
        if label is None:
            label = self._clusters[c] = str(c)
        return label

    def observe(self, pred: Prediction) -> None:
        if len(pred) == 1 and pred.error is None:  # the common case, kept cheap
            key = (pred.model_version[0],)
            self.assignments.inc((key[0], self._cluster(pred.cluster[0])))
            self.distance.observe(key, float(pred.distance[0]))
            if pred.ood[0]:
                self.ood.inc(key)
            if pred.stale is not None and pred.stale[0]:
                self.stale.inc()
            return
        ok = pred.ok()
        if pred.error is not None:
            self.unknown.inc((), int((~ok).sum()))
        if pred.stale is not None and pred.stale.any():
            self.stale.inc((), int(pred.stale.sum()))
        single = len(pred.versions_used) == 1
        for v in pred.versions_used:
            if single and pred.error is None:  # every row: no masks to copy through
                clusters, dist, ood = pred.cluster, pred.distance, pred.ood
            else:
                mine = ok if single else ok & self._rows_of(pred, v)
                clusters, dist, ood = pred.cluster[mine], pred.distance[mine], pred.ood[mine]
            if len(clusters) <= 256:  # a few hundred rows: Counter's C loop beats np.unique
                for c, n in Tally(clusters.tolist()).items():
                    self.assignments.inc((v, self._cluster(c)), n)
            else:
                for c, n in zip(*np.unique(clusters, return_counts=True), strict=True):
                    self.assignments.inc((v, self._cluster(c)), int(n))
            self.distance.observe_many((v,), dist)
            n_ood = int(np.count_nonzero(ood))
            if n_ood:
                self.ood.inc((v,), n_ood)

    @staticmethod
    def _rows_of(pred: Prediction, version: str) -> np.ndarray:
        """The rows of ``pred`` that ``version`` answered."""
        split = pred.canary_rows
        if split is not None and len(pred.versions_used) == 2:
            return split if version == pred.versions_used[1] else ~split
        return np.asarray(pred.model_version) == version

    def routing(self, describe: dict) -> None:
        for slot in ("stable", "canary"):
            version = describe[slot] or ""
            self.slot.labels(slot).set(int(version) if version.isdigit() else -1)
        for mode in MODES:
            self.weight.labels(mode).set(describe["weight"] if describe["canary"]
                                         and mode == describe["mode"] else 0)
