"""The served model: a stable slot and an optional canary, split per request key.

Routing is sticky: each row's key (its customer id, or a hash of its feature values) falls in a
fixed bucket of 10,000, and rows whose bucket is below the canary's weight go to the canary. The
same customer therefore sees the same model for as long as the weight stays put, and raising
the weight only moves customers from stable to canary, never back and forth.

In ``shadow`` mode both models score every row and only the stable one answers; in ``canary``
mode the canary answers its share. Either way the stable model also scores the canary's rows, so
the rollout controller gets assignment agreement and the distance shift on the same rows.

A swap (load, weight, promote, drop) replaces one immutable :class:`Routing` object, so a
request in flight finishes on the routing it started with and none fails during a reload.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from pipeline.model.artifact import SegmentModel
from pipeline.serving.errors import Conflict, InvalidInput, ModelNotFound, NotReady
from pipeline.serving.kernels import assign, id_buckets, row_hash_buckets

log = logging.getLogger(__name__)

BUCKETS = 10_000
MODES = ("canary", "shadow")


@dataclass(frozen=True)
class Slot:
    model: SegmentModel
    version: str


@dataclass(frozen=True)
class Routing:
    stable: Slot | None = None
    canary: Slot | None = None
    weight: float = 0.0  # percent of keys answered by the canary (canary mode)
    mode: str = "canary"

    @property
    def threshold(self) -> int:
        return int(round(self.weight * BUCKETS / 100)) if self.mode == "canary" else 0

    def describe(self) -> dict:
        return {"stable": self.stable.version if self.stable else None,
                "canary": self.canary.version if self.canary else None,
                "weight": self.weight, "mode": self.mode}


@dataclass
class Prediction:
    cluster: np.ndarray
    distance: np.ndarray  # NaN for rows with an error
    runner_up: np.ndarray
    margin: np.ndarray
    ood: np.ndarray
    model_version: list[str]  # per row
    error: list[str] | None = None  # per row, "" when fine; None when no row failed
    stale: np.ndarray | None = None  # per row, lookups by id only
    versions_used: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.cluster)

    def ok(self) -> np.ndarray:
        if self.error is None:
            return np.ones(len(self), dtype=bool)
        return np.array([not e for e in self.error])

    def rows(self) -> list[dict]:
        out = []
        for i in range(len(self)):
            row: dict[str, object] = {"model_version": self.model_version[i]}
            if self.error and self.error[i]:
                row["error"] = self.error[i]
            else:
                row.update(cluster=int(self.cluster[i]), distance=float(self.distance[i]),
                           runner_up=int(self.runner_up[i]), margin=float(self.margin[i]),
                           ood=bool(self.ood[i]))
            if self.stale is not None:
                row["stale"] = bool(self.stale[i])
            out.append(row)
        return out


class Window:
    """What one model version did since the window opened: the rollout controller's input."""

    def __init__(self, keep: int = 20_000):
        self.requests = 0
        self.errors = 0  # requests that failed on the server side (5xx)
        self.rows = 0
        self.latency_ms: deque[float] = deque(maxlen=keep)
        self.distance: deque[float] = deque(maxlen=keep)
        self.clusters: dict[int, int] = {}
        self.compared = 0  # rows scored by this version and the stable one
        self.agreed = 0
        self.stable_distance: deque[float] = deque(maxlen=keep)  # the stable's, same rows

    def summary(self) -> dict:
        lat = np.fromiter(self.latency_ms, float)
        dist = np.fromiter(self.distance, float)
        ref = np.fromiter(self.stable_distance, float)
        q = _quantile
        total = sum(self.clusters.values())
        return {
            "requests": self.requests, "errors": self.errors, "rows": self.rows,
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "latency_ms": {"p50": q(lat, 50), "p99": q(lat, 99)},
            "distance": {"p50": q(dist, 50), "p90": q(dist, 90), "p99": q(dist, 99)},
            "cluster_share": {str(c): n / total for c, n in sorted(self.clusters.items())},
            "compared_rows": self.compared,
            "agreement": self.agreed / self.compared if self.compared else None,
            "stable_distance_on_same_rows": {"p50": q(ref, 50), "p90": q(ref, 90),
                                             "p99": q(ref, 99)},
        }


def _quantile(values: np.ndarray, percent: float) -> float | None:
    return round(float(np.percentile(values, percent)), 4) if len(values) else None


@dataclass
class Stats:
    windows: dict[str, Window] = field(default_factory=dict)

    def get(self, version: str) -> Window:
        w = self.windows.get(version)
        if w is None:
            w = self.windows[version] = Window()
        return w


class SegmentService:
    """One named model: stable and canary slots, routing, vectorized scoring, lookups by id."""

    def __init__(self, name: str, *, lookup=None, max_batch_rows: int = 10_000):
        self.name = name
        self.lookup = lookup  # OnlineLookup, or None when no online store is configured
        self.max_batch_rows = max_batch_rows
        self.routing = Routing()
        self.stats = Stats()
        self._admin = threading.Lock()  # serializes state changes; reads never take it

    # ---- state ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.routing.stable is not None

    @property
    def feature_names(self) -> list[str]:
        return self._stable().model.feature_names

    def load(self, model: SegmentModel, version: str, slot: str = "stable") -> Routing:
        """Put ``model`` in ``slot`` (stable or canary). A new canary starts at weight 0."""
        version = str(version)
        warm = np.zeros((1, len(model.feature_names)))
        assign(model, warm)  # compile and warm the one-row path before serving
        bucket(warm)
        with self._admin:
            r = self.routing
            if r.stable is not None and model.feature_names != r.stable.model.feature_names:
                raise Conflict(f"version {version} takes features {model.feature_names}, the "
                               f"stable version {r.stable.version} takes "
                               f"{r.stable.model.feature_names}; a canary must take the same")
            if slot == "stable":
                if r.canary is not None and r.canary.version == version:
                    raise Conflict(f"version {version} is the canary; promote it instead")
                new = Routing(Slot(model, version), r.canary, r.weight, r.mode)
            elif slot == "canary":
                if r.stable is None:
                    raise Conflict("load a stable version before a canary")
                if r.stable.version == version:
                    raise Conflict(f"version {version} is already the stable version")
                new = Routing(r.stable, Slot(model, version), 0.0, r.mode)
            else:
                raise InvalidInput(f"slot {slot!r} is not known; use 'stable' or 'canary'")
            self.routing = new
        log.info("model %s version %s loaded as %s (k=%d)", self.name, version, slot, model.k)
        return new

    def set_traffic(self, weight: float, mode: str | None = None) -> Routing:
        with self._admin:
            r = self.routing
            mode = mode or r.mode
            if mode not in MODES:
                raise InvalidInput(f"mode {mode!r} is not known; use one of {list(MODES)}")
            if not 0 <= weight <= 100:
                raise InvalidInput(f"weight {weight} must be a percentage in [0, 100]")
            if r.canary is None and (weight > 0 or mode == "shadow"):
                raise Conflict("no canary is loaded; load one before sending it traffic")
            self.routing = Routing(r.stable, r.canary, float(weight), mode)
            return self.routing

    def promote(self, version: str | None = None) -> Routing:
        """The canary becomes the stable version; the canary slot empties."""
        with self._admin:
            r = self.routing
            if r.canary is None:
                raise Conflict("there is no canary to promote")
            if version is not None and str(version) != r.canary.version:
                raise Conflict(f"the canary is version {r.canary.version}, not {version}")
            self.routing = Routing(r.canary, None, 0.0, "canary")
            log.info("model %s: canary %s promoted over %s", self.name, r.canary.version,
                     r.stable.version if r.stable else None)
            return self.routing

    def drop(self, version: str | None = None) -> Routing:
        """Remove the canary; all traffic goes back to the stable version."""
        with self._admin:
            r = self.routing
            if r.canary is None:
                return r
            if version is not None and str(version) != r.canary.version:
                raise Conflict(f"the canary is version {r.canary.version}, not {version}")
            self.routing = Routing(r.stable, None, 0.0, "canary")
            log.info("model %s: canary %s dropped", self.name, r.canary.version)
            return self.routing

    def open_window(self) -> dict:
        """Each version's figures since the last call; starts a new window."""
        old, self.stats = self.stats, Stats()
        return {v: w.summary() for v, w in old.windows.items()}

    # ---- scoring -------------------------------------------------------------------------
    def _stable(self) -> Slot:
        stable = self.routing.stable
        if stable is None:
            raise NotReady(f"model {self.name!r} is not loaded yet")
        return stable

    def check_rows(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("the batch is empty; send at least 1 row")
        if n > self.max_batch_rows:
            raise InvalidInput(f"the batch has {n} rows; at most {self.max_batch_rows} allowed")

    def predict_vectors(self, x: np.ndarray, *, keys: np.ndarray | None = None,
                        version: str | None = None) -> Prediction:
        """Score raw feature rows (NaN = missing). ``keys`` route rows (default: row hash);
        ``version`` pins one loaded version and bypasses the split."""
        routing = self.routing
        stable = routing.stable
        if stable is None:
            raise NotReady(f"model {self.name!r} is not loaded yet")
        width = len(stable.model.feature_names)
        if x.ndim != 2 or x.shape[1] != width:
            raise InvalidInput(f"features have shape {list(x.shape)}; this model takes "
                               f"[n, {width}] in the order {stable.model.feature_names}")
        self.check_rows(len(x))
        if np.isinf(x).any():
            bad = sorted({int(i) for i in np.argwhere(np.isinf(x))[:, 0]})[:5]
            raise InvalidInput(f"features contain infinity in rows {bad}; values must be finite "
                               "numbers (null marks a missing value)")
        if version is not None:
            return self._pinned(routing, x, str(version))
        base = assign(stable.model, x)
        n = len(x)
        canary = routing.canary
        if canary is None:
            self._record(stable.version, base.cluster, base.distance)
            return Prediction(base.cluster, base.distance, base.runner_up, base.margin, base.ood,
                              [stable.version] * n, versions_used=(stable.version,))
        # The canary scores the rows routed to it (all rows in shadow mode).
        if routing.mode == "shadow":
            chosen = np.ones(n, dtype=bool)
        else:
            chosen = bucket(x if keys is None else keys) < routing.threshold
        n_chosen = int(chosen.sum())
        if n_chosen == 0:
            self._record(stable.version, base.cluster, base.distance)
            return Prediction(base.cluster, base.distance, base.runner_up, base.margin, base.ood,
                              [stable.version] * n, versions_used=(stable.version,))
        every = n_chosen == n
        ca = assign(canary.model, x if every else x[chosen])
        ref_cluster = base.cluster if every else base.cluster[chosen]
        ref_distance = base.distance if every else base.distance[chosen]
        self._record(canary.version, ca.cluster, ca.distance, ref_cluster, ref_distance)
        both = (stable.version, canary.version)
        if routing.mode == "shadow":
            self._record(stable.version, base.cluster, base.distance)
            return Prediction(base.cluster, base.distance, base.runner_up, base.margin, base.ood,
                              [stable.version] * n, versions_used=both)
        if every:  # the canary answers the whole request
            return Prediction(ca.cluster, ca.distance, ca.runner_up, ca.margin, ca.ood,
                              [canary.version] * n, versions_used=(canary.version,))
        keep = ~chosen
        self._record(stable.version, base.cluster[keep], base.distance[keep])
        out = Prediction(base.cluster.copy(), base.distance.copy(), base.runner_up.copy(),
                         base.margin.copy(), base.ood.copy(),
                         np.where(chosen, canary.version, stable.version).tolist(),
                         versions_used=both)
        for name in ("cluster", "distance", "runner_up", "margin", "ood"):
            getattr(out, name)[chosen] = getattr(ca, name)
        return out

    def _pinned(self, routing: Routing, x: np.ndarray, version: str) -> Prediction:
        slot = next((s for s in (routing.stable, routing.canary) if s and s.version == version),
                    None)
        if slot is None:
            loaded = [s.version for s in (routing.stable, routing.canary) if s]
            raise ModelNotFound(f"version {version!r} of {self.name!r} is not loaded; "
                                f"loaded: {loaded}")
        a = assign(slot.model, x)
        self._record(version, a.cluster, a.distance)
        return Prediction(a.cluster, a.distance, a.runner_up, a.margin, a.ood,
                          [version] * len(x), versions_used=(version,))

    def _record(self, version: str, cluster: np.ndarray, distance: np.ndarray,
                stable_cluster: np.ndarray | None = None,
                stable_distance: np.ndarray | None = None) -> None:
        """Count what ``version`` assigned (and, for a canary, how it compares with the stable
        version's assignment of the same rows) in the open analysis window."""
        if not len(cluster):
            return
        w = self.stats.get(version)
        w.rows += len(cluster)
        clusters = cluster[:256].tolist() if len(cluster) <= 256 else None
        w.distance.extend(distance[:256].tolist())
        if clusters is not None:  # small batches: plain Python beats np.unique
            for c in clusters:
                w.clusters[c] = w.clusters.get(c, 0) + 1
        else:
            for c, k in zip(*np.unique(cluster, return_counts=True), strict=True):
                w.clusters[int(c)] = w.clusters.get(int(c), 0) + int(k)
        if stable_cluster is not None and stable_distance is not None:
            w.compared += len(cluster)
            w.agreed += int((cluster == stable_cluster).sum())
            w.stable_distance.extend(stable_distance[:256].tolist())

    def predict_entities(self, ids: list[int], *, version: str | None = None) -> Prediction:
        """Score customers by id through the online store; an unknown id is a per-row error."""
        self._stable()
        self.check_rows(len(ids))
        if self.lookup is None:
            raise NotReady("no Feast online store is configured for lookups by customer_id")
        rows = self.lookup.fetch(ids)
        keys = np.asarray(ids, dtype=np.int64)
        x = np.where(rows.found[:, None], rows.values, 0.0)
        if rows.found.any():
            pred = self.predict_vectors(x, keys=keys, version=version)
        else:  # nothing to score: every row is an error
            n = len(ids)
            pred = Prediction(np.full(n, -1), np.full(n, np.nan), np.full(n, -1),
                              np.full(n, np.nan), np.zeros(n, dtype=bool),
                              [self._stable().version] * n)
        pred.stale = rows.stale
        if not rows.found.all():
            pred.error = ["" if ok else f"customer_id {ids[i]} has no online features"
                          for i, ok in enumerate(rows.found)]
            missing = ~rows.found
            pred.cluster[missing] = pred.runner_up[missing] = -1
            pred.distance[missing] = pred.margin[missing] = np.nan
            pred.ood[missing] = False
        return pred


def bucket(keys: np.ndarray) -> np.ndarray:
    """A stable bucket in [0, 10,000) per key: an integer id, or a row of floats. The same
    key gets the same bucket in every process and replica, whatever batch it comes in."""
    if keys.ndim == 1:
        return id_buckets(np.ascontiguousarray(keys, dtype=np.int64), BUCKETS)
    return row_hash_buckets(np.ascontiguousarray(keys, dtype=np.float64), BUCKETS)
