"""The engine's KMeans against scikit-learn's own estimator checks."""

import re

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.utils import shuffle
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

from pipeline.engine.estimator import KMeans

#: The checks KMeans is expected to fail, as ``{check name: reason}``; the KMeans docstring
#: (Notes) names the same list. Empty: the float32 engine preserves float32 and float64 in
#: ``transform``, validates input as scikit-learn does, and seeds k-means++ on the distinct
#: rows in sorted order, so weights act as repeated rows in the weight-equivalence check.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

#: Small and fast, like scikit-learn's own test instance of its KMeans; both initialisations.
ESTIMATORS = [KMeans(n_clusters=2, n_init=2, max_iter=5, random_state=0),
              KMeans(n_clusters=2, init="k-means++", n_init=2, max_iter=5, random_state=0)]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda _est: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_the_docstring_names_the_expected_failures():
    doc = " ".join(KMeans.__doc__.split())
    notes = doc[doc.index("Notes -----"):doc.index("Examples --------")]
    assert set(re.findall(r"check_\w+", notes)) == set(EXPECTED_FAILED_CHECKS)
    if not EXPECTED_FAILED_CHECKS:
        assert "expected failures: none" in notes


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.init)
def test_every_parameter_is_validated_against_its_declared_bounds(estimator):
    check_param_validation(type(estimator).__name__, estimator)


def test_integer_weights_equal_repeated_rows_in_any_order_with_k_means_plus_plus():
    # beyond the check's 15 rows: k-means++ seeds on the sorted distinct rows of its sample
    # (here all 1,500), so neither order nor repetition changes the draws; k-means|| keeps
    # each row on its own draw, so there the two agree only in distribution
    x, _ = make_blobs(1500, n_features=4, centers=5, cluster_std=1.5, random_state=3)
    w = np.random.default_rng(0).integers(0, 4, len(x))
    xs, ws = shuffle(x, w, random_state=1)
    weighted = KMeans(5, init="k-means++", random_state=2).fit(xs, sample_weight=ws)
    repeated = KMeans(5, init="k-means++", random_state=2).fit(np.repeat(x, w, axis=0))
    assert weighted.n_iter_ == repeated.n_iter_, "the tolerance weighs rows as copies too"
    order_w = np.lexsort(weighted.cluster_centers_.T)
    order_r = np.lexsort(repeated.cluster_centers_.T)
    np.testing.assert_allclose(weighted.cluster_centers_[order_w],
                               repeated.cluster_centers_[order_r], atol=1e-4)
    assert weighted.inertia_ == pytest.approx(repeated.inertia_, rel=1e-5)
