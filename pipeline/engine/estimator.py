"""Lloyd iterations over any data source, and the scikit-learn style estimator.

A *source* is anything with ``n_rows``, ``n_features``, ``sample(n, seed)``,
``sample_with_weights(n, seed)``,
``sample_d2(centers, scale, seed)`` (k-means|| draws) and
``step(centroids_list) -> list[(sums, counts, inertia)]``. :class:`ArraySource` runs the kernel
in-process; :class:`pipeline.engine.spark.SparkBlockSource` runs it as one Spark job per
iteration. Every candidate K (and every initialisation) travels in the same pass.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from pipeline.engine.kernel import assign, kmeans_plusplus, partial_stats

log = logging.getLogger(__name__)

EMPTY_POLICIES = ("farthest", "split")
INIT_METHODS = ("k-means||", "k-means++")


class EmptyClusterWarning(UserWarning):
    """A cluster lost all its points during the fit and was relocated."""


class ArraySource:
    """In-process source over an in-memory (or memory-mapped) float32 array."""

    def __init__(self, x: np.ndarray, weights: np.ndarray | None = None):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        if self.x.ndim != 2:
            raise ValueError(f"X should be 2-dimensional, got shape {self.x.shape}")
        if not np.isfinite(self.x).all():
            raise ValueError("X contains NaN or infinity; impute or drop those rows first")
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and self.weights.shape != (len(self.x),):
            raise ValueError(f"sample_weight shape {self.weights.shape} != ({len(self.x)},)")
        self.n_rows, self.n_features = self.x.shape

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.sample_with_weights(n, seed)[0]

    def sample_with_weights(self, n: int, seed: int):
        idx = (np.arange(self.n_rows) if n >= self.n_rows else
               np.sort(np.random.default_rng(seed).choice(self.n_rows, n, replace=False)))
        w = np.ones(len(idx)) if self.weights is None else self.weights[idx]
        return self.x[idx], w

    def step(self, centroids: list[np.ndarray]):
        return partial_stats(self.x, centroids, self.weights)

    def sample_d2(self, centers: np.ndarray, scale: float, seed) -> np.ndarray:
        return draw_d2(self.x, centers, scale, np.random.default_rng(seed), self.weights)


def draw_d2(x: np.ndarray, centers: np.ndarray, scale: float, rng,
            weights: np.ndarray | None = None) -> np.ndarray:
    """Keep each row with probability min(1, scale * w * d²(row, centers)), a k-means|| round;
    ``scale`` is l / cost with the weighted cost, so about l rows are kept whatever the weights
    sum to, and rows of weight 0 never are."""
    d2 = assign(x, centers)[1].astype(np.float64)
    if weights is not None:
        d2 *= np.asarray(weights, dtype=np.float64)
    return np.asarray(x[rng.random(len(x)) < scale * d2], dtype=np.float32)


def kmeans_parallel(source, k_max: int, *, seed: int, oversampling: float = 2.0,
                    rounds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """k-means|| candidates (Bahmani et al., 2012) and their weights, over any source.

    Each round is one pass that keeps every row with probability ``l * d²(x, C) / cost(C)``,
    ``l = oversampling * k_max``; a last pass weights each candidate by the rows closest to it.
    The draws are seeded per round (and per partition on Spark), so a seed and a partitioning
    give the same candidates.
    """
    rng = np.random.default_rng([seed, 0x6B6D])
    first, w = source.sample_with_weights(min(source.n_rows, 1024), seed)
    if w.sum() <= 0:
        raise ValueError("every sampled row has weight 0; sample_weight must have positive mass")
    pick = min(int(np.searchsorted(np.cumsum(w), rng.random() * w.sum())), len(first) - 1)
    centers = np.asarray(first[pick][None, :], dtype=np.float32)
    (_s, counts, cost), = source.step([centers])
    ell = oversampling * k_max
    for r in range(rounds):
        if cost <= 0:
            break
        new = source.sample_d2(centers, ell / cost, [seed, r])
        if len(new):
            centers = np.unique(np.vstack([centers, new]), axis=0)
        (_s, counts, cost), = source.step([centers])
    return centers, counts


def init_from_candidates(candidates: np.ndarray, weights: np.ndarray, k: int, rng,
                         sample: np.ndarray) -> np.ndarray:
    """Reduce weighted k-means|| candidates to k centres: weighted k-means++ then Lloyd."""
    keep = weights > 0
    cand, w = candidates[keep], weights[keep]
    if len(cand) < k:  # too few distinct candidates: top up from the sample
        extra = sample[rng.choice(len(sample), k - len(cand), replace=False)]
        cand, w = np.vstack([cand, extra]), np.concatenate([w, np.ones(len(extra))])
    centers = kmeans_plusplus(cand, k, rng, weights=w)
    fits = lloyd(ArraySource(cand, w), {(k, 0): centers}, max_iter=30, tol=1e-6,
                 empty_cluster="farthest", sample=cand, warn=False)
    return fits[(k, 0)].centroids


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
    fits: dict[int, KFit]
    n_rows: int
    iterations: int

    def table(self) -> list[dict]:
        return [{"k": f.k, "inertia": f.inertia, "n_iter": f.n_iter, "converged": f.converged,
                 "empty_relocations": len(f.empty_events),
                 "smallest_share": float(f.counts.min() / max(f.counts.sum(), 1))}
                for f in self.fits.values()]


def _check_params(ks, n_init, max_iter, tol, empty_cluster):
    if not ks or min(ks) < 1:
        raise ValueError(f"n_clusters should be >= 1, got {list(ks)}")
    if n_init < 1:
        raise ValueError(f"n_init={n_init} should be >= 1")
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} should be >= 1")
    if tol < 0:
        raise ValueError(f"tol={tol} should be >= 0")
    if empty_cluster not in EMPTY_POLICIES:
        raise ValueError(f"empty_cluster={empty_cluster!r} should be one of {EMPTY_POLICIES}")


def _relocate(policy: str, centroids: np.ndarray, counts: np.ndarray, empty: np.ndarray,
              sample: np.ndarray) -> list[dict]:
    """Move empty centroids in place; return one event per move (reported in the run)."""
    events = []
    labels, dist2 = assign(sample, centroids)
    taken: set[int] = set()
    for j in np.flatnonzero(empty):
        if policy == "split":
            donor = int(np.argmax(counts))
            members = np.flatnonzero(labels == donor)
            pool = members if len(members) else np.arange(len(sample))
        else:
            donor = None
            pool = np.arange(len(sample))
        order = pool[np.argsort(-dist2[pool], kind="stable")]
        pick = next((int(i) for i in order if int(i) not in taken), int(order[0]))
        taken.add(pick)
        centroids[j] = sample[pick]
        events.append({"cluster": int(j), "policy": policy, "donor": donor,
                       "distance": float(np.sqrt(dist2[pick]))})
    return events


def lloyd(source, inits: dict[tuple[int, int], np.ndarray], *, max_iter: int, tol: float,
          empty_cluster: str, sample: np.ndarray,
          warn: bool = True) -> dict[tuple[int, int], KFit]:
    """Run Lloyd's iterations for every (k, init) entry together, one pass per iteration."""
    centroids = {key: np.array(c, dtype=np.float64) for key, c in inits.items()}
    # Convergence as in scikit-learn: squared centroid shift below tol times the mean variance.
    tol_abs = tol * float(np.mean(np.var(sample, axis=0))) if len(sample) else tol
    active = list(centroids)
    n_iter = dict.fromkeys(centroids, 0)
    converged = dict.fromkeys(centroids, False)
    events: dict = {key: [] for key in centroids}
    for it in range(max_iter):
        stats = source.step([centroids[key].astype(np.float32) for key in active])
        still = []
        for key, (sums, counts, _inertia) in zip(active, stats, strict=True):
            new = centroids[key].copy()
            filled = counts > 0
            new[filled] = sums[filled] / counts[filled, None]
            if not filled.all():
                evs = _relocate(empty_cluster, new, counts, ~filled, sample)
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


def fit_sweep(source, ks, *, init="k-means||", n_init: int = 1, max_iter: int = 100,
              tol: float = 1e-4, seed: int = 0, empty_cluster: str = "farthest",
              init_sample: int = 50_000, init_rounds: int = 5) -> SweepResult:
    """Fit every K in ``ks`` over ``source`` in one pass per iteration.

    Each K gets ``n_init`` seeded initialisations: ``'k-means||'`` draws candidates over the
    whole data in a few passes shared by every K and reduces them per K; ``'k-means++'`` seeds
    on a sample of ``init_sample`` rows; an array gives the centres. All initialisations of all
    K iterate together and the one with the lowest inertia per K is kept.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    >>> sorted(fit_sweep(ArraySource(x), [2, 3], seed=1).fits)
    [2, 3]
    """
    ks = sorted(set(int(k) for k in ks))
    _check_params(ks, n_init, max_iter, tol, empty_cluster)
    sample = source.sample(init_sample, seed)
    if len(sample) < max(ks):
        raise ValueError(f"n_samples={len(sample)} should be >= n_clusters={max(ks)}")
    if isinstance(init, str) and init not in INIT_METHODS:
        raise ValueError(f"init={init!r} should be one of {INIT_METHODS} or an array")
    if isinstance(init, str) and init == "k-means||":
        candidates, weights = kmeans_parallel(source, max(ks), seed=seed, rounds=init_rounds)
    inits = {}
    for k in ks:
        for i in range(n_init):
            rng = np.random.default_rng([seed, k, i])
            if isinstance(init, str) and init == "k-means||":
                inits[(k, i)] = init_from_candidates(candidates, weights, k, rng, sample)
            elif isinstance(init, str):
                inits[(k, i)] = kmeans_plusplus(sample, k, rng)
            else:
                arr = np.asarray(init, dtype=np.float32)
                if arr.shape != (k, source.n_features):
                    raise ValueError(f"init shape {arr.shape} should be ({k}, {source.n_features})")
                inits[(k, i)] = arr
    fits = lloyd(source, inits, max_iter=max_iter, tol=tol, empty_cluster=empty_cluster,
                 sample=sample)
    best = {}
    for (k, _i), fit in fits.items():
        if k not in best or fit.inertia < best[k].inertia:
            best[k] = fit
    return SweepResult(fits=best, n_rows=source.n_rows,
                       iterations=max(f.n_iter for f in fits.values()))


class KMeans:
    """K-means with the platform's engine, in scikit-learn's style.

    Parameters
    ----------
    n_clusters : int, default=8
    init : {'k-means||', 'k-means++'} or ndarray of shape (n_clusters, n_features), \
default='k-means||'
        k-means|| runs over all the data (one pass per round); k-means++ on a sample.
    n_init : int, default=1
        Number of initialisations; the one with the lowest inertia is kept.
    max_iter : int, default=100
    tol : float, default=1e-4
        Relative tolerance on the squared centroid shift (times the mean feature variance).
    seed : int, default=0
    empty_cluster : {'farthest', 'split'}, default='farthest'
        What happens to a centroid that loses all its points; every move is reported in
        ``empty_events_`` and raises :class:`EmptyClusterWarning`.

    Examples
    --------
    >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=np.float32)
    >>> KMeans(2, seed=0).fit(x).predict(np.array([[0, 0.5]], np.float32)).shape
    (1,)
    """

    def __init__(self, n_clusters: int = 8, *, init="k-means||", n_init: int = 1,
                 max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                 empty_cluster: str = "farthest"):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.empty_cluster = empty_cluster

    def fit(self, X, sample_weight=None) -> KMeans:
        """Fit in-process on an array, or over a source (e.g. a Spark block source)."""
        source = X if hasattr(X, "step") else ArraySource(X, sample_weight)
        fit = fit_sweep(source, [self.n_clusters], init=self.init, n_init=self.n_init,
                        max_iter=self.max_iter, tol=self.tol, seed=self.seed,
                        empty_cluster=self.empty_cluster).fits[self.n_clusters]
        self.cluster_centers_ = fit.centroids
        self.inertia_ = fit.inertia
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        self.cluster_sizes_ = fit.counts
        self.empty_events_ = fit.empty_events
        self.n_features_in_ = source.n_features
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("this KMeans instance is not fitted yet; call fit first")
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {x.shape}; expected (n, {self.n_features_in_})")
        return assign(x, self.cluster_centers_)[0]
