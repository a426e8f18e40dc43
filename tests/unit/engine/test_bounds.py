"""Hamerly's bounds give plain Lloyd's numbers: the same sums and counts in every iteration,
bit for bit, on data with exact ties and near-ties between centroids; and they skip most rows
once the fit settles."""

import numpy as np
import pytest

from pipeline.engine.bounds import BoundedLloyd, error_margin
from pipeline.engine.estimator import ArraySource, fit_sweep, lloyd
from pipeline.engine.kernel import assign, nearest_exact, partial_stats


def _ties(seed: int = 0, n: int = 30_000, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Blobs, plus rows exactly halfway between two starting centroids and rows a hair (a
    few float32 ulps) off halfway: the cases where a bound that rounds the wrong way would
    keep a row plain Lloyd moves."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (12, d)).astype(np.float32)
    x = (centres[rng.integers(0, 12, n)] + rng.normal(0, 1.5, (n, d))).astype(np.float32)
    start = x[rng.choice(n, 20, replace=False)].copy()  # K=20: bounds pay from K=16
    half = ((start[0] + start[1]) / 2).astype(np.float32)
    off = np.spacing(np.abs(half)).astype(np.float32)
    ties = np.stack([half, half + off, half - off, half + 3 * off,
                     (start[2] + start[3]) / 2])
    return np.concatenate([x, np.repeat(ties, 200, axis=0)]).astype(np.float32), start


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_iteration_has_plain_lloyds_sums_and_counts(threads, weighted):
    x, c = _ties()
    w = np.random.default_rng(1).uniform(0.5, 2, len(x)) if weighted else None
    bounded = BoundedLloyd(x, w, threads=threads)
    moved = []
    for _ in range(25):
        plain = partial_stats(x, [c], w, threads=threads)[0]
        got = bounded.step([c])[0]
        np.testing.assert_array_equal(got[0], plain[0])
        np.testing.assert_array_equal(got[1], plain[1])
        assert np.isnan(got[2])
        new = (plain[0] / np.maximum(plain[1], 1e-300)[:, None]).astype(np.float32)
        moved.append(float(np.abs(new - c).max()))
        c = new
    # the bounds did their job: most rows skipped once the centroids settle
    assert bounded.skipped[0] == [0.0]
    assert max(s[0] for s in bounded.skipped[-5:]) > 0.5, bounded.skipped
    assert moved[-1] < moved[0]


def test_a_fit_with_bounds_is_a_fit_without():
    x, start = _ties(seed=3)
    inits = {(20, 0): start, (20, 1): start[::-1].copy(), (16, 0): start[:16].copy()}
    common = {"max_iter": 60, "tol": 1e-6, "empty_cluster": "farthest", "sample": x[:5000]}
    bounded = ArraySource(x)
    with_bounds = lloyd(bounded, inits, **common)
    plain = lloyd(ArraySource(x, bounds=False), inits, **common)
    assert bounded._bounded is not None and len(bounded._bounded.skipped) > 5
    for key in inits:  # entries converge at different iterations: Lloyd drops them one by one
        np.testing.assert_array_equal(with_bounds[key].centroids, plain[key].centroids)
        assert with_bounds[key].n_iter == plain[key].n_iter
        assert with_bounds[key].inertia == plain[key].inertia  # a plain last pass scores
        np.testing.assert_array_equal(assign(x, with_bounds[key].centroids)[0],
                                      assign(x, plain[key].centroids)[0])


def test_sweep_results_are_unchanged_by_bounds():
    x, _ = _ties(seed=5, n=20_000)
    a = fit_sweep(ArraySource(x), [16, 18], seed=2, max_iter=40)
    b = fit_sweep(ArraySource(x, bounds=False), [16, 18], seed=2, max_iter=40)
    for k in (16, 18):
        np.testing.assert_array_equal(a.fits[k].centroids, b.fits[k].centroids)


def test_far_from_the_origin_rows_are_recomputed_not_trusted():
    """Features around 10,000 with unit spread: float32's ``-2 x·c + |c|²`` cannot tell the
    clusters apart to better than ~10, so the margin keeps every row recomputed rather than
    skipped on a bound that rounding has made meaningless, and the sums stay Lloyd's."""
    rng = np.random.default_rng(4)
    x = (10_000 + rng.normal(0, 1, (5000, 4))).astype(np.float32)
    c = x[:20].copy()
    bounded = BoundedLloyd(x, threads=1)
    for _ in range(5):
        plain = partial_stats(x, [c], threads=1)[0]
        got = bounded.step([c])[0]
        np.testing.assert_array_equal(got[0], plain[0])
        c = (plain[0] / np.maximum(plain[1], 1e-300)[:, None]).astype(np.float32)
    assert error_margin(4) * 2 * 4e8 > 1.0  # the margin dwarfs the distances here


def test_bounds_are_left_out_where_they_would_not_fit_or_pay():
    assert BoundedLloyd.fits(1_000_000, [50]) and not BoundedLloyd.fits(1_000_000, [50] * 40)
    assert not BoundedLloyd.fits(5_000, [50]) and not BoundedLloyd.fits(1_000_000, [8])
    source = ArraySource(np.zeros((5_000, 2), np.float32))
    source.lloyd_step([np.zeros((20, 2), np.float32)])
    assert source._bounded is None


def test_a_pass_settles_near_ties_the_same_way_whatever_the_product_shape():
    """The GEMM's rounding depends on the BLAS kernel (seen: OpenBLAS's Zen kernels give
    other float32 values than its Haswell ones), the product's shape and a row's place in it.
    A pass must not: the same centroids alone, beside other K's, over other chunkings and in
    the bounds' recomputed rows give the same sums and counts, and the near ties go where
    float64 puts them."""
    x, c = _ties(seed=3)
    others = [c[:16].copy(), c[::-1].copy(), c[:5].copy()]
    alone = partial_stats(x, [c], threads=1)[0]
    for threads in (1, 2):
        beside = partial_stats(x, others[:1] + [c] + others[1:], threads=threads)[1]
        np.testing.assert_array_equal(beside[0], alone[0])
        np.testing.assert_array_equal(beside[1], alone[1])
    shifted = partial_stats(x[7:], [c], threads=1)[0]  # every row in another place of its chunk
    head = partial_stats(x[:7], [c], threads=1)[0]
    np.testing.assert_array_equal(shifted[1] + head[1], alone[1])
    bounded = BoundedLloyd(x, None, threads=2).step([c])[0]
    np.testing.assert_array_equal(bounded[1], alone[1])
    # every row goes to its nearest centroid; one nearly as near as another, where float32
    # cannot tell, by float64 distances (the first of equals)
    exact = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    order = np.sort(exact, axis=1)
    scale = (x.astype(np.float64) ** 2).sum(1) + (c.astype(np.float64) ** 2).sum(1).max()
    close = np.flatnonzero(order[:, 1] - order[:, 0] <= 3 * error_margin(x.shape[1]) * scale)
    assert len(close) >= 800  # the halfway rows and those a few ulps off
    labels = np.argmin(exact, axis=1)
    labels[close] = [nearest_exact(x, int(i), c, 0, len(c)) for i in close]
    np.testing.assert_array_equal(alone[1], np.bincount(labels, minlength=len(c)))
