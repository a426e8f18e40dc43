"""The Great Expectations suite itself, on good and bad batches."""

import json

import numpy as np
import pytest

from pipeline.data.features import Snapshot
from pipeline.data.validation import validate_frame


@pytest.fixture(scope="module")
def good(snapshot_path):
    return Snapshot.load(snapshot_path).frame()


def _run(frame, tmp_path, **kw):
    return validate_frame(frame, tmp_path, name="batch", min_rows=kw.get("min_rows", 200),
                          max_null_share=0.1)


def test_good_batch_passes(good, tmp_path):
    result = _run(good, tmp_path)
    assert result.success and not result.failed
    assert result.evaluated == 4 + 3 * 12
    assert json.loads((tmp_path / "batch.json").read_text())["success"] is True


@pytest.mark.parametrize("mutate, expected", [
    (lambda f: f.assign(email_open_rate=np.where(np.arange(len(f)) % 2, np.nan,
                                                 f.email_open_rate)),
     'expect_column_values_to_not_be_null({"column": "email_open_rate", "mostly": 0.9'),
    (lambda f: f.assign(discount_share=f.discount_share + 2),
     'expect_column_values_to_be_between({"column": "discount_share"'),
    (lambda f: f.drop(columns=["tenure_days"]), "expect_table_columns_to_match_set"),
    (lambda f: f.head(50), "expect_table_row_count_to_be_between"),
    (lambda f: f.assign(customer_id=1), "expect_column_values_to_be_unique"),
    (lambda f: f.assign(orders_30d=f.orders_30d.astype(str)),
     "expect_column_values_to_be_in_type_list"),
])
def test_bad_batches_fail_with_the_expectation_named(good, tmp_path, mutate, expected):
    result = _run(mutate(good.copy()), tmp_path)
    assert not result.success
    assert any(expected in f for f in result.failed), result.failed
    assert "FAILED" in (tmp_path / "batch.html").read_text()
