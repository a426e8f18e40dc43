"""The model artifact: round trip without pickle, checksums, assignment, and preprocessing
that fits with the same steps it transforms with."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.settings import FEATURE_NAMES
from pipeline.model.artifact import ArtifactError, SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.training.split import holdout_mask


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 1, (200, 12)), columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame, FEATURE_NAMES, log_features=LOG_FEATURES)
    return SegmentModel(rng.normal(size=(4, 12)).astype(np.float32), pre, {"distance_p99": 3.0})


def test_round_trip_without_pickle(model, tmp_path):
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "centroids.npy", "checksums.json", "model.json"]
    loaded = SegmentModel.load(tmp_path / "m")
    assert type(loaded) is SegmentModel, "the project's load gives the class that can save"
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    assert loaded.preprocessor == model.preprocessor
    assert loaded.preprocessor.log_features == LOG_FEATURES
    x = np.random.default_rng(1).uniform(0, 1, (50, 12))
    np.testing.assert_array_equal(loaded.assign(x).distance, model.assign(x).distance)


def test_tampered_artifact_refuses_to_load(model, tmp_path):
    folder = model.save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["distance_p99"] = 99.0
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="model.json has sha256 .* refusing a modified"):
        SegmentModel.load(folder)


def test_missing_checksums_refuse_to_load(model, tmp_path):
    folder = model.save(tmp_path / "m")
    (folder / "checksums.json").unlink()
    with pytest.raises(ArtifactError, match="no readable checksums.json"):
        SegmentModel.load(folder)


def test_saving_leaves_no_temporary_files(model, tmp_path):
    folder = model.save(tmp_path / "m")
    model.save(folder)  # over an existing artifact
    assert sorted(p.name for p in folder.iterdir()) == [
        "centroids.npy", "checksums.json", "model.json"]
    SegmentModel.load(folder)


def test_assignment_runner_up_and_ood(model):
    x = model.centroids[[1, 3]] + 0.01
    out = model.assign_scaled(x)
    assert out.cluster.tolist() == [1, 3]
    assert (out.runner_up != out.cluster).all() and (out.margin > 0).all()
    far = model.assign_scaled(np.full((1, 12), 50, np.float32))
    assert far.ood.tolist() == [True]


def test_assignment_by_hand():
    """Two features, no log, no scaling to speak of: distances computed by hand."""
    pre = Preprocessor(["a", "b"], [], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0])
    model = SegmentModel(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]), pre,
                         {"cluster_ids": [7, 8, 9], "distance_p99": 4.5})
    out = model.assign(np.array([[0.0, 0.0], [3.0, 0.0], [6.0, 8.0]]))
    assert out.cluster.tolist() == [7, 7, 8]
    assert out.runner_up.tolist() == [9, 9, 9]
    np.testing.assert_allclose(out.distance, [0.0, 3.0, 5.0])
    np.testing.assert_allclose(out.margin, [1.0, np.sqrt(10) - 3, np.sqrt(85) - 5])
    assert out.ood.tolist() == [False, False, True]


def test_missing_values_are_imputed_with_training_medians(model):
    pre = model.preprocessor
    expected = (np.asarray(pre.medians) - np.asarray(pre.means)) / np.asarray(pre.stds)
    assert np.allclose(pre.transform(np.full((1, 12), np.nan)), [expected], atol=1e-6)


def test_fit_uses_the_steps_transform_applies():
    """Fitted on skewed data with gaps: the training data, transformed, is standardised (mean
    0, std 1 per column) only if fit took its statistics after the same log and imputation."""
    rng = np.random.default_rng(3)
    raw = rng.lognormal(3, 1.5, (500, 3))
    raw[rng.random(raw.shape) < 0.2] = np.nan
    raw[:5, 0] = -4.0  # below zero: clipped before the log
    pre = Preprocessor.fit(pd.DataFrame(raw, columns=["x", "y", "z"]), ["x", "y", "z"],
                           log_features=["x", "z"])
    z = pre.transform(raw).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-5)
    logged = np.log1p(np.maximum(raw[:, 0], 0.0))
    assert pre.medians[0] == pytest.approx(np.nanmedian(logged))
    assert pre.medians[1] == pytest.approx(np.nanmedian(raw[:, 1]))


def test_fit_refuses_bad_feature_lists():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [np.nan, np.nan]})
    with pytest.raises(ValueError, match=r"log_features \['c'\] are not among feature_names"):
        Preprocessor.fit(frame, ["a", "b"], log_features=["c"])
    with pytest.raises(ValueError, match=r"feature columns \['b'\] have no values at all"):
        Preprocessor.fit(frame, ["a", "b"])
    with pytest.raises(ValueError, match=r"lacks feature columns \['q'\]; it has \['a', 'b'\]"):
        Preprocessor.fit(frame, ["a", "q"])


def test_holdout_split_is_stable_and_about_a_fifth():
    ids = np.arange(100_000, 120_000)
    mask = holdout_mask(ids, 42)
    assert 0.18 < mask.mean() < 0.22
    assert (holdout_mask(ids[::-1], 42)[::-1] == mask).all()
