"""Lloyd's iterations with Hamerly's distance bounds: rows whose assignment cannot change skip
the distance computation.

After the first few iterations most rows keep their cluster, and plain Lloyd still computes
their K distances. Here every row carries an upper bound on the distance to its centroid and
a lower bound on the distance to any other (Hamerly, "Making k-means even faster", SDM 2010).
When the centroids move, the bounds move by the centroids' drift; a row is recomputed only
when the bounds no longer prove its assignment.

**The same result as plain Lloyd.** Plain Lloyd takes the argmin of float32 values
``-2 x·c + |c|²``, which carry rounding errors, and settles a near tie (two values closer
than twice their worst error, :func:`~pipeline.engine.kernel.error_margin`) by float64
distances (:func:`~pipeline.engine.kernel.nearest_exact`); so its choice is the exact
nearest centroid, or float64's where two are too close for float32, whatever rounding the
BLAS kernel, the product's shape or the row's place in it gave. A row is skipped only when
its bounds prove a gap between its own centroid and every other larger than that error, so
plain Lloyd would have picked the same centroid; rows that are recomputed go through the
same comparisons and the same float64 settling. Every pass adds up the sums and counts of
all rows in the same order as :func:`pipeline.engine.kernel.partial_stats` does, so the
centroids are the same numbers: tested on data with exact ties and near-ties in
``tests/unit/engine/test_bounds.py``.

A step's inertia is not computed (NaN): a skipped row's exact distance is not known. The
engine's Lloyd loop reads only the sums and counts of its iterations and scores the final
centroids with a plain pass.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from pipeline.engine.kernel import (
    Stats,
    _blas_limit_one,
    _default_threads,
    c2_max,
    chunk_rows,
    error_margin,
    nearest_exact,
    private,
    running_min,
    span_bounds,
)

#: Bounds cost 20 bytes per row and entry (assignment, two float64 bounds); a call with more
#: entries, or more bytes in one process (the array; on Spark, a block), than this (a wide K
#: sweep) runs the plain kernel instead.
MAX_ENTRIES = 16
MAX_BYTES = 2 << 30
#: Below this many rows a plain pass costs little, and the bounds' set-up more than they save
#: (the seeding's swap refinement runs many short fits on at most 10,000 rows).
MIN_ROWS = 16_384
#: Below this many centroids the distances are a small GEMM, and checking the bounds costs
#: about as much as it saves (measured: K=8 on 1M x 32, 80% of rows skipped, the same time
#: per iteration as a plain pass; K=50, 99% skipped, 0.25x).
MIN_K = 16


@njit(nogil=True, cache=True)
def _check(x, x2, c, assign, upper, lower, drift, drift_other, half, margin, c2max, lo, hi,
           need):
    """Move every row's bounds by the drift and keep the rows they no longer settle in
    ``need`` (returns how many)."""
    d = x.shape[1]
    m = 0
    for i in range(lo, hi):
        a = assign[i]
        u = upper[i] + drift[a]
        low = lower[i] - drift_other[a]
        e = margin * (x2[i] + c2max)
        bound = max(low, 2.0 * half[a] - u)
        if bound > 0.0 and bound * bound - u * u > e:
            upper[i] = u
            lower[i] = low
            continue
        acc = 0.0
        for t in range(d):
            diff = np.float64(x[i, t]) - np.float64(c[a, t])
            acc += diff * diff
        u = np.sqrt(acc) * (1.0 + 1e-12)
        bound = max(low, 2.0 * half[a] - u)
        upper[i] = u
        lower[i] = low
        if bound > 0.0 and bound * bound - u * u > e:
            continue
        need[m] = i
        m += 1
    return m


@njit(nogil=True, cache=True)
def _row_norms(x, out):
    """``|x|²`` of every row, in float64 (no float64 copy of the array)."""
    for i in range(x.shape[0]):
        acc = 0.0
        for t in range(x.shape[1]):
            v = np.float64(x[i, t])
            acc += v * v
        out[i] = acc


def row_norms(x: np.ndarray) -> np.ndarray:
    """``|x|²`` of every row of a float32 array, in float64."""
    out = np.empty(len(x))
    _row_norms(x, out)
    return out


@njit(nogil=True, cache=True)
def _gather(x, rows, m, out):
    for r in range(m):
        i = rows[r]
        for t in range(x.shape[1]):
            out[r, t] = x[i, t]


@njit(nogil=True, cache=True)
def _assign(dots_t, c2, rows, m, x, cents, x2, margin, c2max, assign, upper, lower, best2,
            second2, arg2):
    """Plain Lloyd's argmin (float32 ``-2 x·c + |c|²``, first of equals; a near tie settled
    in float64 as the plain kernel settles it) for the recomputed rows, and their new bounds,
    widened by the values' error. Centroids in the outer loop and rows in the inner one, as
    in the plain kernel (:func:`~pipeline.engine.kernel.running_min`, whose (2, m) buffers
    these are)."""
    k = dots_t.shape[0]
    running_min(dots_t, c2, 0, k, m, best2, second2, arg2)  # the plain kernel's loop
    best, second, arg = best2[0], second2[0], arg2[0]
    changed = 0
    for r in range(m):
        i = rows[r]
        e = margin * (x2[i] + c2max)
        if np.float64(second[r]) - np.float64(best[r]) <= 2.0 * e:  # a near tie
            a = nearest_exact(x, i, cents, 0, k)
            if a != arg[r]:  # the runner-up is the other's value now
                second[r] = best[r]
                best[r] = dots_t[a, r] + c2[a]
                arg[r] = a
        changed += assign[i] != arg[r]
        assign[i] = arg[r]
        upper[i] = np.sqrt(max(x2[i] + np.float64(best[r]) + e, 0.0))
        lower[i] = (np.inf if k == 1 else
                    np.sqrt(max(x2[i] + np.float64(second[r]) - e, 0.0)))
    return changed


@njit(nogil=True, fastmath=True, cache=True)
def _sums(x, w, assign, lo, hi, sums, counts):
    """The same sums as the plain kernel: rows in order, ``w * x`` in float64, compiled with
    the same ``fastmath`` (a fused multiply-add rounds ``sums + w * x`` once). An empty
    ``w``: every row weighs 1.0, as the plain kernel's ones."""
    d = x.shape[1]
    weighted = w.shape[0] > 0
    for i in range(lo, hi):
        a = assign[i]
        wi = w[i] if weighted else 1.0
        counts[a] += wi
        for t in range(d):
            sums[a, t] += wi * x[i, t]


def continued(previous: list[int], ks: list[int]) -> list[int | None]:
    """Which entry of the previous call each entry of this one continues (its position), or
    None for a new one: the next previous entry with as many centroids, in order, since
    Lloyd's loop drops converged (k, init) entries but keeps the others' order.

    Examples
    --------
    >>> continued([20, 16, 20], [16, 20])
    [1, 2]
    >>> continued([20], [20, 20])
    [0, None]
    """
    out: list[int | None] = []
    start = 0
    for k in ks:
        at = next((i for i in range(start, len(previous)) if previous[i] == k), None)
        out.append(at)
        if at is not None:
            start = at + 1
    return out


@dataclass(eq=False)
class Entry:
    """The bounds of one (k, init) entry: they refer to ``centroids``."""

    centroids: np.ndarray
    assign: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    fresh: bool = True  # no pass has filled the bounds yet
    skipped: float = 0.0  # share of rows the last pass skipped
    changed: float = 1.0  # share of rows the last pass moved to another cluster


@dataclass
class BoundedLloyd:
    """Lloyd steps over one in-memory array, with Hamerly's bounds kept between calls.

    ``step(centroids_per_entry)`` returns what :func:`~pipeline.engine.kernel.partial_stats`
    returns (inertia NaN); the bounds of an entry carry over to the next call whose entry at
    the same position has as many centroids (any movement is fine: the bounds move by the
    drift). ``skipped`` holds the share of rows that skipped the distances, per call and
    entry.

    Examples
    --------
    >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
    >>> lloyd = BoundedLloyd(x)
    >>> lloyd.step([x[[0, 2]]])[0][:2]
    (array([[ 0.,  1.],
           [20., 21.]]), array([2., 2.]))
    """

    x: np.ndarray
    weights: np.ndarray | None = None
    threads: int | None = None
    entries: list[Entry] = field(default_factory=list)
    skipped: list[list[float]] = field(default_factory=list)

    x2: np.ndarray | None = None  # |x|² of every row, float64 (computed when not given)

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        if self.x2 is None:
            self.x2 = row_norms(self.x)
        # no weights: an empty array, each row then weighs 1.0 in _sums (a block's worth of
        # ones allocated per pass cost ~3 ms a block on Spark, where an engine lives one pass)
        self.w = (np.ones(0) if self.weights is None
                  else np.ascontiguousarray(self.weights, dtype=np.float64))

    @staticmethod
    def fits(n: int, ks: list[int], *, largest: int | None = None) -> bool:
        """Whether bounds for entries of ``ks`` centroids over ``n`` rows pay and stay within
        the limits; ``largest`` is the most rows one process holds bounds for (a Spark
        source's largest block; default ``n``)."""
        held = n if largest is None else largest
        return (n >= MIN_ROWS and len(ks) <= MAX_ENTRIES and min(ks, default=0) >= MIN_K
                and 20 * held * len(ks) <= MAX_BYTES)

    def _entries_for(self, cents: list[np.ndarray]) -> list[Entry]:
        n = len(self.x)
        at = continued([len(e.centroids) for e in self.entries], [len(c) for c in cents])
        return [self.entries[i] if i is not None else
                Entry(c.copy(), np.zeros(n, np.int32), np.zeros(n), np.zeros(n))
                for i, c in zip(at, cents, strict=True)]

    def step(self, centroids_per_entry: list[np.ndarray]) -> list[Stats]:
        cents = [np.ascontiguousarray(c, dtype=np.float32) for c in centroids_per_entry]
        self.entries = self._entries_for(cents)
        return self.step_with(self.entries, cents)

    def step_with(self, entries: list[Entry], cents: list[np.ndarray]) -> list[Stats]:
        """A step with the caller's bounds, one entry per centroid array (on Spark they live
        in files beside each staged block: :mod:`pipeline.engine.blockbounds`)."""
        n, d = self.x.shape
        threads = self.threads or _default_threads()
        total_k = sum(len(c) for c in cents)
        step = chunk_rows(total_k)
        # the plain kernel's spans (partial_stats), so the sums add up in the same order
        spans = span_bounds(n, step, threads)
        out: list[Stats] = []
        shares = []
        for entry, c in zip(entries, cents, strict=True):
            sums, counts, kept = self._entry_step(entry, c, spans, step, threads, d)
            out.append((sums, counts, float("nan")))
            shares.append(kept)
        self.skipped.append(shares)
        return out

    def _entry_step(self, entry: Entry, c: np.ndarray, spans: np.ndarray, step: int,
                    threads: int, d: int) -> tuple[np.ndarray, np.ndarray, float]:
        k = len(c)
        c64 = c.astype(np.float64)
        c2 = np.einsum("ij,ij->i", c, c)
        c2max = c2_max(c)
        margin = error_margin(d)
        if entry.fresh:  # no bounds yet: every row is recomputed
            drift = np.full(k, np.inf)
        else:
            drift = np.sqrt(((c64 - entry.centroids.astype(np.float64)) ** 2).sum(1))
            drift = drift * (1.0 + 1e-12) + 1e-300
        order = np.argsort(drift)[::-1]
        top = drift[order[0]]
        runner = drift[order[1]] if k > 1 else 0.0
        drift_other = np.full(k, top)
        drift_other[order[0]] = runner
        if k > 1:
            between = np.sqrt(np.maximum(
                (c64 ** 2).sum(1)[:, None] - 2 * c64 @ c64.T + (c64 ** 2).sum(1)[None, :],
                0.0))
            np.fill_diagonal(between, np.inf)
            # exact pairwise distances in float64 need a guard against the expansion's error
            half = np.maximum(0.5 * between.min(1) * (1.0 - 1e-9) - 1e-12, 0.0)
        else:
            half = np.zeros(1)
        neg2 = np.ascontiguousarray(-2.0 * c)
        # the bounds are checked once they pay: after a pass that skipped a quarter of the
        # rows, or in which under a tenth changed cluster (early passes move most rows, and
        # checking them costs more than it saves)
        check = not entry.fresh and (entry.skipped >= 0.25 or entry.changed < 0.1)
        min_rows = max(64, -(-8192 // max(k, 1)))

        def work(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, int, int]:
            # every array this thread writes is its own (see kernel.private)
            sums = private((k, d), np.float64, zero=True)
            counts = private(k, np.float64, zero=True)
            rows = private((step, d), np.float32)
            dots = private((k, step), np.float32)
            best = private((2, step), np.float32)  # see kernel.running_min
            second = private((2, step), np.float32)
            arg = private((2, step), np.int32)
            if check:  # one call over the span; the rows left go through the GEMM in batches
                need = np.empty(hi - lo, dtype=np.int64)
                m = _check(self.x, self.x2, c, entry.assign, entry.upper, entry.lower,
                           drift, drift_other, half, margin, c2max, lo, hi, need)
            else:
                need, m = np.arange(lo, hi, dtype=np.int64), hi - lo
            changed = 0
            for start in range(0, m, step):
                batch = need[start:start + step]
                count = min(step, m - start)
                _gather(self.x, batch, count, rows)
                # BLAS takes another code path for small products (seen: OpenBLAS for
                # m x k <= 1,200, and GEMV for one row), which rounds differently from the
                # plain kernel's chunks: pad with zero rows past it
                padded = min(max(count, min_rows), step)
                rows[count:padded] = 0.0
                out = dots if padded == step else np.empty((k, padded), np.float32)
                np.matmul(neg2, rows[:padded].T, out=out)
                changed += _assign(out, c2, batch, count, self.x, c, self.x2, margin, c2max,
                                   entry.assign, entry.upper, entry.lower, best, second, arg)
            _sums(self.x, self.w, entry.assign, lo, hi, sums, counts)
            return sums, counts, (hi - lo) - m, changed

        pairs = list(zip(spans[:-1].tolist(), spans[1:].tolist(), strict=True))
        with _blas_limit_one():
            if len(pairs) == 1:
                parts = [work(*pairs[0])]
            else:
                with ThreadPoolExecutor(len(pairs)) as pool:
                    parts = list(pool.map(lambda s: work(*s), pairs))
        entry.centroids = c.copy()
        entry.fresh = False
        # summed as partial_stats sums its spans' (0 + first + second ...)
        sums = np.asarray(sum(p[0] for p in parts))
        counts = np.asarray(sum(p[1] for p in parts))
        n = max(1, len(self.x))
        entry.skipped = sum(p[2] for p in parts) / n
        entry.changed = sum(p[3] for p in parts) / n
        return sums, counts, entry.skipped
