"""The server's compiled one-row path against the model's own NumPy path, on random raw input:
missing values, zeros, negatives, huge and tiny values, batches of 1 to 64 rows (and fixed
sizes up to the compiled path's limit, kernels.SMALL_BATCH, and past it). One
preprocessing definition, one compiled copy, and this test keeps the two equal."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.core.settings import FEATURE_NAMES
from pipeline.model.artifact import SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.serving import kernels

WIDTH = len(FEATURE_NAMES)


def _model(k: int, seed: int) -> SegmentModel:
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(2, 1.5, (400, WIDTH)) * rng.choice([1, -1], (400, WIDTH), p=[0.9, 0.1])
    raw[rng.random(raw.shape) < 0.1] = np.nan
    pre = Preprocessor.fit(pd.DataFrame(raw, columns=FEATURE_NAMES), FEATURE_NAMES,
                           log_features=LOG_FEATURES)
    x = pre.transform(raw)
    centroids = x[rng.choice(len(x), k, replace=False)] + rng.normal(0, 0.1, (k, WIDTH))
    return SegmentModel(centroids, pre, {"cluster_ids": list(range(10, 10 + k)),
                                         "distance_p99": 3.0})


MODELS = [_model(1, 0), _model(2, 1), _model(5, 2), _model(12, 3)]

values = st.one_of(
    st.just(np.nan),  # missing
    st.sampled_from([0.0, -0.0, 1e30, -1e30, 1e-30, -1e-30, 5e-324, 1.0, -1.0]),
    st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-50, max_value=500, allow_nan=False),  # where customers are
)
batches = st.integers(1, min(kernels.SMALL_BATCH, 64)).flatmap(
    lambda n: arrays(np.float64, (n, WIDTH), elements=values))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=batches, which=st.integers(0, len(MODELS) - 1))
def test_compiled_one_row_path_equals_the_numpy_path(raw, which):
    model = MODELS[which]
    with np.errstate(all="ignore"):
        numpy_path = model.assign(raw)  # Preprocessor.transform, then the vectorised assign
        compiled = kernels.assign_small(model, raw)
    np.testing.assert_array_equal(compiled.cluster, numpy_path.cluster)
    np.testing.assert_array_equal(compiled.runner_up, numpy_path.runner_up)
    np.testing.assert_allclose(compiled.distance, numpy_path.distance, rtol=1e-6, atol=0)
    np.testing.assert_allclose(compiled.margin, numpy_path.margin, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(compiled.ood, numpy_path.ood)


@pytest.mark.parametrize("rows", [1, 100, 500, kernels.SMALL_BATCH, kernels.SMALL_BATCH + 1])
def test_the_server_path_gives_the_model_answer_at_every_batch_size(rows):
    model = MODELS[2]
    raw = np.random.default_rng(rows).lognormal(2, 1, (rows, WIDTH))
    raw[::3, 4] = np.nan
    served, own = kernels.assign(model, raw), model.assign(raw)
    np.testing.assert_array_equal(served.cluster, own.cluster)
    np.testing.assert_array_equal(served.runner_up, own.runner_up)
    np.testing.assert_allclose(served.distance, own.distance, rtol=1e-6, atol=0)
    assert rows == 1 or len(set(own.cluster.tolist())) > 1, "rows should fall in several clusters"


def test_a_frame_and_an_array_give_the_same_answer():
    model = MODELS[3]
    raw = np.random.default_rng(9).lognormal(2, 1, (40, WIDTH))
    frame = pd.DataFrame(raw[:, ::-1], columns=FEATURE_NAMES[::-1])  # columns by name
    np.testing.assert_array_equal(model.assign(frame).distance, model.assign(raw).distance)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=batches, which=st.integers(0, len(MODELS) - 1))
def test_the_servers_fused_small_pass_is_its_three_kernels(raw, which):
    """kernels.small_pass (the one-row path's single call) gives what the row check, the
    canary split's hash and the compiled assignment give one by one."""
    model = MODELS[which]
    pre = model.preprocessor.arrays
    lo, hi = np.full(WIDTH, -1e29), np.full(WIDTH, 1e29)  # some rows fall outside
    with np.errstate(all="ignore"):
        flags, bad, hashed, *answer = kernels.small_pass(
            raw, lo, hi, pre.log_cols, pre.medians, pre.means, pre.stds, model.centroids,
            model.cluster_ids, float(model.ood_threshold), 10_000)
        one_by_one = kernels.assign_small(model, raw)
    own_flags, own_bad = kernels.row_flags(raw, lo, hi)
    np.testing.assert_array_equal(flags, own_flags)
    assert bad == own_bad
    np.testing.assert_array_equal(hashed, kernels.row_hash_buckets(raw, 10_000))
    for name, value in zip(("cluster", "distance", "runner_up", "margin", "ood"), answer,
                           strict=True):
        np.testing.assert_array_equal(value, getattr(one_by_one, name), err_msg=name)
