"""The shared kernel: distances through BLAS, then one fused pass for argmin and the sums.

For each chunk of rows, one GEMM gives ``-2 x·c`` against the centroids of every candidate K at
once; a compiled loop (numba, no GIL) adds ``|c|²``, takes the argmin per K and adds the row to
its centroid's float64 sum, count and inertia while the chunk is still in cache. Chunks are
spread over threads. Both the in-process path and every Spark task call :func:`partial_stats`,
so the two paths add up the same numbers and can be compared exactly.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numba import njit
from threadpoolctl import ThreadpoolController

CHUNK_ROWS = 4096  # largest chunk; see chunk_rows

log = logging.getLogger(__name__)

#: Per-K partial statistics of a block: (sums (k, d) float64, counts (k,) float64, inertia).
Stats = tuple[np.ndarray, np.ndarray, float]


def chunk_rows(total_k: int) -> int:
    """Rows per chunk so that the chunk's distance matrix (total_k x rows float32, about
    256 KiB) stays in L2 cache between the GEMM that writes it and the loop that reads it:
    1.7x faster for a 31-K sweep (527 centroids) than a fixed 4,096 rows, measured here."""
    rows = 1 << max(0, int(np.log2(max(1.0, 65_536 / max(total_k, 1)))))
    return int(min(CHUNK_ROWS, max(256, rows)))


def error_margin(d: int) -> float:
    """The factor ``f`` such that two of plain Lloyd's float32 values ``-2 x·c + |c|²`` for a
    row differ from the true squared-distance difference by less than
    ``f * (|x|² + max |c|²)``: a dot product of ``d`` float32 terms errs by at most about
    ``d`` units in the last place of ``|x| |c| <= (|x|² + |c|²) / 2``, and the additions by a
    few more; twice that for a difference, with room to spare.

    Examples
    --------
    >>> round(error_margin(32) * 2**23)
    72
    """
    return 2.0 * (d + 4) * 2.0 ** -23


@njit(nogil=True, cache=True)
def nearest_exact(x, i, c, o, k):
    """The centroid of ``c[o:o + k]`` nearest to row ``i`` of ``x`` by float64 squared
    distances summed in a fixed order, the first of equals: how every pass settles a near
    tie (:func:`_fused_chunk`). Compiled without ``fastmath``, so the order holds."""
    best = np.inf
    arg = 0
    for j in range(k):
        acc = 0.0
        for t in range(x.shape[1]):
            diff = np.float64(x[i, t]) - np.float64(c[o + j, t])
            acc += diff * diff
        if acc < best:
            best = acc
            arg = j
    return arg


@njit(nogil=True, fastmath=True, cache=True)
def sq_norms(x, out):
    """``out[i] = |x[i]|²`` summed in float32, as every pass sums it (:func:`_fused_chunk`
    calls this very function, so a kept copy is the same numbers)."""
    m, d = x.shape
    for i in range(m):
        acc = np.float32(0.0)
        for t in range(d):
            acc += x[i, t] * x[i, t]
        out[i] = acc


@njit(nogil=True, fastmath=True, cache=True)
def running_min(dots_t, c2, o, k, m, best, second, arg):
    """For each of the first ``m`` rows (columns of ``dots_t``), the least and second least
    of ``dots_t[o + c] + c2[o + c]`` over ``c < k`` and the first ``c`` of the least, left in
    ``best[0]``, ``second[0]`` and ``arg[0]``; rows 1 of the three (2, m) buffers are scratch.

    Centroids in the outer loop and rows in the inner one, so the loop vectorizes across
    rows. Each sweep reads one row of the buffers and writes the other: updated in place,
    ``second[i] = min(second[i], ...)`` compiled to a masked store (the value is only written
    where it changes), which AMD's cores run in microcode: 59 -> 11 ms per 1M rows against 50
    centroids on an AMD EPYC (the loop alone, measured here).
    """
    p = 0
    first = c2[o]
    for i in range(m):
        best[0, i] = dots_t[o, i] + first
        second[0, i] = np.float32(np.inf)
        arg[0, i] = 0
    for c in range(1, k):
        cc = c2[o + c]
        c32 = np.int32(c)
        bi, si, ai = best[p], second[p], arg[p]
        bo, so, ao = best[1 - p], second[1 - p], arg[1 - p]
        for i in range(m):
            v = dots_t[o + c, i] + cc
            b = bi[i]
            so[i] = min(si[i], max(b, v))
            ao[i] = c32 if v < b else ai[i]
            bo[i] = min(b, v)
        p = 1 - p
    if p:
        for i in range(m):
            best[0, i] = best[1, i]
            second[0, i] = second[1, i]
            arg[0, i] = arg[1, i]


@njit(nogil=True, fastmath=True, cache=True)
def _fused_chunk(xb, x2, dots_t, c2, offsets, ks, weights, unit, sums, counts, inertia, best,
                 second, arg, allc, c2max, margin):
    # dots_t: (total_k, m) = -2 c·x for every centroid of every K, rows contiguous so that
    # the running argmin below vectorizes across points; c2: |c|² of each centroid; x2: |x|²
    # of the chunk's rows, or empty (then computed here).
    m, d = xb.shape
    if x2.shape[0] != m:
        x2 = np.empty(m, dtype=np.float32)
        sq_norms(xb, x2)
    for j in range(ks.shape[0]):
        o = offsets[j]
        running_min(dots_t, c2, o, ks[j], m, best, second, arg)
        total = 0.0
        cm = c2max[j]
        for i in range(m):
            a = arg[0, i]
            b = best[0, i]
            # a near tie (the best two values closer than twice their rounding error can
            # tell) is settled in float64: the GEMM's rounding depends on the BLAS kernel,
            # the shape of the product and a row's place in it, so its argmin would not be
            # the same number on every machine, chunking and path (the bounds' recomputed
            # rows test the same gap). A row with a clear gap has its true nearest centroid.
            if np.float64(second[0, i]) - np.float64(b) <= 2.0 * margin * (x2[i] + cm):
                a = nearest_exact(xb, i, allc, o, ks[j])
                b = dots_t[o + a, i] + c2[o + a]
            a += o
            dist = x2[i] + np.float64(b)
            dist = dist if dist > 0.0 else 0.0
            if unit:  # no weights: no products
                total += dist
                counts[a] += 1.0
                for t in range(d):
                    sums[a, t] += xb[i, t]
            else:
                w = weights[i]
                total += w * dist
                counts[a] += w
                for t in range(d):
                    sums[a, t] += w * xb[i, t]
        inertia[j] += total


#: Bytes kept free on either side of a thread's own arrays (:func:`private`): two cache lines,
#: since cores fetch lines in adjacent pairs.
_GUARD = 128


def private(shape: int | tuple[int, ...], dtype: Any, *, zero: bool = False) -> np.ndarray:
    """An array for one thread's writes that shares no cache line with any other array:
    aligned to, and followed by, :data:`_GUARD` bytes of its own. Small arrays from the
    allocator sit side by side, so two threads' counts or argmin buffers shared lines and
    every write of one thread evicted the other's (false sharing): two threads running the
    fused pass over halves of 1M x 32 rows against 50 centroids took 44 ms instead of
    22-24 ms for one half alone; 28.6 ms with this (medians of 8, an AMD EPYC, measured
    here).

    Examples
    --------
    >>> a = private((3, 2), np.float64, zero=True)
    >>> a.shape, a.ctypes.data % _GUARD, float(a.sum()), a.flags.c_contiguous
    ((3, 2), 0, 0.0, True)
    """
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = (np.zeros if zero else np.empty)(nbytes + 3 * _GUARD, dtype=np.uint8)
    start = -raw.ctypes.data % _GUARD + _GUARD
    return raw[start:start + nbytes].view(dt).reshape(shape)


_CONTROLLER = None


def _controller() -> ThreadpoolController:
    """The process's threadpoolctl controller, built once (building it costs ~1.5 ms)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _blas_limit_one():
    """BLAS limited to one thread."""
    return _controller().limit(limits=1, user_api="blas")


def _default_threads() -> int:
    return max(1, int(os.environ.get("KMEANS_KERNEL_THREADS", os.cpu_count() or 1)))


def warm() -> None:
    """Compile the kernel now (or load it from numba's cache): one call on a tiny block with
    the types every pass uses. The Spark worker daemon calls it before it forks any worker
    (:mod:`pipeline.engine.daemon`), so no worker pays numba's first call (seen: a first step
    of 4-13.6 s on a new application, 1.3-1.4 s warm)."""
    x = np.zeros((2, 2), dtype=np.float32)
    partial_stats(x, [x[:1]], threads=1)
    partial_stats(x, [x[:1]], np.ones(2), threads=1)
    # staged blocks are read-only maps, their weights too: numba compiles those types apart
    r, w = x.copy(), np.ones(2)
    r.setflags(write=False)
    w.setflags(write=False)
    partial_stats(r, [x[:1]], threads=1)
    partial_stats(r, [x[:1]], w, threads=1)


def span_bounds(n: int, step: int, threads: int) -> np.ndarray:
    """Where each thread's span of ``n`` rows begins (and the last ends): at most one span
    per thread, none under a chunk of ``step`` rows. Every pass splits rows this way, so
    the sums add up in the same order on every path."""
    return np.linspace(0, n, min(threads, max(1, n // step)) + 1).astype(np.int64)


def c2_max(c: np.ndarray) -> float:
    """The largest ``|c|²`` of the centroids, in float64 (0 for none): the scale of the
    rounding margin (:func:`error_margin`)."""
    return float(np.max(c.astype(np.float64) ** 2 @ np.ones(c.shape[1]))) if len(c) else 0.0


def _over_spans(bounds: np.ndarray, threads: int, work: Callable[[int, int], Any]) -> list:
    """``work(lo, hi)`` of each span between consecutive ``bounds``, one thread per span."""
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    if len(spans) == 1 and threads == 1:
        with _blas_limit_one():
            return [work(*spans[0])]
    if len(spans) == 1:
        return [work(*spans[0])]
    # One BLAS thread per worker: the chunks, not the GEMMs, are spread over the cores.
    with _blas_limit_one(), ThreadPoolExecutor(len(spans)) as pool:
        return list(pool.map(lambda span: work(*span), spans))


# ---- NumPy's own sgemm, called from compiled code ------------------------------------------
# A pass over a span of rows was a Python loop: per chunk a GEMM through np.matmul and the
# fused kernel, each taking and dropping the GIL. Two threads handed the GIL back and forth
# about 4 times a chunk, and each wait for it cost a wake-up: with 1,024-row chunks, 1M x 32
# rows against 50 centroids, the GEMMs alone took 45.9 ms on two threads against 32.6 ms with
# 16,384-row chunks (AMD EPYC, measured here). Calling the very sgemm NumPy calls from the
# compiled span loop (:func:`_span`) takes the GIL once a span: the same products, bit for
# bit, and 43.4 -> 36.7 ms for the whole pass on two threads.

_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112
#: cblas_sgemm under the names NumPy's BLAS builds give it: scipy-openblas64 (NumPy's wheels),
#: scipy-openblas32, a system CBLAS. Integers narrower than the 64-bit ones declared here are
#: read from the same registers and stack slots on x86-64 and aarch64 (the values are small);
#: a candidate is used only once it has multiplied a test product right.
_SGEMM_NAMES = ("scipy_cblas_sgemm64_", "scipy_cblas_sgemm", "cblas_sgemm64_", "cblas_sgemm")
_SGEMM_ARGS = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
               ctypes.c_int64, ctypes.c_float, ctypes.c_uint64, ctypes.c_int64, ctypes.c_uint64,
               ctypes.c_int64, ctypes.c_float, ctypes.c_uint64, ctypes.c_int64]
_SGEMM: Any = None  # resolved once: the function, or False when there is none (see _sgemm)


def _numpy_blas_files() -> list[str]:
    """NumPy's BLAS libraries first, then any other BLAS loaded in the process."""
    infos = [i for i in _controller().info() if i.get("user_api") == "blas"]
    return [i["filepath"] for i in sorted(infos, key=lambda i: "numpy" not in i["filepath"])]


def _sgemm_works(fn: Any) -> bool:
    """Whether ``fn`` computes ``a @ b.T`` (row-major, B transposed, a leading dimension
    wider than the product) as np.matmul does."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.normal(size=(7, 4)).astype(np.float32)  # rows of 3 used out of 4
    out = np.zeros((5, 7), np.float32)
    fn(_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS, 5, 7, 3, 1.0, a.ctypes.data, 3,
       b.ctypes.data, 4, 0.0, out.ctypes.data, 7)
    return bool(np.allclose(out, a @ b[:, :3].T, rtol=1e-5, atol=1e-6))


def _sgemm() -> Any:
    """NumPy's cblas_sgemm as a ctypes function, or None when it cannot be found (or
    ``KMEANS_KERNEL_DIRECT_BLAS=0``): the passes then loop over chunks in Python."""
    global _SGEMM
    if _SGEMM is None:
        _SGEMM = False
        if os.environ.get("KMEANS_KERNEL_DIRECT_BLAS", "1") != "0":
            for path in _numpy_blas_files():
                try:
                    lib = ctypes.CDLL(path)
                except OSError:
                    continue
                for name in _SGEMM_NAMES:
                    fn = getattr(lib, name, None)
                    if fn is None:
                        continue
                    fn.restype, fn.argtypes = None, _SGEMM_ARGS
                    if _sgemm_works(fn):
                        _SGEMM = fn
                        break
                if _SGEMM:
                    break
            if not _SGEMM:
                log.info("no cblas_sgemm found in NumPy's BLAS; the passes loop in Python")
    return _SGEMM or None


@njit(nogil=True, fastmath=True, cache=True)
def _span(sgemm, x, rows_ptr, row_bytes, ldb, trans, lo, hi, step, x2, neg2, c2, offsets, ks,
          weights, unit, sums, counts, inertia, dots, best, second, arg, allc, c2max, margin):
    """:func:`partial_stats` over rows ``lo..hi`` in chunks of ``step``, without the GIL:
    ``-2 c·x`` of each chunk by ``sgemm`` (NumPy's cblas_sgemm; ``sgemm`` is an argument, not
    a global, so the compiled code can be cached) into ``dots``, then :func:`_fused_chunk`.
    The GEMM reads the rows at ``rows_ptr + row * row_bytes`` with leading dimension ``ldb``:
    row-major rows transposed (``trans``), or a column-major copy as it is."""
    k = neg2.shape[0]
    d = x.shape[1]
    flat = dots.reshape(-1)
    weighted = weights.shape[0] > 0
    kept = x2.shape[0] > 0
    for a in range(lo, hi, step):
        b = min(a + step, hi)
        m = b - a
        out = flat[:k * m].reshape(k, m)
        sgemm(_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS if trans else _CBLAS_NO_TRANS,
              k, m, d, np.float32(1.0), neg2.ctypes.data, d, rows_ptr + a * row_bytes, ldb,
              np.float32(0.0), out.ctypes.data, m)
        _fused_chunk(x[a:b], x2[a:b] if kept else x2, out, c2, offsets, ks,
                     weights[a:b] if weighted else weights, unit, sums, counts, inertia, best,
                     second, arg, allc, c2max, margin)


def _products(x: np.ndarray, neg2: np.ndarray, lo: int, hi: int, step: int,
              xf: np.ndarray | None = None):
    """``(a, b, rows a..b, -2 c·x of them (centres x rows))`` for each chunk of ``step`` rows
    in ``lo..hi``. The product's buffer is reused across chunks: a fresh GEMM output per chunk
    is big enough to be mmap'd and page-faulted by the allocator every time, which costs more
    than the GEMM. ``xf``: the same rows in column-major order (:func:`column_major`), which
    the GEMM reads without transposing them: 56.7 -> 36.5 ms per 1M x 32 rows against 50
    centroids on one thread, OpenBLAS on a Xeon (SkylakeX kernels), measured here."""
    dots = private((len(neg2), step), np.float32)
    for a in range(lo, hi, step):
        b = min(a + step, hi)
        xb = np.ascontiguousarray(x[a:b], dtype=np.float32)
        out = dots if b - a == step else np.empty((len(neg2), b - a), np.float32)
        np.matmul(neg2, xb.T if xf is None else xf[a:b].T, out=out)
        yield a, b, xb, out


#: The largest array :func:`column_major` copies (the copy's bytes): an in-process fit's data
#: is doubled for faster passes only while the copy is this small.
COLUMN_COPY_MAX_BYTES = 1 << 30


def column_major(x: np.ndarray) -> np.ndarray | None:
    """A column-major (Fortran-order) float32 copy of ``x`` for the passes' GEMM
    (:func:`partial_stats`'s ``xf``), or None when it would take more than
    :data:`COLUMN_COPY_MAX_BYTES`."""
    if x.shape[0] * x.shape[1] * 4 > COLUMN_COPY_MAX_BYTES:
        return None
    return np.asfortranarray(x, dtype=np.float32)


@njit(nogil=True, fastmath=True, cache=True)
def _min_d2_chunk(xb, dots_t, c2, best, out):
    m, d = xb.shape
    p = 0  # best: (2, m), read one row and write the other (see running_min)
    for i in range(m):
        best[0, i] = dots_t[0, i] + c2[0]
    for c in range(1, dots_t.shape[0]):
        cc = c2[c]
        bi, bo = best[p], best[1 - p]
        for i in range(m):
            bo[i] = min(bi[i], dots_t[c, i] + cc)
        p = 1 - p
    for i in range(m):
        acc = np.float32(0.0)
        for t in range(d):
            acc += xb[i, t] * xb[i, t]
        v = np.float64(acc) + np.float64(best[p, i])
        out[i] = v if v > 0.0 else 0.0


def min_d2(x: np.ndarray, centers: np.ndarray, *, threads: int | None = None,
           xf: np.ndarray | None = None) -> np.ndarray:
    """Squared distance of every row to its nearest centre (float64 of the float32
    ``|x|² - 2 x·c + |c|²``, clipped at 0): a k-means|| round's weights, through the same
    chunked GEMM as :func:`partial_stats`, over threads.

    Examples
    --------
    >>> min_d2(np.array([[0, 0], [3, 4]], np.float32), np.array([[0, 0]], np.float32))
    array([ 0., 25.])
    """
    c = np.ascontiguousarray(centers, dtype=np.float32)
    neg2 = np.ascontiguousarray(-2.0 * c)
    c2 = np.einsum("ij,ij->i", c, c)
    n = len(x)
    out = np.empty(n, dtype=np.float64)
    threads = threads or _default_threads()
    step = chunk_rows(len(c))

    def work(lo: int, hi: int) -> None:
        best = private((2, step), np.float32)
        for a, b, xb, dots in _products(x, neg2, lo, hi, step, xf):
            _min_d2_chunk(xb, dots, c2, best, out[a:b])

    if n:
        _over_spans(span_bounds(n, step, threads), threads, work)
    return out


def partial_stats(x: np.ndarray, centroids_per_k: list[np.ndarray],
                  weights: np.ndarray | None = None, *, threads: int | None = None,
                  x2: np.ndarray | None = None,
                  xf: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per-K sums, counts and inertia of one block of rows.

    Returns a list with one ``(sums (k, d) float64, counts (k,) float64, inertia float)`` per
    entry of ``centroids_per_k``; adding the tuples of all blocks gives the whole data's.
    ``x2``: the rows' :func:`sq_norms` (float32), when the caller keeps them between passes;
    ``xf``: their :func:`column_major` copy, likewise (the products' last bits may differ from
    the row-major GEMM's: a near tie is settled in float64 either way, so the assignments and
    sums are the same numbers, the inertia the same to float32 rounding).

    Examples
    --------
    >>> x = np.array([[0, 0], [2, 0]], np.float32)
    >>> sums, counts, inertia = partial_stats(x, [np.array([[1, 0]], np.float32)])[0]
    >>> sums.tolist(), counts.tolist(), inertia
    ([[2.0, 0.0]], [2.0], 2.0)
    """
    cents = [np.ascontiguousarray(c, dtype=np.float32) for c in centroids_per_k]
    ks = np.array([len(c) for c in cents], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(ks)[:-1]]).astype(np.int64)
    allc = np.concatenate(cents)
    neg2 = np.ascontiguousarray(-2.0 * allc)
    c2 = np.einsum("ij,ij->i", allc, allc)
    n, d = x.shape
    c2max = np.array([c2_max(c) for c in cents])
    margin = error_margin(d)
    threads = threads or _default_threads()
    step = chunk_rows(len(allc))
    bounds = span_bounds(n, step, threads)

    unit = weights is None
    no_weights = np.empty(0, dtype=np.float64)
    no_x2 = np.empty(0, dtype=np.float32)
    if xf is not None and (xf.shape != x.shape or not xf.flags.f_contiguous
                           or xf.dtype != np.float32):
        raise ValueError("xf must be the rows' column_major copy")
    if x2 is not None and (x2.shape != (n,) or x2.dtype != np.float32):
        raise ValueError(f"x2 is {x2.dtype} of shape {x2.shape}; the block's sq_norms are "
                         f"float32 of shape ({n},)")

    sgemm = _sgemm() if x.flags.c_contiguous and x.dtype == np.float32 else None
    if sgemm is not None:  # the rows the GEMM reads: the column-major copy, or x transposed
        ptr, row_bytes, ldb, trans = ((xf.ctypes.data, 4, n, False) if xf is not None
                                      else (x.ctypes.data, 4 * d, d, True))
        all_w = (no_weights if weights is None
                 else np.ascontiguousarray(weights, dtype=np.float64))
        all_x2 = no_x2 if x2 is None else np.ascontiguousarray(x2)

    def work(lo: int, hi: int):
        # every array this thread writes is its own (see private)
        sums = private((len(allc), d), np.float64, zero=True)
        counts = private(len(allc), np.float64, zero=True)
        inertia = private(len(cents), np.float64, zero=True)
        best = private((2, step), np.float32)  # two rows each: see running_min
        second = private((2, step), np.float32)
        arg = private((2, step), np.int32)
        if sgemm is not None:  # one compiled call for the span
            _span(sgemm, x, ptr, row_bytes, ldb, trans, lo, hi, step, all_x2, neg2, c2,
                  offsets, ks, all_w, unit, sums, counts, inertia,
                  private((len(allc), step), np.float32), best, second, arg, allc, c2max,
                  margin)
            return sums, counts, inertia
        for a, b, xb, dots in _products(x, neg2, lo, hi, step, xf):
            wb = (no_weights if weights is None
                  else np.ascontiguousarray(weights[a:b], dtype=np.float64))
            x2b = no_x2 if x2 is None else x2[a:b]
            _fused_chunk(xb, x2b, dots, c2, offsets, ks, wb, unit, sums, counts, inertia, best,
                         second, arg, allc, c2max, margin)
        return sums, counts, inertia

    parts = _over_spans(bounds, threads, work)
    sums = sum(p[0] for p in parts)
    counts = sum(p[1] for p in parts)
    inertia = sum(p[2] for p in parts)
    return [(sums[o:o + k], counts[o:o + k], float(inertia[j]))
            for j, (o, k) in enumerate(zip(offsets.tolist(), ks.tolist(), strict=True))]


def assign(x: np.ndarray, centroids: np.ndarray, *,
           chunk: int = 32_768) -> tuple[np.ndarray, np.ndarray]:
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


def distances(x: np.ndarray, centroids: np.ndarray, *, chunk: int = 32_768) -> np.ndarray:
    """Euclidean distance of every row to every centroid, in the float dtype of ``x``.

    The same expansion as :func:`assign` (``|x|² - 2 x·c + |c|²`` through one GEMM per chunk,
    clipped at 0), so for float32 rows the closest centroid agrees with :func:`assign` up to
    rounding on near ties.

    Parameters
    ----------
    x : ndarray of shape (n, d), float32 or float64
    centroids : ndarray of shape (k, d)

    Returns
    -------
    ndarray of shape (n, k), the dtype of ``x``

    Examples
    --------
    >>> distances(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0, 0], [3, 4.0]]))
    array([[0., 5.],
           [5., 0.]])
    """
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    x = np.asarray(x, dtype=dtype)
    c = np.ascontiguousarray(centroids, dtype=dtype)
    c2 = np.einsum("ij,ij->i", c, c)
    out = np.empty((len(x), len(c)), dtype=dtype)
    for lo in range(0, len(x), chunk):
        xb = x[lo:lo + chunk]
        d = out[lo:lo + chunk]
        np.matmul(xb, c.T, out=d)
        d *= -2.0
        d += c2
        d += np.einsum("ij,ij->i", xb, xb)[:, None]
        np.maximum(d, 0.0, out=d)
        np.sqrt(d, out=d)
    return out


def add_stats(a: list[tuple[np.ndarray, np.ndarray, float]],
              b: list[tuple[np.ndarray, np.ndarray, float]]
              ) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Add two results of :func:`partial_stats` element-wise.

    Examples
    --------
    >>> one = [(np.ones((1, 2)), np.ones(1), 1.0)]
    >>> add_stats(one, one)[0][2]
    2.0
    """
    return [(sa + sb, ca + cb, ia + ib) for (sa, ca, ia), (sb, cb, ib) in zip(a, b, strict=True)]


def _weighted_pick(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn in proportion to the increments of ``cumulative`` (a running sum of
    non-negative masses, last entry > 0), one per uniform draw in ``u``.

    ``side="right"`` lands each draw on a row whose increment is positive, so a row of mass 0
    is never picked, even for a draw of exactly 0; a draw that rounds up to the total goes to
    the last row with positive mass.

    Examples
    --------
    >>> _weighted_pick(np.cumsum([0.0, 1.0, 0.0, 3.0, 0.0]), np.array([0.0, 0.2, 0.9999999]))
    array([1, 1, 3])
    """
    total = cumulative[-1]
    idx = np.searchsorted(cumulative, u * total, side="right")
    last = int(np.searchsorted(cumulative, total, side="left"))  # last positive increment
    return np.minimum(idx, last)


def _sq_distances(x: np.ndarray, x2: np.ndarray, centers: np.ndarray, out: np.ndarray, *,
                  chunk: int = 65_536) -> np.ndarray:
    """Squared distances (float64) of every row of ``x`` to every one of a few ``centers``,
    written to ``out`` of shape (len(centers), n): ``|x|² - 2 c·x + |c|²`` through one GEMM
    per chunk of rows, clipped at 0."""
    c = np.asarray(centers, dtype=np.float64)
    c2 = np.einsum("ij,ij->i", c, c)[:, None]
    for lo in range(0, len(x), chunk):
        block = out[:, lo:lo + chunk]
        np.matmul(c, x[lo:lo + chunk].T, out=block)
        block *= -2.0
        block += c2
        block += x2[lo:lo + chunk]
        np.maximum(block, 0.0, out=block)
    return out


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator,
                    weights: np.ndarray | None = None, *,
                    n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur and Vassilvitskii, 2007) on an in-memory (weighted)
    sample, as scikit-learn's ``_kmeans_plusplus``.

    The first centre is a row drawn in proportion to its weight. Each later step draws
    ``n_local_trials`` (default ``2 + int(log(k))``) candidate rows in proportion to
    ``w * d²`` (d: distance to the closest centre so far) and keeps the one that leaves the
    lowest total ``sum(w * d²)``. The candidates' distances to every row come from one GEMM
    per chunk of rows, in float64. Rows of weight 0 are never chosen while a row of positive
    weight is left to choose (after that, a row already chosen is drawn again: a duplicate
    centre, which Lloyd's empty-cluster policy then moves). If no row has positive weight,
    every row counts alike.

    The draws come from ``rng`` only (one uniform for the first centre, ``n_local_trials`` per
    later step), so a seed gives the same centres wherever the sample is seeded.

    Examples
    --------
    >>> x = np.array([[0, 0], [0, 1], [10, 10]], np.float32)
    >>> kmeans_plusplus(x, 2, np.random.default_rng(0)).shape
    (2, 2)
    """
    n = len(x)
    if n < k:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}")
    x = np.asarray(x, dtype=np.float32)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights shape {w.shape} != ({n},)")
    if not w.sum() > 0:
        w = np.ones(n)
    trials = n_local_trials if n_local_trials is not None else 2 + int(np.log(k))
    x64 = x.astype(np.float64)
    x2 = np.einsum("ij,ij->i", x64, x64)
    weight_cum = np.cumsum(w)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = _weighted_pick(weight_cum, np.array([rng.random()]))[0]
    closest = _sq_distances(x64, x2, x64[chosen[:1]], np.empty((1, n)))[0]
    closest[chosen[0]] = 0.0  # exact, whatever the rounding of the expansion
    potential = float(closest @ w)
    trial_d2 = np.empty((trials, n))
    for i in range(1, k):
        u = rng.random(trials)
        if potential > 0:
            ids = _weighted_pick(np.cumsum(closest * w), u)
        else:  # every row of positive weight is a centre already: draw by weight alone
            ids = _weighted_pick(weight_cum, u)
        _sq_distances(x64, x2, x64[ids], trial_d2)
        np.minimum(trial_d2, closest, out=trial_d2)
        trial_d2[np.arange(trials), ids] = 0.0
        potentials = trial_d2 @ w
        best = int(np.argmin(potentials))
        chosen[i] = ids[best]
        closest = trial_d2[best].copy()
        potential = float(potentials[best])
    return x[chosen].copy()


_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al., 2014) on uint64, element-wise: a bijection that
    spreads every input bit over every output bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_key(*key: int) -> int:
    """One 64-bit key from a sequence of integers (a seed, a round, a purpose ...), folded
    with SplitMix64 in Python integers."""
    h = 0x6A09E667F3BCC908
    for part in key:
        z = ((h ^ (int(part) & _MASK64)) * 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h


def uniforms(ids: np.ndarray, *key: int) -> np.ndarray:
    """A uniform draw in [0, 1) for each row, a function of the row's id (its global position)
    and ``key`` alone: a counter-based generator. A row gets the same draw wherever it is
    staged and however the rows are split into blocks, so sampling and k-means|| rounds are
    independent of the partitioning.

    Examples
    --------
    >>> ids = np.arange(5, dtype=np.uint64)
    >>> split = np.concatenate([uniforms(ids[:2], 7), uniforms(ids[2:], 7)])
    >>> bool((uniforms(ids, 7) == split).all())
    True
    >>> bool((uniforms(ids, 7) != uniforms(ids, 8)).all())
    True
    """
    k = np.uint64(stream_key(*key))
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64 by design
        z = _mix64(np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + k)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


#: Stream keys of the engine's draws, so that no two purposes share a stream.
SAMPLE_STREAM, D2_STREAM, STAGE_STREAM = 0x53414D50, 0x4B4D5050, 0x53544147


def sample_threshold(n: int, n_rows: int) -> float:
    """The draw below which a row enters a sample of ``n`` of ``n_rows`` rows: a little above
    ``n / n_rows`` (four standard deviations), so that at least ``n`` rows pass almost surely
    and :func:`take_sample` keeps the ``n`` smallest draws."""
    if n >= n_rows:
        return 1.0
    return min(1.0, (n + 4.0 * np.sqrt(n) + 16.0) / n_rows)


def take_sample(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, weights)``: the ``n`` rows of smallest draw among ``parts``, each
    ``(rows, weights, ids, draws)`` of the rows that passed :func:`sample_threshold`, in the
    order of their ids. A function of the ids and draws alone, not of how the rows were split
    into parts.

    Examples
    --------
    >>> ids = np.arange(4, dtype=np.uint64)
    >>> x = np.arange(8, dtype=np.float32).reshape(4, 2)
    >>> u = np.array([0.4, 0.1, 0.3, 0.2])
    >>> take_sample([(x[:2], np.ones(2), ids[:2], u[:2]), (x[2:], np.ones(2), ids[2:], u[2:])],
    ...             2)[0].tolist()
    [[2.0, 3.0], [6.0, 7.0]]
    """
    x = np.concatenate([p[0] for p in parts])
    w = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([p[2] for p in parts])
    u = np.concatenate([p[3] for p in parts])
    if len(u) > n:
        keep = np.lexsort((ids, u))[:n]  # ties of the draw broken by id
        x, w, ids = x[keep], w[keep], ids[keep]
    order = np.argsort(ids, kind="stable")
    return np.ascontiguousarray(x[order], dtype=np.float32), np.asarray(w[order], np.float64)


def draw_d2(x: np.ndarray, centers: np.ndarray, scale: float, u: np.ndarray,
            weights: np.ndarray | None = None, *, threads: int | None = None) -> np.ndarray:
    """Rows kept with probability min(1, scale * w * d²(row, centers)): a k-means|| round.

    ``scale`` is l / cost with the weighted cost, so about l rows are kept whatever the weights
    sum to, and rows of weight 0 never are. ``u`` holds each row's uniform draw
    (:func:`uniforms` of the rows' ids), so the round keeps the same rows however they are
    split into blocks.

    Examples
    --------
    >>> x = np.array([[0, 0], [3, 4]], np.float32)
    >>> draw_d2(x, x[:1], 1.0, np.array([0.5, 0.5])).tolist()
    [[3.0, 4.0]]
    """
    d2 = min_d2(x, centers, threads=threads)
    if weights is not None:
        d2 *= np.asarray(weights, dtype=np.float64)
    return np.asarray(x[u < scale * d2], dtype=np.float32)
