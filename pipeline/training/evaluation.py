"""Cluster-quality metrics per K, and the rule that chooses K."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_samples,
)

from pipeline.engine.estimator import ArraySource, lloyd
from pipeline.engine.kernel import assign, kmeans_plusplus

K_RULE = ("highest sampled silhouette; among K whose silhouette is at or above the lower bound of "
          "the best K's 95% bootstrap interval, the smallest K")


def cluster_metrics(x: np.ndarray, centroids: np.ndarray, *, seed: int = 0,
                    sample_size: int = 4000, n_boot: int = 200, stability_runs: int = 3) -> dict:
    """Silhouette (Euclidean) with a bootstrap 95% interval, Davies-Bouldin, Calinski-Harabasz,
    stability (mean adjusted Rand index of refits on bootstrap resamples) and cluster shares, all
    on a seeded sample of ``x``.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    if len(x) > sample_size:
        x = x[np.sort(rng.choice(len(x), sample_size, replace=False))]
    k = len(centroids)
    labels, dist2 = assign(x, centroids)
    present = np.unique(labels)
    out = {"k": k, "sample_rows": len(x), "mean_distance": float(np.sqrt(dist2).mean())}
    shares = np.bincount(labels, minlength=k) / len(x)
    out["smallest_share"] = float(shares.min())
    if len(present) < 2:
        out.update(silhouette=float("nan"), silhouette_lo=float("nan"),
                   silhouette_hi=float("nan"), davies_bouldin=float("nan"),
                   calinski_harabasz=float("nan"), stability=float("nan"))
        return out
    sil = silhouette_samples(x, labels, metric="euclidean")
    boots = np.array([sil[rng.integers(0, len(sil), len(sil))].mean() for _ in range(n_boot)])
    out["silhouette"] = float(sil.mean())
    low, high = np.percentile(boots, [2.5, 97.5])
    out["silhouette_lo"], out["silhouette_hi"] = float(low), float(high)
    out["davies_bouldin"] = float(davies_bouldin_score(x, labels))
    out["calinski_harabasz"] = float(calinski_harabasz_score(x, labels))
    aris = []
    for r in range(stability_runs):
        boot_rng = np.random.default_rng([seed, k, r])
        resample = x[boot_rng.integers(0, len(x), len(x))]
        refit = _quick_lloyd(resample, kmeans_plusplus(resample, k, boot_rng))
        aris.append(adjusted_rand_score(labels, assign(x, refit)[0]))
    out["stability"] = float(np.mean(aris))
    return out


def _quick_lloyd(x: np.ndarray, centroids: np.ndarray, iters: int = 30) -> np.ndarray:
    """Lloyd from ``centroids`` on an in-memory sample (a stability refit)."""
    fits = lloyd(ArraySource(x), {(len(centroids), 0): centroids}, max_iter=iters, tol=1e-4,
                 empty_cluster="farthest", sample=x)
    return next(iter(fits.values())).centroids


def choose_k(rows: list[dict]) -> int:
    """Apply :data:`K_RULE` to per-K metric rows (each with k, silhouette, silhouette_lo)."""
    scored = [r for r in rows if np.isfinite(r.get("silhouette", np.nan))]
    if not scored:
        raise ValueError("no K has a finite silhouette; cannot choose K")
    best = max(scored, key=lambda r: r["silhouette"])
    close = [r for r in scored if r["silhouette"] >= best["silhouette_lo"]]
    return int(min(close, key=lambda r: r["k"])["k"])
