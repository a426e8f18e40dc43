"""Published segments: a Spark job scores every customer's latest features with the champion,
writes the customer_segment feature view and materializes it; an application reads a
customer's segment from Feast's online store, the same answer the model gives, without
calling it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.core.settings import FEATURE_NAMES
from tests.helpers.clock import BEGIN, END
from tests.helpers.homes import make_settings, train_champion


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return train_champion(tmp_path_factory.mktemp("publish-home")).home


def test_every_customer_gets_the_champions_segment_online(home, spark):
    from pipeline import registry
    from pipeline.data import features
    from pipeline.data.ingest import OFFLINE_TABLE
    from pipeline.promotion.publish import publish_segments

    settings = make_settings(home)
    done = publish_segments(settings, spark=spark)
    offline = pq.read_table(settings.offline_dir / OFFLINE_TABLE).to_pandas()
    latest = (offline.sort_values(["event_timestamp", "created_timestamp"])
              .groupby("customer_id").tail(1).set_index("customer_id").sort_index())
    assert done["customers"] == len(latest) == offline.customer_id.nunique()
    assert done["model_version"] == "1"
    assert sum(done["segment_shares"].values()) == pytest.approx(1.0, abs=1e-3)

    # the offline publication: one row per customer, what the model says of its latest row
    published = pq.ParquetDataset(done["folder"]).read().to_pandas().set_index("customer_id")
    assert published.index.is_unique and len(published) == len(latest)
    model, _ = registry.download_model(settings)
    expected = model.assign(latest[FEATURE_NAMES])
    published = published.loc[latest.index]
    assert (published["segment"].to_numpy() == expected.cluster).all()
    assert np.allclose(published["distance"], expected.distance)
    # Spark keeps microseconds: the feature row's time, to the microsecond
    assert (published["features_at"] == latest["event_timestamp"].dt.floor("us")).all()

    # online, through Feast, as an application reads it (a few known and one unknown id)
    ids = latest.index[:5].tolist() + [999_999_999]
    online = features.online_segments(features.feature_store(settings), ids)
    assert online["segment"].iloc[:5].tolist() == expected.cluster[:5].tolist()
    assert (online["model_version"].iloc[:5] == "1").all()
    assert pd.isna(online["segment"].iloc[5])  # never published: no segment, no error

    # Feast's own materialize of every view works with the segment table present, and the
    # pipeline's (the features only) leaves the published segment as it is
    features.feature_store(settings).materialize(BEGIN - dt.timedelta(days=1), END)
    features.materialize(settings, BEGIN - dt.timedelta(days=1), END)
    again = features.online_segments(features.feature_store(settings), ids[:5])
    assert again["segment"].tolist() == expected.cluster[:5].tolist()


def test_the_publish_dag_republishes_on_demand(home, spark, airflow_db, monkeypatch):
    """kmeans_publish (scheduled on the champion asset, here run by hand with dag.test): a
    new publication whose rows the online store serves; an unknown conf key fails at once."""
    from pipeline.data import features
    from pipeline.devtools.airflow_env import load_dag

    monkeypatch.setenv("KMEANS_HOME", str(home))
    settings = make_settings(home)
    before = sorted(p.name for p in (settings.offline_dir / features.SEGMENT_TABLE).iterdir())
    dag = load_dag("kmeans_publish")
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"  # the champion asset
    run = dag.test(run_conf={"version": "1"})
    [ti] = run.get_task_instances()
    assert str(ti.state) == "success"
    after = sorted(p.name for p in (settings.offline_dir / features.SEGMENT_TABLE).iterdir())
    assert len(after) == len(before) + 1 and after[-1].endswith("-v1")
    bad = dag.test(run_conf={"verison": "1"})
    [ti] = bad.get_task_instances()
    assert str(ti.state) == "failed"
    assert ti.try_number == 1, "a bad param is not retried (it waited out the retry delay)"
