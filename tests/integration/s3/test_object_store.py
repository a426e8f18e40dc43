"""Snapshots in an object store: moto's S3 server (``tests/helpers/processes.py``) on loopback, read
through ``pyarrow.fs`` by the engine. The Spark fit over S3 is in
``tests/integration/spark/test_spark_cluster.py``."""

from __future__ import annotations

import httpx
import numpy as np
import pandas.testing as pdt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from pipeline.engine.estimator import fit_sweep
from pipeline.engine.inprocess import in_process_source
from pipeline.engine.snapshot import list_parquet
from pipeline.engine.staging import parquet_spec
from tests.helpers.processes import S3Server


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
    from tests.helpers.clock import BEGIN, END
    from tests.helpers.homes import make_settings

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
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import OFFLINE_TABLE, ingest_lake
    from pipeline.data.lake import LAKE_TABLE
    from tests.helpers.clock import day, partition
    from tests.helpers.homes import make_settings

    here = make_settings(tmp_path / "here")
    generate_lake(here.lake_dir, n_customers=300, start=day(0), days=2, seed=4)
    part = next((here.lake_dir / LAKE_TABLE / partition(1)).glob("*.parquet"))
    frame = pq.read_table(part).to_pandas()
    frame.loc[0, "orders_30d"] = -5.0  # a negative count: quarantined with its reason
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), part)
    local = ingest_lake(here, day(0), day(2))
    with S3Server(tmp_path / "s3") as s3:
        s3.create_bucket("bucket")
        fs = s3.filesystem()
        for path in sorted(here.lake_dir.rglob("*.parquet")):
            with fs.open_output_stream(f"bucket/lake/{path.relative_to(here.lake_dir)}") as out:
                out.write(path.read_bytes())
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        there = make_settings(tmp_path / "there", lake_url=s3.uri("bucket/lake"))
        remote = ingest_lake(there, day(0), day(2))
        with pytest.raises(FileNotFoundError, match="no lake partitions .* under "
                                                    "s3://bucket/lake/"):
            ingest_lake(there, day(-31), day(-29))  # a month before the lake's days
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
        ingest_lake(gone, day(0), day(2))
    assert not (gone.home / "offline").exists()


def test_the_offline_table_in_an_object_store_serves_feast_training_and_publication(
        tmp_path, spark, monkeypatch):
    """KMEANS_OFFLINE_URI=s3://...: the lake lands in the store (the same bytes as in a
    folder), apply points Feast's FileSources there with the endpoint, materialize and
    get_historical_features read it through dask and fsspec's ``s3`` (pyarrow's client:
    pipeline/core/s3.py; the stock ``feast materialize`` in the repo too), the training
    snapshot is the local one's, and the segment
    publication is written there by Spark and read online, equal to the local publication."""
    import datetime as dt
    import subprocess
    import sys

    from pipeline.data import features
    from pipeline.data.ingest import OFFLINE_TABLE
    from pipeline.promotion.publish import publish_segments
    from tests.helpers.clock import BEGIN, END, at
    from tests.helpers.feast import copy_repo, feast
    from tests.helpers.homes import train_champion

    here = train_champion(tmp_path / "here", customers=300)
    with S3Server(tmp_path / "s3") as s3:
        s3.create_bucket("bucket")
        # Feast's apply checks each FileSource with the store's default endpoint (AWS): here,
        # the loopback server, so that check asks no name of the network either.
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
        repo = copy_repo(tmp_path / "there")  # the home beside it, as feature_store.yaml has
        there = train_champion(tmp_path / "there" / ".kmeans", customers=300,
                               offline_uri=s3.uri("bucket/offline"), feast_repo=repo)
        fs = s3.filesystem()
        assert not (there.home / "offline").exists()
        mine = sorted((here.offline_dir / OFFLINE_TABLE).rglob("*.parquet"))
        theirs = [f"bucket/offline/{p.relative_to(here.offline_dir)}" for p in mine]
        for path, key in zip(mine, theirs, strict=True):
            with fs.open_input_stream(key) as handle:
                assert handle.read() == path.read_bytes(), key

        store = features.feature_store(there)
        source = store.get_data_source("customer_profile_source")
        assert source.path == "s3://bucket/offline/customer_profile"
        assert source.file_options.s3_endpoint_override == s3.url
        snaps = [features.training_snapshot(s, BEGIN, END) for s in (here, there)]
        assert snaps[0].data_hash == snaps[1].data_hash and snaps[0].rows > 250

        # the stock CLI, run in the repo, reads the store through the registry's FileSource
        window = [t.strftime("%Y-%m-%dT%H:%M:%S") for t in (BEGIN - dt.timedelta(days=30), END)]
        done = feast(repo, "materialize", *window, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        features.materialize(here, BEGIN - dt.timedelta(days=30), END)
        ids = [int(i) for i in snaps[0].frame()["customer_id"][:25]]
        online = [features.online_features(features.feature_store(s), s.feature_service, ids)
                  for s in (here, there)]
        assert online[0].notna().all().all()
        pdt.assert_frame_equal(online[0], online[1])

        scored_at = at(3, hours=12)  # noon of the day after the sample days
        published = [publish_segments(s, spark=spark, now=scored_at) for s in (here, there)]
        assert published[1]["folder"] == "s3://bucket/offline/customer_segment/" \
                                          f"published-{scored_at:%Y%m%dT%H%M%S}-v1"
        assert published[0]["customers"] == published[1]["customers"] >= snaps[0].rows
        assert published[0]["segment_shares"] == published[1]["segment_shares"]
        parts = fs.get_file_info(pafs.FileSelector("bucket/offline/customer_segment",
                                                   recursive=True))
        names = sorted(p.path for p in parts if p.type == pafs.FileType.File)
        assert names[0] == "bucket/offline/customer_segment/empty.parquet"
        assert all(n.startswith("bucket/offline/customer_segment/published-") for n in names[1:])
        segments = [features.online_segments(features.feature_store(s), ids)
                    .sort_values("customer_id").reset_index(drop=True) for s in (here, there)]
        assert segments[1]["model_version"].eq("1").all()
        pdt.assert_frame_equal(segments[0], segments[1])

        # The stream lands there too; a redelivered event is known by its file in the store.
        streamed = _stream_into(there, s3.uri("bucket/offline"))
        assert (streamed[0].landed, streamed[1].landed, streamed[1].duplicates) == (40, 0, 5)
        files = (there.offline_root / OFFLINE_TABLE).glob("day=*/stream-*.parquet")
        assert files and all(not f.local for f in files)
        assert sum(f.read_table().num_rows for f in files) == 40

        # fsspec's s3 is pyarrow's in a fresh process of the environment (the entry point),
        # as the stock `feast` CLI and Airflow's tasks see it
        done = subprocess.run(
            [sys.executable, "-c", "import fsspec; print(fsspec.get_filesystem_class('s3'))"],
            capture_output=True, text=True, timeout=120, check=True)
        assert "pipeline.core.s3.ArrowS3FileSystem" in done.stdout


def _stream_into(settings, offline_uri: str) -> list:
    """Consume 40 events from a Redis stream of its own, then 5 of them again, with the
    offline table at ``offline_uri``; the two runs' results."""
    import uuid

    import pandas as pd
    import redis

    from pipeline.data.sources import stream as st
    from tests.helpers.homes import make_settings
    from tests.helpers.sources import REDIS_URL, event

    tag = uuid.uuid4().hex[:10]
    s = make_settings(settings.home, offline_uri=offline_uri, stream_name=f"kmeans-test:{tag}",
                      stream_group=f"g-{tag}", stream_consumer=f"c-{tag}")
    client = redis.Redis.from_url(REDIS_URL)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    events = [event(i, 5_000_000 + i, now - pd.Timedelta(minutes=i)) for i in range(40)]
    consumer = st.Consumer(s, st.open_stream(s))
    try:
        st.publish(client, s.stream.stream_name, events)
        first = consumer.run(max_events=40, seconds=30)
        st.publish(client, s.stream.stream_name, events[:5])
        again = consumer.run(max_events=5, seconds=30)
    finally:
        consumer.close()
        client.delete(s.stream.stream_name)
        client.close()
    return [first, again]
