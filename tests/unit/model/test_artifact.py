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
from tests.helpers.artifacts import tamper


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


# ---- tampered artifacts whose checksums were rewritten to match ---------------------------

def _set(path, value):
    def edit(meta):
        *parents, last = path.split(".")
        for key in parents:
            meta = meta[key]
        meta[last] = value
    return edit


def _pop(key):
    return lambda meta: meta.pop(key)


TAMPERED = [
    ({"checksums": lambda sums: list(sums.values())},
     "checksums.json must be an object with a sha256 string for each of ['centroids.npy', "
     "'model.json'], got list"),
    ({"checksums": lambda sums: {**sums, "model.json": 7}}, "checksums.json must be an object"),
    ({"centroids": lambda fh: np.save(fh, np.array([[None] * 12] * 4, dtype=object),
                                      allow_pickle=True)},
     "centroids.npy has dtype object; centroids must be floating point (float16/32/64), never "
     "objects (pickle)"),
    ({"centroids": lambda fh: np.save(fh, np.ones((4, 12), dtype=np.int64))},
     "centroids.npy has dtype int64; centroids must be floating point"),
    ({"centroids": lambda fh: np.save(fh, np.ones((4, 12), dtype=np.complex128))},
     "centroids.npy has dtype complex128"),
    ({"centroids": lambda fh: np.save(fh, np.full((4, 12), np.nan))},
     "centroids rows [0, 1, 2, 3] hold values that are not finite float32 numbers"),
    ({"centroids": lambda fh: np.save(fh, np.full((4, 12), 1e39))},
     "centroids rows [0, 1, 2, 3] hold values that are not finite float32 numbers"),
    ({"centroids": lambda fh: np.savez(fh, a=np.ones((4, 12)))},
     "centroids.npy is not an NPY array: the magic string is not correct"),
    ({"centroids": lambda fh: np.lib.format.write_array_header_1_0(
        fh, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 12)})},
     "centroids.npy has shape (1000000000000, 12); model.json says k=4 and 12 features"),
    ({"centroids": lambda fh: fh.write(np.lib.format.magic(1, 0))}, "centroids.npy is not an "
                                                                    "NPY array"),
    ({"centroids": lambda fh: (np.save(fh, np.ones((4, 12))), fh.truncate(200))},
     "centroids.npy is not a plain numeric NPY array"),
    ({"centroids": lambda fh: np.save(fh, np.ones((3, 12)))},
     "centroids.npy has shape (3, 12); model.json says k=4 and 12 features"),
    ({"meta": _set("preprocessing.stds", [0.0] * 12)},
     "preprocessing.stds of feature 'total_spend_30d' is 0.0; a standard deviation must be > 0"),
    ({"meta": _set("preprocessing.stds", [-1.0] * 12)}, "must be > 0"),
    ({"meta": _set("preprocessing.medians", [float("nan")] * 12)},
     "preprocessing.medians of feature 'total_spend_30d' is float nan; it must be a finite "
     "number"),
    ({"meta": _set("preprocessing.means", ["1"] * 12)},
     "preprocessing.means of feature 'total_spend_30d' is str '1'; it must be a finite number"),
    ({"meta": _set("preprocessing.means", [1.0] * 11)},
     "preprocessing.means must be a list of 12 numbers (one per feature)"),
    ({"meta": _set("preprocessing.stds", [10**400] * 12)}, "it must be a finite number"),
    ({"meta": _set("preprocessing.feature_names", ["a"] * 12)},
     "preprocessing.feature_names repeats a name"),
    ({"meta": _set("preprocessing.log_features", ["nope"])},
     "preprocessing.log_features ['nope'] are not among feature_names"),
    ({"meta": _set("preprocessing.extra", 1)}, "preprocessing has fields"),
    ({"meta": _pop("preprocessing")},
     "preprocessing must be an object with ['feature_names', 'log_features', 'means', "
     "'medians', 'stds'], got NoneType None"),
    ({"meta": _set("cluster_ids", ["a", "b", "c", "d"])},
     "cluster_ids must be 4 integers (one per centroid), got list ['a', 'b', 'c', 'd']"),
    ({"meta": _set("cluster_ids", [1, 1, 2, 3])}, "cluster_ids must be unique, got [1, 1, 2, 3]"),
    ({"meta": _set("cluster_ids", [True, False, True, False])}, "cluster_ids must be 4 integers"),
    ({"meta": _set("cluster_ids", [1.5, 2, 3, 4])}, "cluster_ids must be 4 integers"),
    ({"meta": _set("cluster_ids", [1, 2])}, "cluster_ids must be 4 integers"),
    ({"meta": _set("cluster_ids", [10**30, 1, 2, 3])}, "cluster_ids must be 4 integers"),
    ({"meta": _set("k", "4")}, "model.json field k must be an integer >= 1, got str '4'"),
    ({"meta": _set("k", 0)}, "model.json field k must be an integer >= 1"),
    ({"meta": _set("distance_p99", float("nan"))},
     "distance_p99 must be a finite number >= 0 (the out-of-distribution threshold), got "
     "float nan"),
    ({"meta": _set("distance_p99", "3")}, "distance_p99 must be a finite number >= 0"),
    ({"meta": _set("format_version", "1")},
     "model.json has format_version str '1'; this code reads 1"),
]


@pytest.mark.parametrize("edits, message", TAMPERED)
def test_a_tampered_artifact_with_matching_checksums_is_refused_naming_the_problem(
        model, tmp_path, edits, message):
    folder = tamper(model.save(tmp_path / "m"), **edits)
    with pytest.raises(ArtifactError) as err:
        SegmentModel.load(folder)
    assert message in str(err.value)
    assert str(folder) in str(err.value), "the error names the artifact"


def test_model_json_that_is_not_an_object_is_refused(model, tmp_path):
    folder = model.save(tmp_path / "m")
    (folder / "model.json").write_text("[1, 2]")
    tamper(folder)
    with pytest.raises(ArtifactError, match=r"model.json must be an object, got list \[1, 2\]"):
        SegmentModel.load(folder)
    (folder / "model.json").write_text("{not json")
    tamper(folder)
    with pytest.raises(ArtifactError, match="model.json is not readable JSON"):
        SegmentModel.load(folder)


def test_the_loader_never_unpickles(model, tmp_path, monkeypatch):
    """An object array is refused from its header, before its data is read (and np.load has
    allow_pickle=False): the pickle inside is never run."""
    import pickle

    ran = []

    class Payload:
        def __reduce__(self):
            return (ran.append, ("unpickled",))

    folder = tamper(model.save(tmp_path / "m"), centroids=lambda fh: np.save(
        fh, np.array([Payload()], dtype=object), allow_pickle=True))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: ran.append("pickle.loads"))
    with pytest.raises(ArtifactError, match="centroids.npy has dtype object"):
        SegmentModel.load(folder)
    assert ran == []


def test_the_valid_artifact_still_loads_after_the_checks(model, tmp_path):
    loaded = SegmentModel.load(tamper(model.save(tmp_path / "m")))
    assert loaded.cluster_ids.tolist() == [0, 1, 2, 3] and loaded.ood_threshold == 3.0
    assert SegmentModel(model.centroids, model.preprocessor, {}).ood_threshold == np.inf
