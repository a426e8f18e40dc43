"""The shared kernel: fused squared distance and argmin through BLAS, float64 accumulators.

Both the in-process path and every Spark task call :func:`partial_stats`, so the two paths add
up the same numbers and can be compared exactly.
"""

from __future__ import annotations

import numpy as np

CHUNK_ROWS = 32_768


def assign(x: np.ndarray, centroids: np.ndarray, *, chunk: int = CHUNK_ROWS):
    """Nearest centroid of every row.

    Parameters
    ----------
    x : ndarray of shape (n, d), float32
    centroids : ndarray of shape (k, d)

    Returns
    -------
    labels : ndarray of shape (n,), int32
    dist2 : ndarray of shape (n,), float32, squared Euclidean distance to that centroid

    Examples
    --------
    >>> assign(np.array([[0.0, 0.0], [4.0, 4.0]], np.float32), np.array([[0, 0], [5, 5.0]]))[0]
    array([0, 1], dtype=int32)
    """
    x = np.asarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    c2 = np.einsum("ij,ij->i", c, c)
    n = len(x)
    labels = np.empty(n, dtype=np.int32)
    dist2 = np.empty(n, dtype=np.float32)
    for lo in range(0, n, chunk):
        xb = x[lo:lo + chunk]
        d = xb @ c.T
        d *= -2.0
        d += c2
        lab = np.argmin(d, axis=1)
        best = d[np.arange(len(xb)), lab] + np.einsum("ij,ij->i", xb, xb)
        labels[lo:lo + chunk] = lab
        dist2[lo:lo + chunk] = np.maximum(best, 0.0)
    return labels, dist2


def partial_stats(x: np.ndarray, centroids_per_k: list[np.ndarray],
                  weights: np.ndarray | None = None):
    """Per-K sums, counts and inertia of one block of rows.

    Returns a list with one ``(sums (k, d) float64, counts (k,) float64, inertia float)`` per
    entry of ``centroids_per_k``; adding the tuples of all blocks gives the whole data's.
    """
    out = []
    for centroids in centroids_per_k:
        k, d = centroids.shape
        sums = np.zeros((k, d), dtype=np.float64)
        counts = np.zeros(k, dtype=np.float64)
        inertia = 0.0
        for lo in range(0, len(x), CHUNK_ROWS):
            xb = np.asarray(x[lo:lo + CHUNK_ROWS], dtype=np.float32)
            wb = None if weights is None else np.asarray(weights[lo:lo + CHUNK_ROWS], np.float64)
            labels, dist2 = assign(xb, centroids)
            counts += np.bincount(labels, weights=wb, minlength=k)
            for j in range(d):
                col = xb[:, j].astype(np.float64)
                sums[:, j] += np.bincount(labels, weights=col if wb is None else col * wb,
                                          minlength=k)
            inertia += float(np.dot(dist2.astype(np.float64), wb) if wb is not None
                             else dist2.sum(dtype=np.float64))
        out.append((sums, counts, inertia))
    return out


def add_stats(a, b):
    """Add two results of :func:`partial_stats` element-wise."""
    return [(sa + sb, ca + cb, ia + ib) for (sa, ca, ia), (sb, cb, ib) in zip(a, b, strict=True)]


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy-free k-means++ seeding (Arthur and Vassilvitskii, 2007) on an in-memory sample."""
    n = len(x)
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}")
    x = np.asarray(x, dtype=np.float32)
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    centers[0] = x[rng.integers(n)]
    closest = assign(x, centers[:1])[1].astype(np.float64)
    for i in range(1, k):
        total = closest.sum()
        idx = rng.integers(n) if total <= 0 else int(
            np.searchsorted(np.cumsum(closest), rng.random() * total))
        centers[i] = x[min(idx, n - 1)]
        closest = np.minimum(closest, assign(x, centers[i:i + 1])[1])
    return centers
