"""Feast on the embedded default: apply, point-in-time snapshots, online reads."""

import datetime as dt

import pandas as pd
import pytest

from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.features import Snapshot, feature_store, online_features, training_snapshot
from tests.conftest import BEGIN, END, make_settings

pytestmark = pytest.mark.integration


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
    import pyarrow.parquet as pq

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
