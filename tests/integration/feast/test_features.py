"""Feast on the embedded default: apply, point-in-time snapshots, online reads."""

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.core.settings import FEATURE_NAMES, PROJECT_ROOT
from pipeline.data.datagen import generate_lake
from pipeline.data.features import (
    Snapshot,
    apply_repo,
    feature_store,
    materialize,
    online_features,
    repo_config,
    training_snapshot,
)
from pipeline.data.ingest import OFFLINE_TABLE, ingest_lake
from tests.helpers.clock import BEGIN, END
from tests.helpers.homes import make_settings


def test_feature_service_is_registered(lake_home):
    store = feature_store(make_settings(lake_home))
    service = store.get_feature_service("customer_segments_v1")
    names = [f.name for view in service.feature_view_projections for f in view.features]
    assert names == FEATURE_NAMES
    assert store.get_entity("customer").join_key == "customer_id"


def test_snapshot_is_content_addressed_and_repeatable(lake_home, snapshot_path):
    first = Snapshot.load(snapshot_path)
    again = training_snapshot(make_settings(lake_home), BEGIN, END)
    assert again.data_hash == first.data_hash and again.path == first.path
    frame = first.frame()
    assert list(frame.columns) == ["customer_id", *FEATURE_NAMES]
    assert frame["customer_id"].is_unique and len(frame) == first.rows


def test_snapshot_is_point_in_time(lake_home, snapshot_path):
    """A customer's row holds the latest values before the window end, not later ones."""
    s = make_settings(lake_home)
    offline = pq.read_table(s.offline_dir / "customer_profile").to_pandas()
    frame = Snapshot.load(snapshot_path).frame().set_index("customer_id")
    cid = int(frame.index[0])
    rows = offline[offline.customer_id == cid].sort_values("event_timestamp")
    latest = rows[rows.event_timestamp < pd.Timestamp(END)].iloc[-1]
    assert frame.loc[cid, "tenure_days"] == latest["tenure_days"]


def test_earlier_window_gives_another_snapshot(lake_home, snapshot_path):
    early = training_snapshot(make_settings(lake_home), BEGIN, BEGIN + dt.timedelta(days=1))
    assert early.data_hash != Snapshot.load(snapshot_path).data_hash
    assert early.rows < Snapshot.load(snapshot_path).rows


def test_online_features_in_request_order_with_unknown_ids(lake_home):
    store = feature_store(make_settings(lake_home))
    frame = online_features(store, "customer_segments_v1", [100_002, 42, 100_001])
    assert frame["customer_id"].tolist() == [100_002, 42, 100_001]
    assert frame.loc[1, FEATURE_NAMES].isna().all()
    assert frame.loc[0, "tenure_days"] >= 0


def test_a_home_elsewhere_reads_its_own_offline_table(lake_home):
    """The lake home is not beside feature_repo/: its source path is the home's own table."""
    s = make_settings(lake_home)
    source = feature_store(s).get_data_source("customer_profile_source")
    assert source.path == str(s.offline_dir / OFFLINE_TABLE)
    assert repo_config(s).repo_path == PROJECT_ROOT / "feature_repo"


def _repo_copy(root: Path) -> Path:
    repo = root / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def test_source_path_follows_each_home_applied_in_turn(tmp_path):
    """The declared relative path for the home beside the repo, the absolute table path for a
    home elsewhere, and back: one process, one repo, no state carried between applies."""
    repo = _repo_copy(tmp_path)
    beside = make_settings(tmp_path / ".kmeans", feast_repo=repo)
    other = make_settings(tmp_path / "elsewhere" / "home", feast_repo=repo)
    declared = "../.kmeans/offline/customer_profile"
    for s, expected in [(beside, declared), (other, str(other.offline_dir / OFFLINE_TABLE)),
                        (beside, declared)]:
        assert "customer_profile" in apply_repo(s)
        assert feature_store(s).get_data_source("customer_profile_source").path == expected
    assert not (repo / "__pycache__").exists()


def test_relative_source_outside_an_offline_folder_is_refused(tmp_path):
    repo = _repo_copy(tmp_path)
    module = repo / "data_sources.py"
    module.write_text(module.read_text().replace('"../.kmeans/offline/customer_profile"',
                                                 '"data/customer_profile.parquet"'))
    with pytest.raises(ValueError, match=r"'data/customer_profile.parquet'.*allowed: a path"):
        apply_repo(make_settings(tmp_path / "home", feast_repo=repo))


def test_production_profile_serves_from_redis(tmp_path):
    """Redis on loopback (db 15), as the production profile's online store."""
    s = make_settings(tmp_path / "home", profile="production", serving_token="token",
                      admin_token="admin-token",
                      mlflow_tracking_uri="http://127.0.0.1:5000",
                      redis_connection_string="127.0.0.1:6379,db=15")
    generate_lake(s.lake_dir, n_customers=200, start=BEGIN.date(), days=3, seed=5)
    ingest_lake(s, BEGIN.date(), END.date())
    apply_repo(s)
    store = feature_store(s)
    assert store.config.online_store.type == "redis"
    try:
        materialize(s, BEGIN, END)
        offline = pq.read_table(s.offline_dir / OFFLINE_TABLE).to_pandas()
        latest = offline.sort_values("event_timestamp").groupby("customer_id").tail(1)
        latest = latest.dropna(subset=FEATURE_NAMES).sort_values("customer_id").iloc[0]
        row = online_features(store, s.feature_service, [int(latest.customer_id)]).iloc[0]
        assert row[FEATURE_NAMES].astype(float).tolist() == latest[FEATURE_NAMES].tolist()
    finally:
        store.teardown()
