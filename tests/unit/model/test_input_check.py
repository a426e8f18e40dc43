"""The one definition of what a row may hold (``kmeans_segments.InputCheck``): what the artifact
records of it, the messages, and the server's compiled flags against the model's NumPy ones."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.core.settings import FEATURE_NAMES, FEATURES, ServingSettings
from pipeline.model import kmeans_segments
from pipeline.model.artifact import ArtifactError, SegmentModel
from pipeline.model.kmeans_segments import InputCheck, InputError
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.serving import kernels
from pipeline.serving.errors import InvalidInput
from pipeline.serving.model import SegmentService
from tests.helpers.artifacts import tamper

WIDTH = len(FEATURE_NAMES)
SHARE = FEATURE_NAMES.index("discount_share")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.lognormal(1, 1, (200, WIDTH)), columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
    folder = tmp_path_factory.mktemp("check") / "m"
    SegmentModel(pre.transform(frame)[:3], pre, {}).save(folder)
    return folder


def test_the_artifact_records_the_settings_ranges_and_the_default_tolerance(saved):
    meta = json.loads((saved / "model.json").read_text())
    assert meta["input_ranges"] == {n: [FEATURES[n]["min"], FEATURES[n]["max"]]
                                    for n in FEATURE_NAMES}
    assert meta["range_tolerance"] == ServingSettings.model_fields["range_tolerance"].default
    assert kmeans_segments.DEFAULT_RANGE_TOLERANCE == meta["range_tolerance"]
    model = SegmentModel.load(saved)
    server = SegmentService("m").input_check(FEATURE_NAMES)
    np.testing.assert_array_equal(model.input_check.lo, server.lo)
    np.testing.assert_array_equal(model.input_check.hi, server.hi)


def test_the_model_and_the_server_refuse_a_batch_with_the_same_message(saved):
    model = SegmentModel.load(saved)
    rows = np.full((8, WIDTH), 0.5)
    rows[1] = np.nan
    rows[2, SHARE] = 50.0
    rows[3, 0] = -np.inf
    rows[4, 0] = 1e39
    rows[5:, SHARE] = 12.0
    with pytest.raises(InputError) as refused:
        model.check_input(pd.DataFrame(rows, columns=FEATURE_NAMES))
    message = str(refused.value)
    assert message == (
        f"row 1: no feature value (all null); a row needs at least one known value of "
        f"{FEATURE_NAMES}; "
        "row 2: feature discount_share: 50 is outside the accepted range [-10, 11] (valid range "
        "[0, 1] widened by 10 times its width (KMEANS_RANGE_TOLERANCE)); "
        "row 3: feature total_spend_30d: -inf is not a finite number (accepted range "
        "[-1e+07, 1.1e+07]); "
        "row 4: feature total_spend_30d: 1e+39 is outside the accepted range [-1e+07, 1.1e+07] "
        "(valid range [0, 1e+06] widened by 10 times its width (KMEANS_RANGE_TOLERANCE)); "
        "row 5: feature discount_share: 12 is outside the accepted range [-10, 11] (valid range "
        "[0, 1] widened by 10 times its width (KMEANS_RANGE_TOLERANCE)) (and 2 more rows)")
    service = SegmentService("m")
    service.load(model, "1")
    with pytest.raises(InvalidInput) as served:
        service.predict_vectors(rows)
    assert str(served.value) == message


def test_a_frame_under_copy_on_write_is_copied_before_the_in_place_steps(saved):
    """pandas 3 is copy-on-write: ``to_numpy`` of a frame hands out a read-only view, and the
    steps work in place (``assignment destination is read-only``). pandas 2's copy-on-write
    mode behaves the same; the model must copy, and leave the caller's frame alone."""
    model = SegmentModel.load(saved)
    rows = np.full((3, WIDTH), 2.0)
    rows[1, 4] = np.nan
    expected = model.assign(rows)
    with pd.option_context("mode.copy_on_write", True):
        frame = pd.DataFrame(rows, columns=FEATURE_NAMES)
        assert not frame[FEATURE_NAMES].to_numpy(dtype=np.float64).flags.writeable
        before = frame.copy()
        got = model.assign(frame)
        checked = model.check_input(frame)
    assert got.cluster.tolist() == expected.cluster.tolist()
    np.testing.assert_array_equal(got.distance, expected.distance)
    assert checked.flags.writeable
    pd.testing.assert_frame_equal(frame, before)


def test_an_artifact_without_ranges_still_refuses_empty_and_non_finite_rows(saved, tmp_path):
    """An artifact written before the ranges were recorded: float32's range for every
    feature, and no row without a value."""
    import shutil

    folder = tamper(shutil.copytree(saved, tmp_path / "old"), meta=lambda m: (
        m.pop("input_ranges"), m.pop("range_tolerance")))
    model = SegmentModel.load(folder)
    rows = np.full((3, WIDTH), 0.5)
    rows[0, SHARE] = 50.0  # fine without a range
    model.check_input(rows[:1])
    rows[1] = np.nan
    rows[2, 3] = 1e39
    with pytest.raises(InputError, match=r"^row 1: no feature value .*; row 2: feature "
                                         r"sessions_30d: 1e\+39 is outside the accepted range "
                                         r"\[-3\.40282e\+38, 3\.40282e\+38\] \(float32's range\)$"):
        model.check_input(rows)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(input_ranges=[0, 1]), "input_ranges must be an object"),
    (lambda m: m["input_ranges"].update(age=[0, 1]), "input_ranges names 'age'"),
    (lambda m: m["input_ranges"].update(discount_share=[1, 0]),
     "input_ranges of feature 'discount_share' must be \\[min, max\\]"),
    (lambda m: m["input_ranges"].update(discount_share=[0, "1"]), "must be \\[min, max\\]"),
    (lambda m: m.update(range_tolerance=-1), "range_tolerance must be a finite number >= 0"),
    (lambda m: m.update(range_tolerance=True), "range_tolerance must be a finite number"),
])
def test_a_tampered_input_check_is_refused_naming_the_field(saved, tmp_path, edit, message):
    import shutil

    folder = tamper(shutil.copytree(saved, tmp_path / "t"), meta=edit)
    with pytest.raises(ArtifactError, match=message):
        SegmentModel.load(folder)


VALUES = st.one_of(
    st.just(np.nan), st.just(np.inf), st.just(-np.inf),
    st.sampled_from([0.0, -0.0, -10.0, 11.0, 11.000001, -10.000001, 1e7, 1.1e7, 1.1e7 + 2,
                     3.4028234663852886e38, 3.5e38, -3.5e38, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(x=st.integers(1, 20).flatmap(lambda n: arrays(np.float64, (n, WIDTH), elements=VALUES)),
       tolerance=st.sampled_from([0.0, 0.5, 10.0]), ranged=st.booleans())
def test_the_servers_compiled_flags_are_the_models_flags(x, tolerance, ranged):
    ranges = {n: (FEATURES[n]["min"], FEATURES[n]["max"]) for n in FEATURE_NAMES} if ranged \
        else {}
    check = InputCheck(FEATURE_NAMES, ranges, tolerance)
    flags, bad = check.flags(x)
    compiled, compiled_bad = kernels.row_flags(np.ascontiguousarray(x), check.lo, check.hi)
    np.testing.assert_array_equal(flags, compiled)
    assert bad == compiled_bad
