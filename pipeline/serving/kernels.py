"""Compiled kernels of the server's hot path (numba, no GIL): the one-row scoring pass and the
canary split's stable buckets.

:func:`score_small` is a second, compiled copy of the model's arithmetic, kept because for the
batches a server sees (up to :data:`SMALL_BATCH` rows) the fixed cost of NumPy calls and their
temporaries, not arithmetic, is the price (one pass, no BLAS). It must give what the model's
own NumPy path gives
(:meth:`~pipeline.model.kmeans_segments.Preprocessor.transform` then
:meth:`~pipeline.model.kmeans_segments.SegmentModel.assign_scaled`): the same steps in the same
order, squared distances summed feature by feature in float64. A property test
(``tests/unit/model/test_preprocessing_property.py``) checks the two against each other on
random input.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.model import kmeans_segments
from pipeline.model.artifact import Assignment, SegmentModel

#: Up to this many rows the server scores with the compiled pass. It beat the NumPy path at
#: every size measured (2026-12-08, AMD EPYC, one thread; ``SegmentModel.assign`` against
#: :func:`assign_small`): with K=8 and 12 features 12x at 16 rows, 6x at 100 (19 against
#: 114 us), 4x at 256; with K=50 and 32 features still 1.6x at 4,096 rows; 1.5x at 256 rows
#: with K=256. It was 16 until then, so 100-row requests paid for the NumPy path.
SMALL_BATCH = 4096


def assign(model: SegmentModel, raw: np.ndarray) -> Assignment:
    """What the server answers for raw feature rows (NaN = missing): the compiled pass for a
    small batch, :meth:`SegmentModel.assign` otherwise."""
    if raw.ndim == 2 and len(raw) <= SMALL_BATCH and raw.shape[1] == len(model.feature_names):
        return assign_small(model, raw)
    return model.assign(raw)


def assign_small(model: SegmentModel, raw: np.ndarray) -> Assignment:
    """:meth:`SegmentModel.assign` of a few raw rows, in one compiled call (the answer's
    arrays too: five NumPy operations on one-element arrays cost more than scoring the row)."""
    pre = model.preprocessor.arrays
    return Assignment(*answer_small(np.ascontiguousarray(raw, dtype=np.float64), pre.log_cols,
                                    pre.medians, pre.means, pre.stds, model.centroids,
                                    model.cluster_ids, float(model.ood_threshold)))


@njit(nogil=True, cache=True)
def answer_small(raw, log_cols, medians, means, stds, centroids, ids, ood_threshold):
    """:func:`score_small`'s rows as :meth:`SegmentModel.assign_scaled` answers them: cluster
    id, distance, runner-up id, margin and out-of-distribution flag (square roots and
    differences of the same float64 numbers, so the same answers)."""
    best, second, d1, d2 = score_small(raw, log_cols, medians, means, stds, centroids)
    n = best.shape[0]
    cluster = np.empty(n, ids.dtype)
    runner_up = np.empty(n, ids.dtype)
    dist = np.empty(n, np.float64)
    margin = np.empty(n, np.float64)
    ood = np.empty(n, np.bool_)
    for i in range(n):
        a = np.sqrt(d1[i])
        cluster[i] = ids[best[i]]
        runner_up[i] = ids[second[i]]
        dist[i] = a
        margin[i] = np.sqrt(d2[i]) - a
        ood[i] = a > ood_threshold
    return cluster, dist, runner_up, margin, ood


@njit(nogil=True, cache=True)
def score_small(raw, log_cols, medians, means, stds, centroids):
    """Preprocess and assign a few raw rows in one compiled pass (the server's one-row path).

    Same steps as ``Preprocessor.transform`` then nearest and runner-up centroid: log1p of the
    clipped log columns, NaN imputed by the median, standardised to float32. Returns best and
    runner-up row positions and their squared distances. No BLAS call: for a server's batches
    the fixed cost of NumPy calls, not arithmetic, is the price (:data:`SMALL_BATCH`).
    """
    n, d = raw.shape
    k = centroids.shape[0]
    best = np.empty(n, np.int64)
    second = np.empty(n, np.int64)
    d_best = np.empty(n, np.float64)
    d_second = np.empty(n, np.float64)
    z = np.empty(d, np.float32)
    is_log = np.zeros(d, np.bool_)
    for j in log_cols:
        is_log[j] = True
    for i in range(n):
        for j in range(d):
            v = raw[i, j]
            if is_log[j] and v == v:
                v = np.log1p(max(v, 0.0))
            if v != v:
                v = medians[j]
            z[j] = np.float32((v - means[j]) / stds[j])
        b1, b2 = 0, 0
        s1, s2 = np.inf, np.inf
        for c in range(k):
            s = 0.0
            for j in range(d):
                diff = np.float64(z[j]) - np.float64(centroids[c, j])
                s += diff * diff
            if s < s1:
                b2, s2 = b1, s1
                b1, s1 = c, s
            elif s < s2:
                b2, s2 = c, s
        best[i], second[i] = b1, (b2 if k > 1 else b1)
        d_best[i], d_second[i] = s1, (s2 if k > 1 else s1)
    return best, second, d_best, d_second


#: What :func:`row_flags` finds in a row: the flags of the model's own check.
ROW_OK, ROW_OUTSIDE, ROW_EMPTY = kmeans_segments.ROW_OK, kmeans_segments.ROW_OUTSIDE, \
    kmeans_segments.ROW_EMPTY


@njit(nogil=True, cache=True)
def row_flags(raw, lo, hi):
    """Per raw row: ``ROW_OUTSIDE`` when a value lies outside ``[lo, hi]`` of its column
    (infinity included), ``ROW_EMPTY`` when every value is missing (NaN), else ``ROW_OK``; and
    how many rows are not OK. One compiled pass: it runs before every request is scored. The
    compiled copy of :meth:`~pipeline.model.kmeans_segments.InputCheck.flags` (a property test
    keeps the two equal)."""
    n, d = raw.shape
    flags = np.zeros(n, np.int8)
    bad = 0
    for i in range(n):
        present = False
        for j in range(d):
            v = raw[i, j]
            if v != v:
                continue
            present = True
            if v < lo[j] or v > hi[j]:
                flags[i] = ROW_OUTSIDE
                break
        if flags[i] == ROW_OK and not present:
            flags[i] = ROW_EMPTY
        if flags[i] != ROW_OK:
            bad += 1
    return flags, bad


@njit(nogil=True, cache=True)
def _splitmix64(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, cache=True)
def id_buckets(ids, buckets):
    """Stable bucket per integer id: splitmix64 of the id's 64 bits."""
    out = np.empty(len(ids), np.int64)
    for i in range(len(ids)):
        out[i] = np.int64(_splitmix64(np.int64(ids[i]).view(np.uint64)) % np.uint64(buckets))
    return out


@njit(nogil=True, cache=True)
def row_hash_buckets(rows, buckets):
    """Stable bucket per row of floats: splitmix64 of sum(bits(value) * odd multiplier of its
    column), with NaN and -0.0 hashed as 0.0 (the canary split's key for rows without an id)."""
    n, d = rows.shape
    mult = np.empty(d, np.uint64)
    for j in range(d):
        mult[j] = _splitmix64(np.uint64(j + 1)) | np.uint64(1)
    out = np.empty(n, np.int64)
    for i in range(n):
        total = np.uint64(0)
        for j in range(d):
            v = rows[i, j]
            if v != v or v == 0.0:
                v = 0.0
            total += np.float64(v).view(np.uint64) * mult[j]
        out[i] = np.int64(_splitmix64(total) % np.uint64(buckets))
    return out


@njit(nogil=True, cache=True)
def small_pass(raw, lo, hi, log_cols, medians, means, stds, centroids, ids, ood_threshold,
               buckets):
    """A few raw rows' check (:func:`row_flags`), canary-split buckets
    (:func:`row_hash_buckets`) and answer (:func:`answer_small`), in one compiled call: the
    server's one-row path made three, each costing more than the row."""
    flags, bad = row_flags(raw, lo, hi)
    hashed = row_hash_buckets(raw, buckets)
    cluster, dist, runner_up, margin, ood = answer_small(raw, log_cols, medians, means, stds,
                                                         centroids, ids, ood_threshold)
    return flags, bad, hashed, cluster, dist, runner_up, margin, ood
