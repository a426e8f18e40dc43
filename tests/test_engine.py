"""Engine correctness: hand-computed cases, and agreement between in-process, Spark and
scikit-learn from the same initial centroids."""

import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from pipeline.engine import KMeans, assign, fit_sweep, partial_stats
from pipeline.engine.estimator import ArraySource, EmptyClusterWarning, lloyd


def test_assign_hand_computed():
    x = np.array([[0, 0], [1, 0], [9, 9], [10, 10]], dtype=np.float32)
    c = np.array([[0, 0], [10, 10]], dtype=np.float32)
    labels, d2 = assign(x, c)
    assert labels.tolist() == [0, 0, 1, 1]
    assert d2.tolist() == [0.0, 1.0, 2.0, 0.0]
    (sums, counts, inertia), = partial_stats(x, [c])
    assert counts.tolist() == [2, 2]
    assert sums.tolist() == [[1, 0], [19, 19]]
    assert inertia == 3.0


def test_blobs_are_recovered():
    x, truth = make_blobs(3000, n_features=5, centers=4, cluster_std=0.5, random_state=1)
    model = KMeans(4, n_init=3, seed=0).fit(x.astype(np.float32))
    assert adjusted_rand_score(truth, model.predict(x)) >= 0.99


def test_matches_scikit_learn_lloyd_from_same_init():
    x, _ = make_blobs(2000, n_features=6, centers=5, cluster_std=2.0, random_state=3)
    x = x.astype(np.float32)
    init = x[:5].copy()
    ours = KMeans(5, init=init, max_iter=30, tol=0).fit(x)
    sk = SkKMeans(5, init=init, n_init=1, max_iter=30, tol=0, algorithm="lloyd").fit(x)
    assert np.abs(ours.cluster_centers_ - sk.cluster_centers_).max() <= 1e-4
    assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-5)


def test_digits_inertia_within_one_percent_of_scikit_learn():
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    ours = KMeans(10, n_init=4, seed=0, max_iter=300).fit(x)
    sk = SkKMeans(10, n_init=4, random_state=0, max_iter=300).fit(x)
    assert ours.inertia_ <= sk.inertia_ * 1.01


def test_sweep_fits_every_k_in_one_pass_per_iteration():
    x, _ = make_blobs(1000, n_features=3, centers=3, random_state=0)
    source = ArraySource(x.astype(np.float32))
    calls = []
    original = source.step
    source.step = lambda cs: calls.append(len(cs)) or original(cs)
    result = fit_sweep(source, [2, 3, 4], init="k-means++", max_iter=5, tol=0, seed=1)
    assert sorted(result.fits) == [2, 3, 4]
    assert calls[0] == 3, "the first pass carries all three K"
    assert len(calls) == 6, "5 iterations plus one final scoring pass"


def test_kmeans_parallel_init_is_seeded_and_good():
    x, truth = make_blobs(5000, n_features=4, centers=6, cluster_std=0.4, random_state=7)
    x = x.astype(np.float32)
    a = fit_sweep(ArraySource(x), [6], init="k-means||", max_iter=1, tol=0, seed=3).fits[6]
    b = fit_sweep(ArraySource(x), [6], init="k-means||", max_iter=1, tol=0, seed=3).fits[6]
    c = fit_sweep(ArraySource(x), [6], init="k-means||", max_iter=1, tol=0, seed=4).fits[6]
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)
    # one Lloyd step after k-means|| already separates well-spread blobs
    assert adjusted_rand_score(truth, assign(x, a.centroids)[0]) >= 0.99


def test_sample_weights_equal_repeated_rows():
    x, _ = make_blobs(600, n_features=3, centers=3, random_state=2)
    x = x.astype(np.float32)
    w = np.random.default_rng(0).integers(1, 4, len(x))
    init = x[:3].copy()
    weighted = KMeans(3, init=init, max_iter=20, tol=0).fit(x, sample_weight=w)
    repeated = KMeans(3, init=init, max_iter=20, tol=0).fit(np.repeat(x, w, axis=0))
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, atol=1e-4)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-5)


def test_empty_cluster_is_relocated_and_reported():
    x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=np.float32)
    init = np.array([[0, 0.5], [10, 10.5], [100, 100]], dtype=np.float32)
    with pytest.warns(EmptyClusterWarning, match="1 empty cluster"):
        fits = lloyd(ArraySource(x), {(3, 0): init}, max_iter=10, tol=0,
                     empty_cluster="farthest", sample=x)
    fit = fits[(3, 0)]
    assert fit.empty_events and fit.empty_events[0]["cluster"] == 2
    assert (fit.counts > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"n_clusters": 0}, "n_clusters should be >= 1"),
    ({"n_clusters": 2, "n_init": 0}, "n_init=0 should be >= 1"),
    ({"n_clusters": 2, "empty_cluster": "drop"}, "empty_cluster='drop' should be one of"),
    ({"n_clusters": 9}, "n_samples=4 should be >= n_clusters=9"),
    ({"n_clusters": 2, "init": "random"}, "init='random' should be one of"),
])
def test_bad_parameters_name_the_value(kwargs, message):
    x = np.zeros((4, 2), dtype=np.float32) + np.arange(4, dtype=np.float32)[:, None]
    with pytest.raises(ValueError, match=message):
        KMeans(**kwargs).fit(x)


def test_nan_input_is_refused():
    with pytest.raises(ValueError, match="NaN or infinity"):
        KMeans(2).fit(np.array([[0, np.nan], [1, 1]], dtype=np.float32))


def test_kmeans_parallel_draws_respect_weights():
    from pipeline.engine.estimator import kmeans_parallel

    x, _ = make_blobs(4000, n_features=2, centers=4, random_state=3)
    x = x.astype(np.float32)
    w = np.zeros(len(x))
    w[:1000] = 1e-3  # tiny weights: the draw size must not depend on their scale
    candidates, weights = kmeans_parallel(ArraySource(x, w), 4, seed=0, rounds=3)
    assert 4 <= len(candidates) <= 100
    zero_rows = {tuple(r) for r in x[1000:]}
    assert not any(tuple(c) in zero_rows for c in candidates[1:]), "weight-0 rows never drawn"
