"""Lloyd iterations over any data source, and the scikit-learn estimator.

A *source* (:class:`Source`) is anything with ``n_rows``, ``n_features``,
``sample_with_weights(n, seed)``, ``sample_d2(centers, scale, seed)`` (k-means|| draws) and
``step(centroids_list) -> list[(sums, counts, inertia)]``; one that can also draw a k-means||
round in one pass offers ``d2_round(centers, ell, seed) -> (rows, cost)``
(:meth:`ArraySource.d2_round`). :class:`ArraySource` runs the kernel in-process;
:class:`pipeline.engine.spark.SparkBlockSource` runs it as one Spark job per iteration. Every
candidate K (and every initialisation) travels in the same pass.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar, Protocol

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from pipeline.engine.bounds import BoundedLloyd
from pipeline.engine.kernel import (
    D2_STREAM,
    SAMPLE_STREAM,
    Stats,
    assign,
    column_major,
    distances,
    draw_d2,
    kmeans_plusplus,
    min_d2,
    partial_stats,
    sample_threshold,
    sq_norms,
    take_sample,
    uniforms,
)

log = logging.getLogger(__name__)
#: Seconds between two progress lines of a fit (none for a fit shorter than this).
PROGRESS_EVERY_S = 5.0

EMPTY_POLICIES = ("farthest", "split")
INIT_METHODS = ("k-means||", "k-means++")

#: The bounds of every parameter, declared once: :class:`KMeans` validates its parameters
#: against them and :func:`fit_sweep` its arguments.
PARAMETER_CONSTRAINTS: dict[str, list[Any]] = {
    "n_clusters": [Interval(Integral, 1, None, closed="left")],
    "init": [StrOptions(set(INIT_METHODS)), "array-like"],
    "n_init": [Interval(Integral, 1, None, closed="left")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="left")],
    "random_state": ["random_state"],
    "empty_cluster": [StrOptions(set(EMPTY_POLICIES))],
}


class Source(Protocol):
    """What the engine iterates over: rows it can sample, draw from and pass over."""

    n_rows: int
    n_features: int

    def sample_with_weights(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """About ``n`` rows drawn uniformly (seeded), with their weights."""
        ...

    def sample_d2(self, centers: np.ndarray, scale: float, seed: Sequence[int]) -> np.ndarray:
        """One k-means|| round: each row kept with probability min(1, scale * w * d²)."""
        ...

    def step(self, centroids: list[np.ndarray]) -> list[Stats]:
        """One pass: per-K sums, counts and inertia for every entry of ``centroids``."""
        ...


class EmptyClusterWarning(UserWarning):
    """A cluster lost all its points during the fit and was relocated."""


class ArraySource:
    """In-process source over an in-memory (or memory-mapped) float32 array.

    ``ids`` are the rows' global positions (default ``0 .. n-1``): every random draw is a
    function of a row's id (:func:`~pipeline.engine.kernel.uniforms`), so this source draws
    the same sample and the same k-means|| candidates as a Spark source over the same rows,
    however those are split into blocks.

    Examples
    --------
    >>> source = ArraySource(np.array([[0, 0], [2, 0]], np.float32))
    >>> source.n_rows, source.step([np.array([[1, 0]], np.float32)])[0][2]
    (2, 2.0)
    """

    def __init__(self, x: np.ndarray, weights: np.ndarray | None = None,
                 ids: np.ndarray | None = None, *, bounds: bool = True):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        if self.x.ndim != 2:
            raise ValueError(f"X should be 2-dimensional, got shape {self.x.shape}")
        if not np.isfinite(self.x).all():
            raise ValueError("X contains NaN or infinity; impute or drop those rows first")
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and self.weights.shape != (len(self.x),):
            raise ValueError(f"sample_weight shape {self.weights.shape} != ({len(self.x)},)")
        self.ids = (np.arange(len(self.x), dtype=np.uint64) if ids is None
                    else np.asarray(ids, dtype=np.uint64))
        if self.ids.shape != (len(self.x),):
            raise ValueError(f"ids shape {self.ids.shape} != ({len(self.x)},)")
        self.n_rows, self.n_features = self.x.shape
        self.bounds = bounds
        self._bounded: BoundedLloyd | None = None
        self._x2: np.ndarray | None = None  # |x|² of the rows, kept for every pass
        self._xf: np.ndarray | None = None  # their column-major copy, for the GEMM
        self._no_column_copy = False  # too big for one

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.sample_with_weights(n, seed)[0]

    def sample_with_weights(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        u = uniforms(self.ids, SAMPLE_STREAM, seed)
        keep = u < sample_threshold(n, self.n_rows)
        w = np.ones(self.n_rows) if self.weights is None else self.weights
        return take_sample([(self.x[keep], w[keep], self.ids[keep], u[keep])], n)

    def step(self, centroids: list[np.ndarray]) -> list[Stats]:
        if self._x2 is None:
            self._x2 = np.empty(self.n_rows, dtype=np.float32)
            sq_norms(self.x, self._x2)
        return partial_stats(self.x, centroids, self.weights, x2=self._x2,
                             xf=self._column_copy())

    def _column_copy(self) -> np.ndarray | None:
        """The rows' column-major copy for the passes' GEMM, made at the first pass when it
        is small enough (:func:`~pipeline.engine.kernel.column_major`)."""
        if self._xf is None and not self._no_column_copy:
            self._xf = column_major(self.x)
            self._no_column_copy = self._xf is None
        return self._xf

    def lloyd_step(self, centroids: list[np.ndarray]) -> list[Stats]:
        """A Lloyd iteration: :meth:`step`'s sums and counts, from Hamerly's bounds kept
        between calls (:mod:`pipeline.engine.bounds`) when ``bounds`` is on and they fit in
        memory; the inertia is then NaN."""
        if not (self.bounds and BoundedLloyd.fits(self.n_rows, [len(c) for c in centroids])):
            return self.step(centroids)
        if self._bounded is None:
            self._bounded = BoundedLloyd(self.x, self.weights)
        return self._bounded.step(centroids)

    def sample_d2(self, centers: np.ndarray, scale: float, seed: Sequence[int]) -> np.ndarray:
        return draw_d2(self.x, centers, scale, uniforms(self.ids, D2_STREAM, *seed),
                       self.weights)

    def d2_round(self, centers: np.ndarray, ell: float,
                 seed: Sequence[int]) -> tuple[np.ndarray, float]:
        """A k-means|| round in one pass: the cost ``sum w * d²`` to ``centers`` and the rows
        :meth:`sample_d2` keeps at scale ``ell / cost``, from the same distances (a source
        whose rows are elsewhere needs a pass for the cost first). Nothing is drawn when the
        cost is 0."""
        d2 = min_d2(self.x, centers, xf=self._column_copy())
        if self.weights is not None:
            d2 *= self.weights
        cost = float(d2.sum())
        if not cost > 0:
            return self.x[:0].copy(), cost
        keep = uniforms(self.ids, D2_STREAM, *seed) < (ell / cost) * d2
        return np.ascontiguousarray(self.x[keep]), cost


def kmeans_parallel(source: Source, k_max: int, *, seed: int, oversampling: float = 2.0,
                    rounds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """k-means|| candidates (Bahmani et al., 2012) and their weights, over any source.

    Each round is one pass that keeps every row with probability ``l * d²(x, C) / cost(C)``,
    ``l = oversampling * k_max``; a last pass weights each candidate by the rows closest to it.
    With the paper's ``l = 2k`` and 5 rounds that is about ``1 + 10 k`` candidates (81 for
    k=8, at least 5 in each of 8 separated blobs of 2M rows); :func:`init_from_candidates`
    reduces them to k centres. Each row's draw is keyed by ``[seed, round]`` and its id (its
    global position), so a seed gives the same candidates in-process and on Spark, with any
    number of blocks.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    >>> candidates, weights = kmeans_parallel(ArraySource(x), 3, seed=0)
    >>> bool(len(candidates) == len(weights) and weights.sum() == 300)
    True
    """
    rng = np.random.default_rng([seed, 0x6B6D])
    first, w = source.sample_with_weights(min(source.n_rows, 1024), seed)
    if w.sum() <= 0:
        raise ValueError("every sampled row has weight 0; sample_weight must have positive mass")
    pick = min(int(np.searchsorted(np.cumsum(w), rng.random() * w.sum())), len(first) - 1)
    centers = np.asarray(first[pick][None, :], dtype=np.float32)
    ell = oversampling * k_max
    own_round = getattr(source, "d2_round", None)
    if own_round is not None:  # one pass per round where the source can (ArraySource)
        for r in range(rounds):
            new, cost = own_round(centers, ell, [seed, r])
            if not cost > 0:
                break
            if len(new):
                centers = np.unique(np.vstack([centers, new]), axis=0)
        (_s, counts, _cost), = source.step([centers])
        return centers, counts
    (_s, counts, cost), = source.step([centers])
    for r in range(rounds):
        if cost <= 0:
            break
        new = source.sample_d2(centers, ell / cost, [seed, r])
        if len(new):
            centers = np.unique(np.vstack([centers, new]), axis=0)
        (_s, counts, cost), = source.step([centers])
    return centers, counts


def init_from_candidates(candidates: np.ndarray, weights: np.ndarray, k: int,
                         rng: np.random.Generator, sample: np.ndarray,
                         sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Reduce weighted k-means|| candidates to k centres: greedy weighted k-means++
    (:func:`~pipeline.engine.kernel.kmeans_plusplus`) on them, then Lloyd on them.

    Candidates of weight 0 (closest to no row) are dropped; if fewer than k are left, rows of
    ``sample`` with positive weight top them up (weight 1 each).
    """
    keep = weights > 0
    cand, w = candidates[keep], weights[keep]
    if len(cand) < k:  # too few distinct candidates: top up from the sample
        pool = (np.arange(len(sample)) if sample_weight is None
                else np.flatnonzero(np.asarray(sample_weight) > 0))
        if len(pool) < k - len(cand):
            pool = np.arange(len(sample))
        extra = sample[rng.choice(pool, k - len(cand), replace=False)]
        cand, w = np.vstack([cand, extra]), np.concatenate([w, np.ones(len(extra))])
    centers = kmeans_plusplus(cand, k, rng, weights=w)
    return refine_by_swaps(cand, w, centers, rng)


#: Most centre swaps tried per initialisation, Lloyd iterations after each, and the most rows
#: the trials run on (a weighted draw of the set when it is larger; the winner then gets a
#: last Lloyd on the whole set).
SWAP_TRIALS, SWAP_LLOYD_ITERS, SWAP_ROWS = 8, 20, 10_000


def refine_by_swaps(points: np.ndarray, weights: np.ndarray | None, centers: np.ndarray,
                    rng: np.random.Generator, *, trials: int = SWAP_TRIALS) -> np.ndarray:
    """Lloyd on an in-memory weighted set (the k-means|| candidates, or the k-means++ sample),
    then single-centre swaps kept while they lower its cost (a local search in the manner of
    Kanungo et al., 2004).

    Seeding in proportion to d² rarely draws a centre in a segment of 0.4% of the rows, so
    Lloyd ends with two centres in the largest segment and the smallest segments merged:
    a local minimum it cannot leave, the segments being far apart. Each trial removes the
    centre whose loss raises the cost least, seeds a replacement by greedy d² sampling, runs
    Lloyd again and keeps the result only if the cost fell. Cheap: it runs on the sample,
    before any pass over the data.
    """
    k = len(centers)
    whole = (points, weights)
    if len(points) > SWAP_ROWS:  # the trials on a draw by weight; a last Lloyd on the whole
        p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        picked = np.sort(rng.choice(len(points), SWAP_ROWS, replace=False, p=p))
        points, weights = points[picked], None
        # each drawn row stands for its share of the set's weight

    def fit(start: np.ndarray, on: tuple = (points, weights)) -> tuple[np.ndarray, float]:
        done = lloyd(ArraySource(*on), {(k, 0): start}, max_iter=SWAP_LLOYD_ITERS, tol=1e-6,
                     empty_cluster="farthest", sample=on[0], sample_weight=on[1],
                     warn=False)[(k, 0)]
        return done.centroids, float(done.inertia)

    best, cost = fit(centers)
    if k < 2 or len(points) <= k:
        return fit(best, whole)[0] if whole[0] is not points else best
    w = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    x = points.astype(np.float64)
    for _ in range(trials):
        d2 = ((x[:, None, :] - best[None, :, :].astype(np.float64)) ** 2).sum(-1) \
            if len(x) * k <= 4_000_000 else None
        if d2 is None:  # a large sample: the loss of each centre from its own rows only
            labels, first = assign(points, best)
            loss = np.bincount(labels, weights=w * first, minlength=k)
        else:
            order = np.argsort(d2, axis=1)
            labels = order[:, 0]
            rows = np.arange(len(x))
            gain = w * (d2[rows, order[:, 1]] - d2[rows, labels])
            loss = np.bincount(labels, weights=gain, minlength=k)
        drop = int(np.argmin(loss))
        kept = np.delete(best, drop, axis=0)
        trial, trial_cost = fit(np.vstack([kept, _greedy_d2_pick(x, w, kept, rng)]))
        if trial_cost < cost * (1 - 1e-6):
            best, cost = trial, trial_cost
    return fit(best, whole)[0] if whole[0] is not points else best


def _greedy_d2_pick(x: np.ndarray, w: np.ndarray, centers: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """One more centre as a greedy k-means++ step: of ``2 + log k`` rows drawn in proportion
    to ``w * d²``, the one that leaves the lowest total ``w * d²``."""
    closest = assign(x.astype(np.float32), centers)[1].astype(np.float64)
    mass = np.cumsum(w * closest)
    if not mass[-1] > 0:
        return x[int(rng.integers(len(x)))][None, :].astype(np.float32)
    ids = np.minimum(np.searchsorted(mass, rng.random(2 + int(np.log(len(centers) + 1)))
                                     * mass[-1]), len(x) - 1)
    totals = [float((w * np.minimum(closest, ((x - x[i]) ** 2).sum(1))).sum()) for i in ids]
    return x[ids[int(np.argmin(totals))]][None, :].astype(np.float32)


@dataclass
class KFit:
    """One fitted K (the best of its initialisations)."""

    k: int
    centroids: np.ndarray
    inertia: float
    counts: np.ndarray
    n_iter: int
    converged: bool
    empty_events: list[dict] = field(default_factory=list)


@dataclass
class SweepResult:
    """Every K of a sweep, and the passes it took."""

    fits: dict[int, KFit]
    n_rows: int
    iterations: int

    def table(self) -> list[dict]:
        return [{"k": f.k, "inertia": f.inertia, "n_iter": f.n_iter, "converged": f.converged,
                 "empty_relocations": len(f.empty_events),
                 "smallest_share": float(f.counts.min() / max(f.counts.sum(), 1))}
                for f in self.fits.values()]


def _relocate(policy: str, centroids: np.ndarray, counts: np.ndarray, empty: np.ndarray,
              sample: np.ndarray, sample_weight: np.ndarray | None) -> list[dict]:
    """Move empty centroids in place; return one event per move (reported in the run).

    Rows of weight 0 are never picked: a centroid on one would stay empty.
    """
    events = []
    labels, dist2 = assign(sample, centroids)
    eligible = (np.ones(len(sample), dtype=bool) if sample_weight is None
                else np.asarray(sample_weight) > 0)
    if not eligible.any():
        eligible[:] = True
    taken: set[int] = set()
    for j in np.flatnonzero(empty):
        donor: int | None = None
        if policy == "split":
            donor = int(np.argmax(counts))
            members = np.flatnonzero((labels == donor) & eligible)
            pool = members if len(members) else np.flatnonzero(eligible)
        else:
            pool = np.flatnonzero(eligible)
        order = pool[np.argsort(-dist2[pool], kind="stable")]
        pick = next((int(i) for i in order if int(i) not in taken), int(order[0]))
        taken.add(pick)
        centroids[j] = sample[pick]
        events.append({"cluster": int(j), "policy": policy, "donor": donor,
                       "distance": float(np.sqrt(dist2[pick]))})
    return events


def lloyd(source: Source, inits: dict[tuple[int, int], np.ndarray], *, max_iter: int,
          tol: float, empty_cluster: str, sample: np.ndarray,
          sample_weight: np.ndarray | None = None,
          warn: bool = True) -> dict[tuple[int, int], KFit]:
    """Run Lloyd's iterations for every (k, init) entry together, one pass per iteration.

    ``sample`` (with ``sample_weight``) is where emptied centroids are moved to, and its
    feature variance scales ``tol``. A last pass scores the final centroids.

    Examples
    --------
    >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
    >>> fits = lloyd(ArraySource(x), {(2, 0): x[[0, 2]]}, max_iter=10, tol=0,
    ...              empty_cluster="farthest", sample=x)
    >>> fits[(2, 0)].centroids.tolist(), fits[(2, 0)].inertia
    ([[0.0, 0.5], [10.0, 10.5]], 1.0)
    """
    centroids = {key: np.array(c, dtype=np.float64) for key, c in inits.items()}
    # a source may iterate with bounds (ArraySource.lloyd_step: the same sums and counts, no
    # inertia); the last pass below is a plain one, which scores the final centroids
    iterate = getattr(source, "lloyd_step", source.step)
    # Convergence as in scikit-learn: squared centroid shift below tol times the mean variance.
    tol_abs = tol * _mean_variance(sample, sample_weight) if len(sample) else tol
    active = list(centroids)
    n_iter = dict.fromkeys(centroids, 0)
    converged = dict.fromkeys(centroids, False)
    events: dict[tuple[int, int], list[dict]] = {key: [] for key in centroids}
    said = time.monotonic()
    for it in range(max_iter):
        if time.monotonic() - said >= PROGRESS_EVERY_S:  # a long fit shows it is moving
            said = time.monotonic()
            log.info("lloyd: iteration %d of at most %d, %d of %d fits still moving", it + 1,
                     max_iter, len(active), len(centroids))
        stats = iterate([centroids[key].astype(np.float32) for key in active])
        still = []
        for key, (sums, counts, _inertia) in zip(active, stats, strict=True):
            new = centroids[key].copy()
            filled = counts > 0
            new[filled] = sums[filled] / counts[filled, None]
            if not filled.all():
                evs = _relocate(empty_cluster, new, counts, ~filled, sample, sample_weight)
                events[key].extend({**e, "iteration": it + 1} for e in evs)
            shift = float(((new - centroids[key]) ** 2).sum())
            centroids[key] = new
            n_iter[key] = it + 1
            if shift <= tol_abs and filled.all():
                converged[key] = True
            else:
                still.append(key)
        active = still
        if not active:
            break
    keys = list(centroids)
    final = source.step([centroids[key].astype(np.float32) for key in keys])
    overflow = [key[0] for key, (_s, _c, inertia) in zip(keys, final, strict=True)
                if not np.isfinite(inertia)]
    if overflow:  # a silent wrong answer otherwise: finite centroids, an infinite inertia
        largest = float(np.abs(sample).max()) if len(sample) else float("nan")
        raise ValueError(
            f"the squared distances overflow float32 (the inertia is not finite for "
            f"k={overflow[0]}): the data holds values as large as {largest:.3g} (float32 "
            f"squares overflow beyond about 1.8e19); scale the features first (standardise "
            f"them, as the platform's preprocessing does)")
    fits = {}
    for key, (_sums, counts, inertia) in zip(keys, final, strict=True):
        fits[key] = KFit(k=key[0], centroids=centroids[key].astype(np.float32), inertia=inertia,
                         counts=counts, n_iter=n_iter[key], converged=converged[key],
                         empty_events=events[key])
        if events[key] and warn:
            warnings.warn(
                f"k={key[0]}: {len(events[key])} empty cluster(s) relocated "
                f"(policy {empty_cluster!r})", EmptyClusterWarning, stacklevel=2)
    return fits


def _mean_variance(sample: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean feature variance of the sample, weighted (so that a row of weight 3 counts as
    three rows) unless every weight is 1."""
    if weights is None or bool((weights == 1).all()) or weights.sum() <= 0:
        return float(np.mean(np.var(sample, axis=0)))
    share = np.asarray(weights, dtype=np.float64) / weights.sum()
    centred = sample - share @ sample
    return float(np.mean(share @ (centred * centred)))


def _distinct_rows(sample: np.ndarray,
                   weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sample's distinct rows in sorted order, each with the summed weight of its copies:
    seeding on them does not depend on the order of the rows, nor on whether a row comes
    as a weight or as repeated copies."""
    rows, inverse = np.unique(sample, axis=0, return_inverse=True)
    return rows, np.bincount(inverse.ravel(), weights=weights, minlength=len(rows))


def _check_sweep(ks: list, init: Any, n_init: int, max_iter: int, tol: float,
                 empty_cluster: str, n_features: int) -> np.ndarray | None:
    """Validate fit_sweep's arguments against :data:`PARAMETER_CONSTRAINTS`; return the init
    array (float32, checked), or None for a method name."""
    if not ks:
        raise ValueError(f"ks should hold at least one K, got {ks}")
    for k in ks:
        validate_parameter_constraints(PARAMETER_CONSTRAINTS, {"n_clusters": k}, "fit_sweep")
    validate_parameter_constraints(PARAMETER_CONSTRAINTS, {
        "init": init, "n_init": n_init, "max_iter": max_iter, "tol": tol,
        "empty_cluster": empty_cluster}, "fit_sweep")
    if isinstance(init, str):
        return None
    arr = np.asarray(init, dtype=np.float32)
    if len(ks) != 1 or arr.shape != (ks[0], n_features):
        raise ValueError(f"init shape {arr.shape} should be ({', '.join(map(str, ks))}, "
                         f"{n_features}): one centre per cluster of the single K")
    if not np.isfinite(arr).all():
        raise ValueError("init contains NaN or infinity; give finite centres")
    return arr


def fit_sweep(source: Source, ks: Iterable[int], *, init: str | np.ndarray = "k-means||",
              n_init: int = 1, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
              empty_cluster: str = "farthest", init_sample: int = 50_000,
              init_rounds: int = 5) -> SweepResult:
    """Fit every K in ``ks`` over ``source`` in one pass per iteration.

    Each K gets ``n_init`` seeded initialisations: ``'k-means||'`` draws candidates over the
    whole data in a few passes shared by every K and reduces them per K; ``'k-means++'`` seeds
    on the distinct rows of a sample of ``init_sample`` rows (weighted by their copies and
    weights, in sorted order, so neither row order nor repetition changes the draws); an
    array gives the centres of the single K (then one initialisation). All initialisations of
    all K iterate together and the one with the lowest inertia per K is kept.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    >>> sorted(fit_sweep(ArraySource(x), [2, 3], seed=1).fits)
    [2, 3]
    """
    ks = list(ks)
    given = _check_sweep(ks, init, n_init, max_iter, tol, empty_cluster, source.n_features)
    ks = sorted({int(k) for k in ks})
    if source.n_rows < max(ks):
        raise ValueError(f"n_samples={source.n_rows} should be >= n_clusters={max(ks)}")
    if given is not None and n_init != 1:
        warnings.warn(f"init is an array: one initialisation instead of n_init={n_init}",
                      RuntimeWarning, stacklevel=2)
    sample, sample_w = source.sample_with_weights(init_sample, seed)
    if len(sample) < max(ks):
        raise ValueError(f"n_samples={len(sample)} (sampled) should be >= n_clusters={max(ks)}")
    parallel = given is None and init == "k-means||"
    if parallel:
        candidates, weights = kmeans_parallel(source, max(ks), seed=seed, rounds=init_rounds)
    elif given is None:
        distinct, distinct_w = _distinct_rows(sample, sample_w)
    inits = {}
    for k in ks:
        if given is not None:
            inits[(k, 0)] = given
            continue
        for i in range(n_init):
            rng = np.random.default_rng([seed, k, i])
            if parallel:
                inits[(k, i)] = init_from_candidates(candidates, weights, k, rng, sample,
                                                      sample_w)
            elif len(distinct) >= k:
                inits[(k, i)] = refine_by_swaps(
                    distinct, distinct_w, kmeans_plusplus(distinct, k, rng, weights=distinct_w),
                    rng)
            else:  # fewer distinct rows than clusters: some centres coincide, then relocate
                inits[(k, i)] = kmeans_plusplus(sample, k, rng, weights=sample_w)
    fits = lloyd(source, inits, max_iter=max_iter, tol=tol, empty_cluster=empty_cluster,
                 sample=sample, sample_weight=sample_w)
    best: dict[int, KFit] = {}
    for (k, _i), fit in fits.items():
        if k not in best or fit.inertia < best[k].inertia:
            best[k] = fit
    return SweepResult(fits=best, n_rows=source.n_rows,
                       iterations=max(f.n_iter for f in fits.values()))


def _engine_seed(random_state: Any) -> int:
    """The engine's integer seed. An int is the seed itself, so ``KMeans(random_state=s)``
    fits what ``fit_sweep(..., seed=s)`` fits; None or a RandomState draws one."""
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """K-means with the platform's engine, as a scikit-learn estimator.

    Fits in-process on an array, or over a data source such as
    :class:`pipeline.engine.spark.SparkBlockSource` (one Spark job per iteration). Float32
    throughout: the data are converted to float32, the sums are accumulated in float64.

    Parameters
    ----------
    n_clusters : int, default=8
    init : {'k-means||', 'k-means++'} or array-like of shape (n_clusters, n_features), \
default='k-means||'
        k-means|| runs over all the data (one pass per round); k-means++ on a sample of up to
        50,000 rows; an array gives the centres (then one initialisation).
    n_init : int, default=1
        Number of initialisations; the one with the lowest inertia is kept.
    max_iter : int, default=100
    tol : float, default=1e-4
        Relative tolerance on the squared centroid shift (times the mean feature variance).
    random_state : int, RandomState instance or None, default=None
        An int is the engine's seed (the same as ``fit_sweep(..., seed=random_state)``);
        None or a RandomState draws the seed from :func:`sklearn.utils.check_random_state`.
    empty_cluster : {'farthest', 'split'}, default='farthest'
        What happens to a centroid that loses all its points; every move is reported in
        ``empty_events_`` and raises :class:`EmptyClusterWarning`.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), float32
    labels_ : ndarray of shape (n_samples,), int32
        Cluster of each training row; set for array input only (a source's rows stay where
        they are: call :meth:`predict` on the rows you need).
    inertia_ : float
        Weighted sum of squared distances of the training rows to their centroid.
    n_iter_ : int
    converged_ : bool
    cluster_sizes_ : ndarray of shape (n_clusters,), float64
        Weighted row count of each cluster.
    empty_events_ : list of dict
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Set when X is a DataFrame with string column names.

    Notes
    -----
    It passes scikit-learn's estimator checks (``parametrize_with_checks``) with both
    initialisations; expected failures: none
    (``tests/unit/engine/test_estimator_checks.py`` keeps that list, with a reason for any
    entry). A row of weight w counts as w copies of it exactly
    when the seeding sees every row (k-means++ on up to 50,000 rows; k-means|| when every row
    becomes a candidate), and in distribution otherwise: k-means|| keeps each row on its own
    random draw.

    Examples
    --------
    >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=np.float32)
    >>> km = KMeans(2, random_state=0).fit(x)
    >>> sorted(km.labels_.tolist()), km.predict(np.array([[0, 0.5]])).shape, km.score(x)
    ([0, 0, 1, 1], (1,), -1.0)
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = dict(PARAMETER_CONSTRAINTS)

    def __init__(self, n_clusters: int = 8, *, init: str | np.ndarray = "k-means||",
                 n_init: int = 1, max_iter: int = 100, tol: float = 1e-4,
                 random_state: Any = None, empty_cluster: str = "farthest"):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.empty_cluster = empty_cluster

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: None = None, sample_weight: Any = None) -> KMeans:
        """Fit in-process on an array, or over a data source.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a source (anything with ``step``)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the rows of an array. A source carries its weights
            itself (its weight column), so giving them here with a source is an error.

        Returns
        -------
        self
        """
        x: np.ndarray | None = None
        if hasattr(X, "step"):
            if sample_weight is not None:
                raise ValueError(
                    f"sample_weight should be None when X is a data source, got "
                    f"{type(sample_weight).__name__}: a source's weights come from its weight "
                    "column (weight_column= of parquet_spec or dataframe_source)")
            source: Source = X
            self.n_features_in_ = int(source.n_features)
            self.__dict__.pop("feature_names_in_", None)
        else:
            x = validate_data(self, X, dtype=np.float32, order="C")
            weights = (None if sample_weight is None else _check_sample_weight(
                sample_weight, x, dtype=np.float64, ensure_non_negative=True))
            source = ArraySource(x, weights)
        fit = fit_sweep(source, [self.n_clusters], init=self.init, n_init=self.n_init,
                        max_iter=self.max_iter, tol=self.tol,
                        seed=_engine_seed(self.random_state),
                        empty_cluster=self.empty_cluster).fits[self.n_clusters]
        self.cluster_centers_ = fit.centroids
        self.inertia_ = fit.inertia
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        self.cluster_sizes_ = fit.counts
        self.empty_events_ = fit.empty_events
        if x is None:
            self.__dict__.pop("labels_", None)
        else:
            self.labels_ = assign(x, fit.centroids)[0]
        return self

    def fit_predict(self, X: Any, y: None = None, sample_weight: Any = None) -> np.ndarray:
        """Fit on an array and return the cluster of each of its rows (``labels_``).

        Examples
        --------
        >>> x = np.array([[0, 0], [0, 1], [10, 10]], np.float32)
        >>> len(set(KMeans(2, random_state=0).fit_predict(x)[:2]))
        1
        """
        if hasattr(X, "step"):
            raise ValueError("fit_predict needs an array, got a data source: its rows stay "
                             "where they are; call fit(source), then predict on the rows you "
                             "need")
        return self.fit(X, sample_weight=sample_weight).labels_

    def predict(self, X: Any) -> np.ndarray:
        """Nearest centroid of every row (int32), through the engine's float32 kernel."""
        check_is_fitted(self)
        x = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        return assign(x, self.cluster_centers_)[0]

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distance of every row to every centroid, shape (n_samples, n_clusters),
        in the float dtype of X (float32 or float64)."""
        check_is_fitted(self)
        x = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=False)
        return distances(x, self.cluster_centers_)

    def score(self, X: Any, y: None = None, sample_weight: Any = None) -> float:
        """Negative inertia of X (weighted sum of squared distances to the nearest centroid),
        as in scikit-learn: higher is better."""
        check_is_fitted(self)
        x = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        weights = (None if sample_weight is None else _check_sample_weight(
            sample_weight, x, dtype=np.float64, ensure_non_negative=True))
        (_sums, _counts, inertia), = partial_stats(x, [self.cluster_centers_], weights)
        return -inertia

    @property
    def _n_features_out(self) -> int:
        """Number of output columns of transform (``get_feature_names_out``)."""
        return int(self.cluster_centers_.shape[0])

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
