"""Cluster-quality metrics per K, and the rule that chooses K."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_samples,
)

from pipeline.engine.kernel import assign
from pipeline.training.krule import RULES, fit_sample

#: The rule of :mod:`pipeline.training.krule` the sweep applies: the one right most often
#: in the study of benchmarks/KRULE.md.
K_RULE_NAME = "silhouette_or_gap"
K_RULE = " ".join((RULES[K_RULE_NAME].__doc__ or "").split("\n\n")[0].split())


def stratified_sample(labels: np.ndarray, size: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(row indices, weights)``: up to ``size`` rows with every cluster represented. Each
    cluster gets an equal share of the sample (all of its rows when it has fewer: water
    filling), drawn uniformly within it, and each row weighs ``cluster rows / rows drawn`` so
    that weighted means estimate the population's. A segment of 0.2% of the rows, which a
    uniform sample of 4,000 rows would hold about 8 of, keeps up to ``size / k`` rows.

    Examples
    --------
    >>> labels = np.array([0] * 990 + [1] * 10)
    >>> idx, w = stratified_sample(labels, 100, np.random.default_rng(0))
    >>> np.bincount(labels[idx]).tolist(), float(w.sum())
    ([90, 10], 1000.0)
    """
    counts = np.bincount(labels)
    if len(labels) <= size:
        return np.arange(len(labels)), np.ones(len(labels))
    take = np.zeros(len(counts), dtype=np.int64)
    left = size
    while left > 0:
        open_ = np.flatnonzero(take < counts)
        quota = max(1, left // len(open_))
        for c in open_:
            add = int(min(counts[c] - take[c], quota, left))
            take[c] += add
            left -= add
            if left == 0:
                break
    idx = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), take[c],
                                             replace=False))
                          for c in range(len(counts)) if take[c]])
    weights = counts[labels[idx]] / take[labels[idx]]
    return idx, weights.astype(np.float64)


def cluster_metrics(x: np.ndarray, centroids: np.ndarray, *, seed: int = 0,
                    sample_size: int = 4000, n_boot: int = 200, stability_runs: int = 3) -> dict:
    """Cluster quality of ``centroids`` on the holdout ``x``.

    Shares, mean distance, Davies-Bouldin and Calinski-Harabasz on every row of ``x``. The
    silhouette (Euclidean; with a bootstrap 95% interval, and per cluster) and the stability
    (mean adjusted Rand index of refits on bootstrap resamples) on a seeded sample of
    ``sample_size`` rows stratified by cluster (:func:`stratified_sample`): small segments
    keep enough rows to be scored, and the weights keep the means those of the population.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    k = len(centroids)
    labels_all, dist2 = assign(x, centroids)
    present = np.unique(labels_all)
    shares = np.bincount(labels_all, minlength=k) / len(x)
    out: dict[str, Any] = {"k": k, "holdout_rows": len(x),
                           "mean_distance": float(np.sqrt(dist2).mean()),
                           "smallest_share": float(shares.min())}
    if len(present) < 2:
        out.update(sample_rows=min(len(x), sample_size), silhouette=float("nan"),
                   silhouette_lo=float("nan"), silhouette_hi=float("nan"),
                   davies_bouldin=float("nan"), calinski_harabasz=float("nan"),
                   stability=float("nan"), cluster_silhouette=[], smallest_cluster_rows=0)
        return out
    out["davies_bouldin"] = float(davies_bouldin_score(x, labels_all))
    out["calinski_harabasz"] = float(calinski_harabasz_score(x, labels_all))
    idx, weights = stratified_sample(labels_all, sample_size, rng)
    xs, labels = x[idx], labels_all[idx]
    out["sample_rows"] = len(idx)
    in_sample = np.bincount(labels, minlength=k)
    out["smallest_cluster_rows"] = int(in_sample[present].min())
    sil = silhouette_samples(xs, labels, metric="euclidean")
    out["silhouette"] = float(np.average(sil, weights=weights))
    out["cluster_silhouette"] = [float(sil[labels == c].mean()) if in_sample[c] else None
                                 for c in range(k)]  # None: a cluster with no holdout row
    boots = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(sil), len(sil))
        boots[b] = np.average(sil[pick], weights=weights[pick])
    low, high = np.percentile(boots, [2.5, 97.5])
    out["silhouette_lo"], out["silhouette_hi"] = float(low), float(high)
    aris = []
    population = weights / weights.sum()
    for r in range(stability_runs):
        boot_rng = np.random.default_rng([seed, k, r])
        resample = xs[boot_rng.choice(len(xs), len(xs), p=population)]  # population-like
        refit = fit_sample(resample, k, boot_rng)
        aris.append(adjusted_rand_score(labels, assign(xs, refit)[0]))
    out["stability"] = float(np.mean(aris))
    return out


def choose_k(rows: list[dict]) -> tuple[int, str]:
    """Apply :data:`K_RULE` to per-K metric rows (k, silhouette, and gap, gap_sd of
    :func:`pipeline.training.krule.k_figures`): the K and why, in one sentence."""
    return RULES[K_RULE_NAME](rows)
