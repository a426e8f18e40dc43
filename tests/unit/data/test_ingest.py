import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.core.io import file_sha256
from pipeline.core.settings import FEATURE_NAMES
from pipeline.data.datagen import generate_lake
from pipeline.data.ingest import OFFLINE_TABLE, SchemaError, ingest_lake, split_valid
from pipeline.data.lake import LAKE_TABLE
from tests.helpers import clock

# The generated days (not today's: the tests name their intervals, relative to the clock).
START = clock.day(0)


def test_generate_is_partitioned_by_day_and_deterministic(settings):
    lake = generate_lake(settings.lake_dir, n_customers=300, days=2, start=START, seed=3)
    files = sorted((settings.lake_dir / LAKE_TABLE).glob("day=*/part-00000.parquet"))
    assert [f.parent.name for f in files] == [clock.partition(0), clock.partition(1)]
    first = [file_sha256(f) for f in files]
    generate_lake(settings.lake_dir, n_customers=300, days=2, start=START, seed=3)
    assert [file_sha256(f) for f in files] == first
    frame = pq.read_table(files[0]).to_pandas()
    assert set(FEATURE_NAMES) <= set(frame.columns)
    assert frame["total_spend_30d"].skew() > 1, "amounts should be skewed"
    assert 0 < frame["email_open_rate"].isna().mean() < 0.1, "some values should be missing"
    assert lake.rows == sum(pq.read_metadata(f).num_rows for f in files)


def _day_frame(n=5):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.uniform(0, 1, n) for name in FEATURE_NAMES})
    frame.insert(0, "customer_id", np.arange(1, n + 1))
    frame.insert(1, "event_timestamp", pd.Timestamp(clock.at(0, hours=12)))
    return frame


def test_bad_rows_are_kept_aside_with_reasons():
    frame = _day_frame(8)
    frame["customer_id"] = frame["customer_id"].astype(float)
    frame.loc[6, "customer_id"] = 12.7
    frame["created_timestamp"] = pd.Timestamp(clock.at(1))
    frame["created_timestamp"] = frame["created_timestamp"].astype(object)
    frame.loc[7, "created_timestamp"] = "yesterday"
    frame.loc[0, "customer_id"] = None
    frame.loc[1, "discount_share"] = 1.5
    frame.loc[2, "event_timestamp"] = pd.Timestamp(clock.at(2))
    frame.loc[3, "orders_30d"] = -1
    frame.loc[5, "customer_id"] = 5  # duplicate of row 4 (same id and timestamp)
    before = frame.copy()
    ok, bad = split_valid(frame, clock.day(0))
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is left alone
    assert len(ok) == 1 and len(bad) == 7
    assert bad.loc[1, "discount_share"] == 1.5, "rejected rows keep their raw values"
    reasons = list(bad["reject_reason"])
    assert reasons[0] == "customer_id missing or not a positive integer"
    assert reasons[1] == "discount_share outside [0, 1]"
    assert reasons[2] == f"event_timestamp outside partition {clock.partition(0)}"
    assert reasons[3] == "orders_30d outside [0, 1000]"
    assert reasons[4] == "duplicate (customer_id, event_timestamp)"
    assert reasons[5] == "customer_id missing or not a positive integer"
    assert reasons[6] == "created_timestamp is not a timestamp"


def test_missing_columns_are_named():
    with pytest.raises(SchemaError, match=r"lacks columns \['tenure_days'\]"):
        split_valid(_day_frame().drop(columns=["tenure_days"]), clock.day(0))


def test_ingest_is_idempotent_and_quarantines(settings):
    generate_lake(settings.lake_dir, n_customers=200, days=2, start=START, seed=5)
    part = settings.lake_dir / LAKE_TABLE / clock.partition(1) / "part-00000.parquet"
    frame = pq.read_table(part).to_pandas()
    frame.loc[:2, "mobile_share"] = 7.0
    frame.to_parquet(part, index=False)
    start, end = clock.day(0), clock.day(2)
    first = ingest_lake(settings, start, end)
    out = sorted((settings.offline_dir / OFFLINE_TABLE).rglob("*.parquet"))
    hashes = [file_sha256(f) for f in out]
    second = ingest_lake(settings, start, end)
    # the same rows again: nothing rewritten, and nothing new (no second training on it)
    assert second.to_dict() == {**first.to_dict(), "new": 0, "unchanged_days": first.days}
    assert first.new == first.accepted and first.unchanged_days == []
    assert [file_sha256(f) for f in out] == hashes
    assert first.rejected == 3 and first.reasons == {"mobile_share outside [0, 1]": 3}
    rejected = pq.read_table(settings.rejected_dir / OFFLINE_TABLE / clock.partition(1)).to_pandas()
    assert len(rejected) == 3 and (rejected["mobile_share"] == 7.0).all()


def test_a_day_gone_from_the_lake_keeps_its_landing_unless_told(settings, caplog):
    generate_lake(settings.lake_dir, n_customers=100, days=2, start=START, seed=5)
    ingest_lake(settings, clock.day(0), clock.day(2))
    landed = settings.offline_dir / OFFLINE_TABLE / clock.partition(1) / "part-00000.parquet"
    before = file_sha256(landed)
    gone = settings.lake_dir / LAKE_TABLE / clock.partition(1) / "part-00000.parquet"
    gone.unlink()
    result = ingest_lake(settings, clock.day(0), clock.day(2))
    assert result.missing_days == [clock.iso_day(1)] and result.deleted_days == []
    assert result.days == [clock.iso_day(0)]
    assert file_sha256(landed) == before, "a transient outage must not delete landed data"
    assert any(clock.iso_day(1) in r.message and "--delete-missing" in r.message
               for r in caplog.records if r.levelname == "WARNING")
    deleted = ingest_lake(settings, clock.day(0), clock.day(2), delete_missing=True)
    assert deleted.missing_days == [clock.iso_day(1)]
    assert deleted.deleted_days == [clock.iso_day(1)]
    assert not landed.exists()
    assert (settings.offline_dir / OFFLINE_TABLE / clock.partition(0)
            / "part-00000.parquet").exists()


def test_ingest_without_data_names_the_folder(settings):
    with pytest.raises(FileNotFoundError, match="no lake partitions"):
        # years before the sample lake: no partition there
        ingest_lake(settings, clock.day(-3650), clock.day(-3649))


def test_an_unreachable_lake_deletes_nothing_even_when_told(settings):
    """Every day of the interval gone at once is an outage (an unmounted volume), not a
    deletion: even --delete-missing leaves the landing alone."""
    generate_lake(settings.lake_dir, n_customers=100, days=2, start=START, seed=5)
    ingest_lake(settings, clock.day(0), clock.day(2))
    landed = sorted((settings.offline_dir / OFFLINE_TABLE).rglob("*.parquet"))
    (settings.lake_dir / LAKE_TABLE).rename(settings.lake_dir / "unmounted")
    with pytest.raises(FileNotFoundError, match="nothing was landed or deleted"):
        ingest_lake(settings, clock.day(0), clock.day(2), delete_missing=True)
    assert len(landed) == 2 and all(p.exists() for p in landed)
