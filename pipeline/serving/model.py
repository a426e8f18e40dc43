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

Every row is checked before any model scores it, so the one-row compiled path, a small batch
and the vectorised path give the same answer: a row needs at least one known value, and each
value must be finite and lie within its feature's valid range (``FEATURES`` in the settings)
widened by ``range_tolerance`` times that range's width (features the table does not name: the
float32 range). The check is the logged model's own (:class:`~pipeline.model.kmeans_segments.
InputCheck`): the standalone model refuses the same rows with the same message. A row that fails
gets a 400 naming the row and the feature; by ``customer_id``, a per-row error. No non-finite
figure reaches an answer, a metric or the analysis window.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from pipeline.core.settings import FEATURES
from pipeline.model.artifact import Assignment, SegmentModel
from pipeline.model.kmeans_segments import NAMED_ROWS, InputCheck
from pipeline.serving.errors import Conflict, InvalidInput, ModelNotFound, NotReady, brief
from pipeline.serving.kernels import (
    SMALL_BATCH,
    assign,
    id_buckets,
    row_flags,
    row_hash_buckets,
    small_pass,
)
from pipeline.serving.lookup import OnlineRows

log = logging.getLogger(__name__)

BUCKETS = 10_000
MODES = ("canary", "shadow")
#: Ids read from the online store at a time: a lookup whose client went stops between chunks.
LOOKUP_CHUNK = 256


class Abandoned(Exception):
    """Raised in a lookup's worker thread once its request was cancelled (its client went)."""


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

    @cached_property  # read by every request: a routing never changes, it is replaced
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
    features: np.ndarray | None = None  # lookups by id: the online features that were scored
    #: A request split between the stable version and the canary (versions_used, in that
    #: order): the rows the canary answered, so that counting each version's rows needs no
    #: comparison of the per-row version strings.
    canary_rows: np.ndarray | None = None

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
        lat = _finite(np.fromiter(self.latency_ms, float))
        dist = _finite(np.fromiter(self.distance, float))
        ref = _finite(np.fromiter(self.stable_distance, float))
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


def _finite(values: np.ndarray) -> np.ndarray:
    ok = np.isfinite(values)
    return values if ok.all() else values[ok]


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

    def __init__(self, name: str, *, lookup=None, max_batch_rows: int = 10_000,
                 range_tolerance: float = 10.0, max_lookup_ids: int = 1000):
        if not 0 <= range_tolerance < float("inf"):
            raise ValueError(f"range_tolerance={range_tolerance!r} should be a finite number "
                             ">= 0")
        self.name = name
        self.lookup = lookup  # OnlineLookup, or None when no online store is configured
        self.max_batch_rows = max_batch_rows
        self.max_lookup_ids = max_lookup_ids
        self.ids_read: Callable[[int], object] | None = None  # told of each chunk read
        self.range_tolerance = range_tolerance
        self._checks: dict[tuple[str, ...], InputCheck] = {}
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
        self.value_flags(warm, model.feature_names)
        self._small(Slot(model, version), warm, warm=True)
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
                raise InvalidInput(f"slot {brief(slot)} is not known; use 'stable' or 'canary'")
            self.routing = new
        log.info("model %s version %s loaded as %s (k=%d)", self.name, version, slot, model.k)
        return new

    def set_traffic(self, weight: float, mode: str | None = None) -> Routing:
        with self._admin:
            r = self.routing
            mode = mode or r.mode
            if mode not in MODES:
                raise InvalidInput(f"mode {brief(mode)} is not known; use one of {list(MODES)}")
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

    def check_rows(self, n: int, shape: list[int] | None = None) -> None:
        if n == 0:
            raise InvalidInput("the batch is empty; send at least 1 row")
        if n > self.max_batch_rows:
            declared = "" if shape is None else f" (input shape {brief(shape)})"
            raise InvalidInput(f"the batch has {n} rows; at most {self.max_batch_rows} "
                               f"allowed{declared}")

    def check_ids(self, n: int, shape: list[int] | None = None) -> None:
        """Refuse a lookup of more customer ids than ``max_lookup_ids`` (each id is a read of
        the online store, far dearer than scoring a row) or an empty one."""
        if n == 0 or n <= self.max_lookup_ids:
            self.check_rows(n, shape)
        else:
            declared = "" if shape is None else f" (input shape {brief(shape)})"
            raise InvalidInput(f"the request looks up {n} customer ids; at most "
                               f"{self.max_lookup_ids} allowed per request "
                               f"(KMEANS_MAX_LOOKUP_IDS){declared}: split it, or send feature "
                               "vectors")

    def check_shape(self, shape: list[int]) -> None:
        """Refuse a features tensor's declared shape before any array is built from it (Python
        integers: no overflow, whatever the client declares)."""
        names = self.feature_names
        if len(shape) != 2:
            raise InvalidInput(f"features have shape {brief(shape)}; this model takes "
                               f"[n, {len(names)}] in the order {names}")
        rows, width = shape
        if width != len(names):
            raise InvalidInput(f"features have shape {brief(shape)}; this model takes "
                               f"[n, {len(names)}] in the order {names}")
        self.check_rows(rows, shape)

    # ---- the values a row may hold -------------------------------------------------------
    def input_check(self, names: list[str]) -> InputCheck:
        """The check of rows of features ``names``: the settings' valid ranges widened by
        ``range_tolerance`` (built once per feature list)."""
        key = tuple(names)
        found = self._checks.get(key)
        if found is None:
            ranges = {name: (float(spec["min"]), float(spec["max"]))
                      for name, spec in FEATURES.items()}
            found = self._checks[key] = InputCheck(names, ranges, self.range_tolerance)
        return found

    def limits(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The lowest and highest accepted raw value of each feature."""
        check = self.input_check(names)
        return check.lo, check.hi

    def value_flags(self, x: np.ndarray, names: list[str]) -> tuple[np.ndarray, int]:
        """Per row: usable, a value out of range, or no value at all: :meth:`InputCheck.flags`
        in one compiled pass (kernels.row_flags), since it runs before every request."""
        check = self.input_check(names)
        return row_flags(np.ascontiguousarray(x, dtype=np.float64), check.lo, check.hi)

    def value_problem(self, row: np.ndarray, flag: int, names: list[str]) -> str:
        """Why one row cannot be scored, naming the feature, its value and what is accepted."""
        return self.input_check(names).problem(row, flag)

    def check_values(self, x: np.ndarray, names: list[str]) -> None:
        flags, bad = self.value_flags(x, names)
        if bad:
            raise InvalidInput(self.input_check(names).message(x, flags, bad))

    def _assign(self, slot: Slot, x: np.ndarray) -> Assignment:
        """The slot's assignment of rows that passed :meth:`check_values` (:meth:`_finite`)."""
        return self._finite(slot, assign(slot.model, x))

    def _finite(self, slot: Slot, a: Assignment) -> Assignment:
        """``a``, unless a row's distance is not finite (values too far from this model's
        training data for float32): refused, so no such figure reaches an answer, a metric or
        the analysis window."""
        if len(a.distance) == 1:
            finite = math.isfinite(a.distance[0]) and math.isfinite(a.margin[0])
        else:
            finite = bool(np.isfinite(a.distance).all() and np.isfinite(a.margin).all())
        if not finite:
            bad = np.flatnonzero(~(np.isfinite(a.distance) & np.isfinite(a.margin)))
            raise InvalidInput(f"rows {bad[:NAMED_ROWS].tolist()} lie too far from the training "
                               f"data of version {slot.version} to be scored (their distance "
                               "overflows float32)")
        return a

    def _small(self, slot: Slot, x: np.ndarray, *,
               warm: bool = False) -> tuple[Assignment, np.ndarray]:
        """A few rows checked (:meth:`check_values`), hashed for the canary split
        (:func:`bucket`) and assigned by ``slot`` (:meth:`_assign`) in one compiled call,
        :func:`~pipeline.serving.kernels.small_pass`: on the one-row path each call into NumPy
        or a compiled kernel cost more than the row."""
        model = slot.model
        check = self.input_check(model.feature_names)
        pre = model.preprocessor.arrays
        flags, bad, hashed, *answer = small_pass(
            np.ascontiguousarray(x, dtype=np.float64), check.lo, check.hi, pre.log_cols,
            pre.medians, pre.means, pre.stds, model.centroids, model.cluster_ids,
            float(model.ood_threshold), BUCKETS)
        if warm:  # compiled, or loaded from numba's cache, before the model serves
            return Assignment(*answer), hashed
        if bad:
            raise InvalidInput(check.message(x, flags, bad))
        return self._finite(slot, Assignment(*answer)), hashed

    def predict_vectors(self, x: np.ndarray, *, keys: np.ndarray | None = None,
                        version: str | None = None) -> Prediction:
        """Score raw feature rows (NaN = missing). ``keys`` route rows (default: row hash);
        ``version`` pins one loaded version and bypasses the split."""
        routing = self.routing
        stable = routing.stable
        if stable is None:
            raise NotReady(f"model {self.name!r} is not loaded yet")
        names = stable.model.feature_names
        width = len(names)
        if x.ndim != 2 or x.shape[1] != width:
            raise InvalidInput(f"features have shape {list(x.shape)}; this model takes "
                               f"[n, {width}] in the order {names}")
        self.check_rows(len(x))
        hashed = None
        if version is not None:
            self.check_values(x, names)
            return self._pinned(routing, x, str(version))
        if len(x) <= SMALL_BATCH:
            base, hashed = self._small(stable, x)
        else:
            self.check_values(x, names)
            base = self._assign(stable, x)
        n = len(x)
        canary = routing.canary
        if canary is None:
            self._record(stable.version, base.cluster, base.distance)
            return Prediction(base.cluster, base.distance, base.runner_up, base.margin, base.ood,
                              [stable.version] * n, versions_used=(stable.version,))
        # The canary scores the rows routed to it (all rows in shadow mode).
        if routing.mode == "shadow":
            chosen = np.ones(n, dtype=bool)
            n_chosen = n
        else:
            if keys is not None:
                keyed = bucket(keys)
            else:
                keyed = bucket(x) if hashed is None else hashed
            if n == 1:  # a Python comparison: NumPy's would cost more than the row
                n_chosen = int(int(keyed[0]) < routing.threshold)
                chosen = _ONE_ROW  # read only when the canary has some rows but not all
            else:
                chosen = keyed < routing.threshold
                n_chosen = int(np.count_nonzero(chosen))
        if n_chosen == 0:
            self._record(stable.version, base.cluster, base.distance)
            return Prediction(base.cluster, base.distance, base.runner_up, base.margin, base.ood,
                              [stable.version] * n, versions_used=(stable.version,))
        every = n_chosen == n
        ca = self._assign(canary, x if every else x[chosen])
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
                         versions_used=both, canary_rows=chosen)
        for name in ("cluster", "distance", "runner_up", "margin", "ood"):
            getattr(out, name)[chosen] = getattr(ca, name)
        return out

    def _pinned(self, routing: Routing, x: np.ndarray, version: str) -> Prediction:
        slot = next((s for s in (routing.stable, routing.canary) if s and s.version == version),
                    None)
        if slot is None:
            loaded = [s.version for s in (routing.stable, routing.canary) if s]
            raise ModelNotFound(f"version {brief(version)} of {self.name!r} is not loaded; "
                                f"loaded: {loaded}")
        a = self._assign(slot, x)
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
        if len(cluster) == 1 and stable_cluster is None:  # one row: no NumPy calls
            c, d = int(cluster[0]), float(distance[0])
            w.clusters[c] = w.clusters.get(c, 0) + 1
            if math.isfinite(d):
                w.distance.append(d)
            return
        clusters = cluster[:256].tolist() if len(cluster) <= 256 else None
        w.distance.extend(_finite(distance[:256]).tolist())
        if clusters is not None:  # small batches: Counter's C loop beats np.unique
            for c, k in Counter(clusters).items():
                w.clusters[c] = w.clusters.get(c, 0) + k
        else:
            for c, k in zip(*np.unique(cluster, return_counts=True), strict=True):
                w.clusters[int(c)] = w.clusters.get(int(c), 0) + int(k)
        if stable_cluster is not None and stable_distance is not None:
            w.compared += len(cluster)
            w.agreed += int((cluster == stable_cluster).sum())
            w.stable_distance.extend(_finite(stable_distance[:256]).tolist())

    def predict_entities(self, ids: list[int], *, version: str | None = None,
                         stop: threading.Event | None = None) -> Prediction:
        """Score customers by id through the online store. An unknown id, or stored features
        that cannot be scored (no value at all, or a value out of range), is a per-row error;
        only the rows that can be scored reach the model and the analysis window. The store is
        read :data:`LOOKUP_CHUNK` ids at a time; once ``stop`` is set (the request was
        cancelled) the next chunk is not read: :class:`Abandoned`."""
        stable = self._stable()
        self.check_ids(len(ids))
        if self.lookup is None:
            raise NotReady("no Feast online store is configured for lookups by customer_id")
        rows = self._fetch(ids, stop)
        names = stable.model.feature_names
        n = len(ids)
        errors = ["" if ok else f"customer_id {ids[i]} has no online features"
                  for i, ok in enumerate(rows.found.tolist())]
        values = np.asarray(rows.values, dtype=np.float64)
        flags, _ = self.value_flags(values, names)
        for i in np.flatnonzero(rows.found & (flags != 0)).tolist():
            errors[i] = (f"customer_id {ids[i]}'s online features cannot be scored: "
                         f"{self.value_problem(values[i], flags[i], names)}")
        usable = np.array([not e for e in errors], dtype=bool)
        pred = Prediction(np.full(n, -1), np.full(n, np.nan), np.full(n, -1),
                          np.full(n, np.nan), np.zeros(n, dtype=bool),
                          [str(version) if version is not None else stable.version] * n)
        if usable.any():
            every = bool(usable.all())
            keys = np.asarray(ids, dtype=np.int64)
            sub = self.predict_vectors(values if every else values[usable],
                                       keys=keys if every else keys[usable], version=version)
            if every:
                sub.stale = rows.stale
                sub.features = values
                return sub
            for name in ("cluster", "distance", "runner_up", "margin", "ood"):
                getattr(pred, name)[usable] = getattr(sub, name)
            for i, v in zip(np.flatnonzero(usable).tolist(), sub.model_version, strict=True):
                pred.model_version[i] = v
            pred.versions_used = sub.versions_used
        pred.stale = rows.stale
        pred.error = errors
        pred.features = values
        return pred


    def _fetch(self, ids: list[int], stop: threading.Event | None):
        parts = []
        for at in range(0, len(ids), LOOKUP_CHUNK):
            if stop is not None and stop.is_set():
                raise Abandoned(f"the request was cancelled after {at} of {len(ids)} ids")
            chunk = ids[at:at + LOOKUP_CHUNK]
            parts.append(self.lookup.fetch(chunk))
            if self.ids_read is not None:
                self.ids_read(len(chunk))
        if len(parts) == 1:
            return parts[0]
        return OnlineRows(*(np.concatenate([getattr(part, name) for part in parts])
                            for name in ("values", "found", "stale", "age_seconds")))


_ONE_ROW = np.ones(1, dtype=bool)


def bucket(keys: np.ndarray) -> np.ndarray:
    """A stable bucket in [0, 10,000) per key: an integer id, or a row of floats. The same
    key gets the same bucket in every process and replica, whatever batch it comes in."""
    if keys.ndim == 1:
        return id_buckets(np.ascontiguousarray(keys, dtype=np.int64), BUCKETS)
    return row_hash_buckets(np.ascontiguousarray(keys, dtype=np.float64), BUCKETS)
