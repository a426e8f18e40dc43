"""The promotion gates on real small data: a k-means fit on the test lake's snapshot, its
holdout metrics, the Great Expectations result and Evidently drift reports."""

import json

import numpy as np
import pytest

from pipeline.core.settings import FEATURE_NAMES, load_settings
from pipeline.data.features import Snapshot
from pipeline.data.validation import validate_frame
from pipeline.engine.estimator import KMeans
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.promotion import gates
from pipeline.promotion.drift import column_drift, reference_sample
from pipeline.training.evaluation import cluster_metrics
from pipeline.training.split import holdout_mask
from tests.helpers.homes import shifted

DEFAULTS = load_settings()
QUALITY = {"min_silhouette_lo": DEFAULTS.gates.gate_min_silhouette_lo,
           "max_davies_bouldin": DEFAULTS.gates.gate_max_davies_bouldin,
           "min_cluster_share": DEFAULTS.gates.gate_min_cluster_share}


@pytest.fixture(scope="module")
def frame(snapshot_path):
    return Snapshot.load(snapshot_path).frame()


@pytest.fixture(scope="module")
def split(frame):
    hold = holdout_mask(frame["customer_id"].to_numpy(), 42)
    pre = Preprocessor.fit(frame[~hold], FEATURE_NAMES, log_features=LOG_FEATURES)
    return pre.transform(frame[~hold]), pre.transform(frame[hold])


@pytest.fixture(scope="module")
def fitted(split):
    """K=5 (the generator's five segments): centroids and training shares."""
    x, _ = split
    model = KMeans(5, n_init=2, random_state=0).fit(x)
    return model.cluster_centers_, model.cluster_sizes_ / model.cluster_sizes_.sum()


def _quality(split, centroids, shares, relocations=0, **thresholds):
    metrics = cluster_metrics(split[1], centroids, seed=0)
    return gates.quality_gate(metrics, list(shares), relocations, **{**QUALITY, **thresholds})


# ---------------------------------------------------------------- data


def test_data_gate_reads_the_great_expectations_result(frame, tmp_path):
    good = validate_frame(frame, tmp_path, name="good", min_rows=200, max_null_share=0.1)
    result = gates.data_gate(json.loads(open(good.report_json).read()))
    assert result.status == "passed" and result.figures["evaluated"] == 40
    bad = validate_frame(frame.assign(discount_share=frame.discount_share + 2), tmp_path,
                         name="bad", min_rows=200, max_null_share=0.1)
    result = gates.data_gate(json.loads(open(bad.report_json).read()))
    assert result.status == "refused"
    assert result.message.startswith("data gate refused: 1 of 40 expectations failed: "
                                     "expect_column_values_to_be_between")
    assert "discount_share" in result.message
    assert gates.data_gate(None).message.startswith("data gate refused: the snapshot has no "
                                                    "validation report")


# ---------------------------------------------------------------- quality


def test_quality_gate_passes_a_good_fit_with_the_defaults(split, fitted):
    result = _quality(split, *fitted)
    assert result.status == "passed", result.message
    f = result.figures
    assert f["silhouette_lo"] >= QUALITY["min_silhouette_lo"]
    assert f["davies_bouldin"] <= QUALITY["max_davies_bouldin"]
    assert f["empty_clusters"] == 0 and f["smallest_cluster_share"] > 0.05


def test_quality_refusal_names_each_failed_check_and_its_numbers(split, fitted):
    result = _quality(split, *fitted, min_silhouette_lo=0.6, max_davies_bouldin=0.5)
    f = result.figures
    assert result.status == "refused"
    assert result.message == (
        f"quality gate refused: silhouette CI lower bound {f['silhouette_lo']:.3f} < threshold "
        f"0.6; Davies-Bouldin {f['davies_bouldin']:.3f} > threshold 0.5")


def test_quality_refuses_an_empty_a_tiny_and_a_relocated_cluster(split, fitted):
    centroids, shares = fitted
    far = np.vstack([centroids, np.full((1, centroids.shape[1]), 50.0, dtype=np.float32)])
    empty = _quality(split, far, [*shares, 0.0])
    assert empty.status == "refused" and "1 of 6 clusters empty" in empty.message
    tiny = _quality(split, centroids, [*shares[:-1], 0.004], relocations=2)
    assert "smallest cluster holds 0.40% of the rows < minimum 1.00%" in tiny.message
    assert "2 empty-cluster relocation(s) during the fit" in tiny.message


# ---------------------------------------------------------------- comparison


def test_comparison_first_model_passes_with_a_note(split, fitted):
    result = gates.comparison_gate({"challenger": cluster_metrics(split[1], fitted[0])},
                                   tolerance=0.05)
    assert result.status == "passed" and "no champion yet" in result.message


def test_comparison_refuses_a_challenger_worse_than_the_champion(split, fitted):
    x, x_hold = split
    champion = cluster_metrics(x_hold, fitted[0], seed=0)
    # The challenger: five rows of the data taken as centroids, no iterations at all.
    rows = x[np.random.default_rng(3).choice(len(x), 5, replace=False)]
    challenger = cluster_metrics(x_hold, rows, seed=0)
    evaluation = {"challenger": challenger, "champion": champion, "champion_version": "4"}
    result = gates.comparison_gate(evaluation, tolerance=0.05)
    assert result.status == "refused", result.message
    floor = champion["silhouette"] - 0.05 * abs(champion["silhouette"])
    assert (f"comparison gate refused: challenger silhouette {challenger['silhouette']:.3f} < "
            f"champion version 4's {champion['silhouette']:.3f} less 5% tolerance "
            f"({floor:.3f})") in result.message
    assert result.message.endswith(f"on the same holdout of {challenger['sample_rows']} rows")
    same = gates.comparison_gate({**evaluation, "challenger": champion}, tolerance=0.05)
    assert same.status == "passed", same.message


# ---------------------------------------------------------------- drift


def _drift(current, reference, path):
    return column_drift(current, reference, path, column_threshold=0.1, share_threshold=0.3)


def test_drift_not_detected_between_two_halves_of_one_population(frame, tmp_path):
    half = frame["customer_id"] % 2 == 0
    figures = _drift(frame[half], frame[~half], tmp_path / "same.html")
    assert figures["drift_share"] <= 0.3 and figures["columns"] == 12, figures
    assert gates.drift_gate(figures).status == "passed"
    assert (tmp_path / "same.html").stat().st_size > 100_000


def test_drift_detected_on_a_shifted_snapshot_needs_review(frame, tmp_path):
    half = frame["customer_id"] % 2 == 0
    figures = _drift(shifted(frame[half]), frame[~half], tmp_path / "shifted.html")
    assert set(figures["drifted_columns"]) >= {"total_spend_30d", "sessions_30d", "tenure_days"}
    assert figures["drift_share"] >= 0.4
    result = gates.drift_gate(figures)
    assert result.status == "review"
    assert result.message.startswith(f"drift gate needs review: drift share "
                                     f"{figures['drift_share']:.2f} (")
    assert "> threshold 0.3; report " in result.message
    assert (tmp_path / "shifted.html").stat().st_size > 100_000


def test_reference_sample_keeps_features_only_and_is_seeded(frame):
    a = reference_sample(frame, 300, seed=1)
    assert list(a.columns) == FEATURE_NAMES and len(a) == 300
    assert a.equals(reference_sample(frame, 300, seed=1))
    assert len(reference_sample(frame, 10**6, seed=1)) == len(frame)


def test_review_links_the_report_where_the_reports_are_served(settings):
    """With reports_url (set for Airflow's components to the plugin's /kmeans/reports), the
    drift review body carries a link a reviewer opens in one click; without it, the path."""
    report = settings.reports_dir / "drift" / "run 1-vs-v1.html"
    assert gates.report_url(settings, report) is None
    served = settings.model_copy(update={"reports_url": "http://127.0.0.1:8080/kmeans/reports/"})
    assert gates.report_url(served, report) == (
        "http://127.0.0.1:8080/kmeans/reports/drift/run%201-vs-v1.html")
    assert gates.report_url(served, settings.home / "elsewhere.html") is None
    assert gates._report_link(served, str(report)) == (
        "**[Open the Evidently drift report](http://127.0.0.1:8080/kmeans/reports/drift/"
        f"run%201-vs-v1.html)** (`{report}`)")
    assert gates._report_link(settings, str(report)) == f"Evidently report: `{report}`"


def test_the_metric_sample_keeps_small_segments_and_population_means():
    """A segment of 0.2% of 40,000 holdout rows: a uniform 4,000-row sample would hold about 8
    of its rows; the stratified sample holds all 80 and still weighs it at 0.2%."""
    from sklearn.datasets import make_blobs

    from pipeline.training.evaluation import stratified_sample

    x, truth = make_blobs([19_960, 19_960, 80], n_features=3, cluster_std=0.5,
                          centers=[[0, 0, 0], [6, 0, 0], [0, 6, 0]], random_state=1)
    centres = np.array([x[truth == c].mean(axis=0) for c in range(3)], dtype=np.float32)
    metrics = cluster_metrics(x, centres, seed=0)
    assert metrics["holdout_rows"] == 40_000 and metrics["sample_rows"] == 4000
    assert metrics["smallest_cluster_rows"] == 80
    assert metrics["smallest_share"] == pytest.approx(0.002)
    assert all(s > 0.5 for s in metrics["cluster_silhouette"]), metrics["cluster_silhouette"]
    idx, weights = stratified_sample(truth, 4000, np.random.default_rng(0))
    assert np.bincount(truth[idx]).tolist() == [1960, 1960, 80]
    assert weights.sum() == pytest.approx(40_000)
    assert np.average(truth[idx] == 2, weights=weights) == pytest.approx(0.002)
