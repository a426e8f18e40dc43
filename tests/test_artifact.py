import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.settings import FEATURE_NAMES
from pipeline.model.artifact import ArtifactError, SegmentModel
from pipeline.model.preprocessing import Preprocessor
from pipeline.training.split import holdout_mask


@pytest.fixture
def model():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 1, (200, 12)), columns=FEATURE_NAMES)
    pre = Preprocessor.fit(frame)
    return SegmentModel(rng.normal(size=(4, 12)).astype(np.float32), pre, {"distance_p99": 3.0})


def test_round_trip_without_pickle(model, tmp_path):
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "centroids.npy", "checksums.json", "model.json"]
    loaded = SegmentModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    assert loaded.preprocessor == model.preprocessor


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


def test_assignment_runner_up_and_ood(model):
    x = model.centroids[[1, 3]] + 0.01
    out = model.assign_scaled(x)
    assert out.cluster.tolist() == [1, 3]
    assert (out.runner_up != out.cluster).all() and (out.margin > 0).all()
    far = model.assign_scaled(np.full((1, 12), 50, np.float32))
    assert far.ood.tolist() == [True]


def test_missing_values_are_imputed_with_training_medians(model):
    pre = model.preprocessor
    expected = (np.asarray(pre.medians) - np.asarray(pre.means)) / np.asarray(pre.stds)
    assert np.allclose(pre.transform(np.full((1, 12), np.nan)), [expected], atol=1e-6)


def test_holdout_split_is_stable_and_about_a_fifth():
    ids = np.arange(100_000, 120_000)
    mask = holdout_mask(ids, 42)
    assert 0.18 < mask.mean() < 0.22
    assert (holdout_mask(ids[::-1], 42)[::-1] == mask).all()
