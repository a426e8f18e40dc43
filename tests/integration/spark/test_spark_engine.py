"""The Spark path of the engine on real Spark (local[2,4]) against the in-process path."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.features import Snapshot
from pipeline.engine.estimator import ArraySource, KMeans, fit_sweep
from pipeline.engine.spark import SparkBlockSource
from pipeline.engine.staging import BlockSpec, block_key, load_block
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.training.split import TrainingRows, holdout_mask


@pytest.fixture
def spec(snapshot_path, tmp_path):
    snap = Snapshot.load(snapshot_path)
    pre = Preprocessor.fit(snap.frame(), FEATURE_NAMES, log_features=LOG_FEATURES)
    return BlockSpec(snapshot_dir=snap.path, files=tuple(snap.files), stage_dir=str(tmp_path),
                     key=block_key(snap.data_hash, pre.to_dict(), "train", 1, 1.0),
                     transform=pre.transform, row_filter=TrainingRows(1), sample_seed=1)


def _dies_once(fn, marker: str):
    """The task ``fn``, except that the first attempt at partition 0 that finds ``marker``
    removes it and dies, as a lost executor would, mid-job."""
    def run(index, rows):
        if index == 0:
            try:
                os.remove(marker)  # atomic: exactly one attempt sees the marker
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError(f"injected failure in partition {index}")
        yield from fn(index, rows)
    return run


class FailingOnceSource(SparkBlockSource):
    """Test-only source: job number ``fail_job`` loses its first attempt at partition 0."""

    fail_job: int | None = None
    marker = ""

    def _task(self, work, pass_id):
        fn = super()._task(work, pass_id)
        return _dies_once(fn, self.marker) if self.jobs == self.fail_job else fn


def test_the_staged_rows_are_the_training_side_preprocessed(spec, snapshot_path):
    snap = Snapshot.load(snapshot_path)
    expected = []
    for name in snap.files:
        frame = pd.read_parquet(Path(snap.path) / name)
        train = ~holdout_mask(frame["customer_id"].to_numpy(), 1)
        assert 0 < train.sum() < len(frame)
        expected.append(spec.transform(frame[train]))
    staged = np.concatenate([load_block(spec, i) for i in range(len(spec.files))])
    np.testing.assert_array_equal(staged, np.concatenate(expected))


def test_spark_and_in_process_agree(spark, spec):
    init = {k: None for k in (3, 5)}
    source = SparkBlockSource(spark, spec)
    local = ArraySource(np.concatenate([load_block(spec, i) for i in range(len(spec.files))]))
    assert source.n_rows == local.n_rows
    sample = local.x[:2000]
    for k in init:
        init[k] = sample[:: len(sample) // k][:k].copy()
        a = fit_sweep(source, [k], init=init[k], max_iter=15, tol=0).fits[k]
        b = fit_sweep(local, [k], init=init[k], max_iter=15, tol=0).fits[k]
        assert np.abs(a.centroids - b.centroids).max() <= 1e-4
        assert a.inertia == pytest.approx(b.inertia, rel=1e-9)


def test_seeded_kmeans_plusplus_is_the_same_draws_on_spark_and_in_process(spark, spec):
    """Greedy k-means++ seeds on the driver from the sample's distinct rows, sorted: with every
    row sampled (fewer than init_sample=50,000) both paths seed from the same rows with the
    same generator, so only the order of the float64 sums differs afterwards."""
    source = SparkBlockSource(spark, spec)
    local = ArraySource(np.concatenate([load_block(spec, i) for i in range(len(spec.files))]))
    for seed in (0, 1):
        a = fit_sweep(source, [4, 6], init="k-means++", max_iter=15, tol=0, seed=seed)
        b = fit_sweep(local, [4, 6], init="k-means++", max_iter=15, tol=0, seed=seed)
        for k in (4, 6):
            assert np.abs(a.fits[k].centroids - b.fits[k].centroids).max() <= 1e-4, (seed, k)
            # the documented bound between blockings (docs/engine.md): the GEMM's rounding
            # differs by CPU (OpenBLAS picks its kernel per CPU); on an AMD EPYC the two
            # paths' inertia differed by 3.6e-9 relative, where 1e-9 had held elsewhere
            assert a.fits[k].inertia == pytest.approx(b.fits[k].inertia, rel=1e-6)


def test_blocks_are_staged_once_and_reused(spark, spec, tmp_path):
    SparkBlockSource(spark, spec)
    blocks = sorted((tmp_path / spec.key).glob("block-*.f32"))
    assert len(blocks) == len(spec.files)
    stamps = [b.stat().st_mtime_ns for b in blocks]
    SparkBlockSource(spark, spec).step([np.zeros((2, 12), np.float32)])
    assert [b.stat().st_mtime_ns for b in blocks] == stamps


def test_failed_task_is_retried_with_the_same_result(spark, spec, tmp_path):
    clean = SparkBlockSource(spark, spec)
    init = np.asarray(clean.sample(50, 0)[:4])
    expected = fit_sweep(clean, [4], init=init, max_iter=8, tol=0).fits[4]
    marker = tmp_path / "fail-once"
    marker.touch()
    faulty = FailingOnceSource(spark, spec)
    # jobs of the fit: the init sample, then one step per iteration: the second step dies
    faulty.fail_job, faulty.marker = faulty.jobs + 3, str(marker)
    got = fit_sweep(faulty, [4], init=init, max_iter=8, tol=0).fits[4]
    assert not marker.exists(), "the injected failure must have fired"
    assert got.n_iter == expected.n_iter == 8
    np.testing.assert_array_equal(got.centroids, expected.centroids)
    assert got.inertia == expected.inertia


def test_kmeans_parallel_on_spark_is_deterministic(spark, spec):
    a = fit_sweep(SparkBlockSource(spark, spec), [4, 6], max_iter=3, seed=5)
    b = fit_sweep(SparkBlockSource(spark, spec), [4, 6], max_iter=3, seed=5)
    for k in (4, 6):
        np.testing.assert_array_equal(a.fits[k].centroids, b.fits[k].centroids)


def test_fit_on_a_spark_dataframe_matches_in_process(spark, tmp_path):
    from sklearn.datasets import make_blobs

    from pipeline.engine.spark import dataframe_source

    x, _ = make_blobs(3000, n_features=4, centers=3, random_state=0)
    x = x.astype(np.float32)
    df = spark.createDataFrame(pd.DataFrame(x, columns=list("abcd")))
    source = dataframe_source(df, list("abcd"), tmp_path, partitions=3)
    assert source.n_rows == 3000 and source.n_features == 4
    init = x[[0, 1000, 2000]]
    on_spark = KMeans(3, init=init, max_iter=10, tol=0).fit(source)
    local = KMeans(3, init=init, max_iter=10, tol=0).fit(np.asarray(
        df.toPandas()[list("abcd")], dtype=np.float32))
    order = np.lexsort(on_spark.cluster_centers_.T)
    np.testing.assert_allclose(on_spark.cluster_centers_[order],
                               local.cluster_centers_[np.lexsort(local.cluster_centers_.T)],
                               atol=1e-4)


def test_dataframe_with_missing_column_is_refused(spark, tmp_path):
    from pipeline.engine.spark import dataframe_source

    df = spark.createDataFrame([(1.0, 2.0)], ["a", "b"])
    with pytest.raises(ValueError, match=r"DataFrame lacks columns \['c'\]"):
        dataframe_source(df, ["a", "c"], tmp_path)


def test_weighted_fit_on_spark_matches_in_process(spark, tmp_path):
    from sklearn.datasets import make_blobs

    from pipeline.engine.spark import dataframe_source

    x, _ = make_blobs(2000, n_features=3, centers=3, random_state=4)
    x = x.astype(np.float32)
    w = np.random.default_rng(1).uniform(0.5, 3.0, len(x))
    frame = pd.DataFrame(x, columns=list("abc")).assign(w=w)
    source = dataframe_source(spark.createDataFrame(frame), list("abc"), tmp_path,
                              partitions=2, weight_column="w")
    init = x[[0, 700, 1400]]
    on_spark = KMeans(3, init=init, max_iter=10, tol=0).fit(source)
    assert not hasattr(on_spark, "labels_"), "a source's rows stay on the executors"
    with pytest.raises(ValueError, match="weights come from its weight column"):
        KMeans(3, init=init).fit(source, sample_weight=w)
    back = source.sample(10_000, 0)  # row order of the staged blocks may differ from x
    assert len(back) == len(x)
    local = KMeans(3, init=init, max_iter=10, tol=0).fit(x, sample_weight=w)
    np.testing.assert_allclose(np.sort(on_spark.cluster_centers_, axis=0),
                               np.sort(local.cluster_centers_, axis=0), atol=1e-3)
    assert on_spark.inertia_ == pytest.approx(local.inertia_, rel=1e-5)


def test_staging_streams_and_rejects_nan(spark, tmp_path):
    from pipeline.engine.staging import parquet_spec

    folder = tmp_path / "data"
    folder.mkdir()
    pd.DataFrame({"a": [1.0, np.nan], "b": [2.0, 3.0]}).to_parquet(folder / "part-0.parquet")
    with pytest.raises(Exception, match=r"hold NaN or infinity"):
        SparkBlockSource(spark, parquet_spec(folder, ["a", "b"], tmp_path / "stage"))


def test_workers_are_reused_and_stay_lean(spark, spec):
    """Each iteration is one Spark job: its tasks must run in reused Python workers (a task
    that does not read its input makes PySpark start a new worker) that never imported the
    training stack or scikit-learn (a worker that did paid about 30 ms more per task), with
    the daemon's imports frozen out of the collection after each task."""
    def worker_state(index, rows):  # nested: pickled by value, as tests are not on workers
        import gc
        import sys

        for _ in rows:
            pass
        yield os.getpid(), sorted(m for m in ("sklearn", "mlflow", "pyspark.ml",
                                              "pipeline.training.stages") if m in sys.modules)
        yield "frozen", gc.get_freeze_count()

    source = SparkBlockSource(spark, spec)
    fit_sweep(source, [3], init=np.asarray(load_block(spec, 0)[:3]), max_iter=4, tol=0)
    blocks = source._placed(source.placement.targets())  # the RDD every pass runs over
    seen = [blocks.mapPartitionsWithIndex(worker_state).collect() for _ in range(6)]
    frozen = [n for job in seen for pid, n in job if pid == "frozen"]
    seen = [[(pid, mods) for pid, mods in job if pid != "frozen"] for job in seen]
    pids = {pid for job in seen for pid, _mods in job}
    assert len(pids) <= 2, f"{len(pids)} Python workers for 6 jobs of {source.parts} tasks"
    assert all(not mods for job in seen for _pid, mods in job), seen
    # the garbage collection after each task skips what the daemon imported (daemon.py)
    assert frozen and min(frozen) > 50_000, frozen


def test_same_seed_same_centroids_in_process_and_on_spark_with_any_partitioning(spark, tmp_path):
    """Every draw is keyed by a row's global position: the array in memory and Spark with 2
    and 8 blocks fit the same centroids with the default k-means|| seeding (equal within
    1e-6; only the order of the float64 sums differs)."""
    from sklearn.datasets import make_blobs

    from pipeline.engine.staging import parquet_spec

    x, _ = make_blobs(8000, n_features=4, centers=6, random_state=2)
    x = x.astype(np.float32)
    folder = tmp_path / "data"
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(x)), 8)):
        pd.DataFrame(x[rows], columns=list("abcd")).to_parquet(folder / f"p-{i}.parquet")
    expected = fit_sweep(ArraySource(x), [5, 6], seed=3, max_iter=12)
    for parts in (2, 8):
        source = SparkBlockSource(spark, parquet_spec(folder, list("abcd"), tmp_path / "stage",
                                                      partitions=parts))
        got = fit_sweep(source, [5, 6], seed=3, max_iter=12)
        for k in (5, 6):
            np.testing.assert_allclose(got.fits[k].centroids, expected.fits[k].centroids,
                                       rtol=0, atol=1e-6, err_msg=f"{parts} blocks, k={k}")
        report = source.report()
        assert report["blocks"] == parts and report["stagings"] == parts, report
        assert report["restaged"] == 0 and report["moves"] == 0, report
        source.close()


def test_lloyd_with_bounds_beside_the_blocks_is_plain_lloyd(spark, tmp_path):
    """K=20 (bounds run from K=16) over 4 blocks: the iterations keep Hamerly's bounds in
    files beside each staged block and skip most rows' distances, and the fit is plain
    Lloyd's, bit for bit; a block whose bounds are gone (an executor lost) is computed in
    full for a pass, with the same result."""
    import shutil

    from sklearn.datasets import make_blobs

    from pipeline.engine.estimator import lloyd
    from pipeline.engine.staging import parquet_spec

    x, _ = make_blobs(40_000, n_features=6, centers=12, cluster_std=2.0, random_state=4)
    x = x.astype(np.float32)
    folder = tmp_path / "data"
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(x)), 4)):
        pd.DataFrame(x[rows], columns=list("abcdef")).to_parquet(folder / f"p-{i}.parquet")
    spec = parquet_spec(folder, list("abcdef"), tmp_path / "stage")
    init = {(20, 0): x[:: len(x) // 20][:20].copy(), (16, 0): x[1:: len(x) // 16][:16].copy()}
    common = {"max_iter": 25, "tol": 0, "empty_cluster": "farthest", "sample": x[:5000]}

    class Forgetful(SparkBlockSource):
        """Drops every block's bounds before the 10th iteration (as a lost executor would)."""

        calls = 0

        def lloyd_step(self, centroids):
            Forgetful.calls += 1
            if Forgetful.calls == 10:
                shutil.rmtree(tmp_path / "stage" / spec.key / f"bounds-{self.run}")
            return super().lloyd_step(centroids)

    bounded = SparkBlockSource(spark, spec)
    forgetful = Forgetful(spark, spec)
    plain = SparkBlockSource(spark, spec, bounds=False)
    a = lloyd(bounded, init, **common)
    b = lloyd(plain, init, **common)
    c = lloyd(forgetful, init, **common)
    for key in init:
        np.testing.assert_array_equal(a[key].centroids, b[key].centroids)
        np.testing.assert_array_equal(c[key].centroids, b[key].centroids)
        assert a[key].inertia == b[key].inertia
    assert plain.skipped == [] and len(bounded.skipped) == 25
    assert bounded.skipped[0] == 0.0 and max(bounded.skipped[-5:]) > 0.5, bounded.skipped
    assert forgetful.skipped[9] == 0.0, forgetful.skipped  # every bound gone: a full pass
    assert list((tmp_path / "stage" / spec.key).glob(f"bounds-{bounded.run}/e*-block-*.json"))
