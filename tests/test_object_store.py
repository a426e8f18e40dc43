"""Snapshots in an object store: moto's S3 server (``tests/standalone.py``) on loopback, read
through ``pyarrow.fs`` by the engine. The Spark fit over S3 is in
``tests/test_spark_cluster.py``."""

from __future__ import annotations

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from pipeline.engine.estimator import fit_sweep
from pipeline.engine.inprocess import in_process_source
from pipeline.engine.spark import list_parquet, parquet_spec
from tests.standalone import S3Server

pytestmark = pytest.mark.integration


def test_s3_server_round_trips_parquet_through_pyarrow(tmp_path, monkeypatch):
    table = pa.table({"customer_id": [1, 2, 3], "spend": [0.5, 1.5, 2.5]})
    with S3Server(tmp_path) as s3:
        s3.create_bucket("lake")
        fs = s3.filesystem()
        pq.write_table(table, "lake/snapshot/part-0.parquet", filesystem=fs)
        assert pq.read_table("lake/snapshot/part-0.parquet", filesystem=fs).equals(table)

        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        uri_fs, path = pafs.FileSystem.from_uri(s3.uri("lake/snapshot"))
        assert path == "lake/snapshot"
        files = uri_fs.get_file_info(pafs.FileSelector(path))
        assert [info.base_name for info in files] == ["part-0.parquet"]
        assert pq.read_table(f"{path}/part-0.parquet", filesystem=uri_fs).equals(table)
    with pytest.raises(httpx.TransportError):
        httpx.get(s3.url, timeout=2)


def test_the_engine_stages_an_s3_snapshot_as_it_stages_a_local_one(tmp_path, monkeypatch):
    """The same rows from a folder and from ``s3://``: the same blocks, ids and fit; the S3
    block key covers each object's ETag (pyarrow gives none for local files)."""
    rng = np.random.default_rng(0)
    local = tmp_path / "snapshot"
    local.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"a": rng.random(500), "b": rng.random(500)}),
                       local / f"part-{i}.parquet")
    with S3Server(tmp_path / "s3") as s3:
        s3.create_bucket("lake")
        fs = s3.filesystem()
        for path in sorted(local.iterdir()):
            with fs.open_output_stream(f"lake/snapshot/{path.name}") as out:
                out.write(path.read_bytes())
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        uri = s3.uri("lake/snapshot")
        listing = list_parquet(uri)
        assert listing.names == ("part-0.parquet", "part-1.parquet", "part-2.parquet")
        assert listing.rows == (500, 500, 500) and all(s[3] for s in listing.stamps)
        assert all(not s[3] for s in list_parquet(local).stamps)
        remote = parquet_spec(uri, ["a", "b"], tmp_path / "stage", partitions=2)
        here = parquet_spec(local, ["a", "b"], tmp_path / "stage", partitions=2)
        assert remote.key != here.key and remote.files == here.files
        a, b = in_process_source(remote), in_process_source(here)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.ids, b.ids)
        fa = fit_sweep(a, [3], seed=1, max_iter=10).fits[3]
        fb = fit_sweep(b, [3], seed=1, max_iter=10).fits[3]
        np.testing.assert_array_equal(fa.centroids, fb.centroids)
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        list_parquet(tmp_path / "empty")


def test_training_snapshots_can_live_in_an_object_store(lake_home, snapshot_path, tmp_path,
                                                        monkeypatch):
    """KMEANS_SNAPSHOTS_URI=s3://...: the snapshot is written to the store, loads from its URI,
    and gives the same rows, files and training split as the local one."""
    import pandas.testing as pdt

    from pipeline.data.features import Snapshot, training_snapshot
    from pipeline.training.split import read_split
    from tests.conftest import BEGIN, END, make_settings

    local = Snapshot.load(snapshot_path)
    with S3Server(tmp_path / "s3") as s3:
        s3.create_bucket("lake")
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        settings = make_settings(lake_home, snapshots_uri=s3.uri("lake/snapshots"))
        remote = training_snapshot(settings, BEGIN, END)
        assert remote.path.startswith("s3://lake/snapshots/") and "endpoint_override" in remote.path
        again = Snapshot.load(remote.path)
        assert again == remote and remote.data_hash == local.data_hash
        assert remote.files == local.files
        pdt.assert_frame_equal(again.frame(), local.frame())
        for a, b in zip(read_split(again, 3), read_split(local, 3), strict=True):
            pdt.assert_frame_equal(a, b)
        assert list_parquet(remote.path).rows == list_parquet(local.path).rows
    with pytest.raises(FileNotFoundError, match="no training snapshot at"):
        Snapshot.load(tmp_path / "nothing")


def test_an_unreachable_store_is_one_clear_line(settings):
    """A snapshot URI whose store does not answer: the CLI says so in one line, exit 2."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    uri = "s3://lake/snapshot?endpoint_override=127.0.0.1:1&scheme=http"
    result = CliRunner().invoke(app, ["train", uri, "--engine", "local"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: cannot read the training snapshot at {uri}: ")
    assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1


def test_the_lake_lands_from_an_object_store_as_from_a_folder(tmp_path, monkeypatch):
    """KMEANS_LAKE_URL=s3://...: the same day folders (one bad row among them) land the same
    offline files, byte for byte, and the same quarantine, as from the local lake."""
    import datetime as dt

    from pipeline.data.datagen import LAKE_TABLE, generate_lake
    from pipeline.data.ingest import OFFLINE_TABLE, ingest_lake
    from tests.conftest import make_settings

    here = make_settings(tmp_path / "here")
    generate_lake(here.lake_dir, n_customers=300, start=dt.date(2026, 11, 1), days=2, seed=4)
    part = next((here.lake_dir / LAKE_TABLE / "day=2026-11-02").glob("*.parquet"))
    frame = pq.read_table(part).to_pandas()
    frame.loc[0, "orders_30d"] = -5.0  # a negative count: quarantined with its reason
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), part)
    local = ingest_lake(here, dt.date(2026, 11, 1), dt.date(2026, 11, 3))
    with S3Server(tmp_path / "s3") as s3:
        s3.create_bucket("bucket")
        fs = s3.filesystem()
        for path in sorted(here.lake_dir.rglob("*.parquet")):
            with fs.open_output_stream(f"bucket/lake/{path.relative_to(here.lake_dir)}") as out:
                out.write(path.read_bytes())
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        there = make_settings(tmp_path / "there", lake_url=s3.uri("bucket/lake"))
        remote = ingest_lake(there, dt.date(2026, 11, 1), dt.date(2026, 11, 3))
        with pytest.raises(FileNotFoundError, match="no lake partitions .* under "
                                                    "s3://bucket/lake/"):
            ingest_lake(there, dt.date(2026, 10, 1), dt.date(2026, 10, 3))
    assert remote.to_dict() == local.to_dict() and remote.rejected == 1
    for where in ("offline_dir", "rejected_dir"):
        mine, theirs = (sorted((getattr(s, where) / OFFLINE_TABLE).rglob("*.parquet"))
                        for s in (here, there))
        assert mine and [p.read_bytes() for p in mine] == [p.read_bytes() for p in theirs]

    # a store that does not answer: one clear error naming the lake, nothing landed
    gone = make_settings(tmp_path / "gone", lake_url="s3://bucket/lake?endpoint_override="
                                                     "127.0.0.1:1&scheme=http")
    with pytest.raises(LookupError, match=r"lake s3://bucket/lake/customer_activity cannot "
                                          r"be listed"):
        ingest_lake(gone, dt.date(2026, 11, 1), dt.date(2026, 11, 3))
    assert not (gone.home / "offline").exists()
