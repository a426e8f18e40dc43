"""The DAG task functions' window logic, without Airflow."""

import datetime as dt
from types import SimpleNamespace

import pytest

from pipeline.orchestration.flow import interval

UTC = dt.UTC


def test_window_ends_at_the_data_interval_end():
    ctx = {"params": {"lookback_days": 3},
           "data_interval_end": dt.datetime(2026, 11, 8, 0, 0, tzinfo=UTC)}
    assert interval(ctx) == ("2026-11-05T00:00:00+00:00", "2026-11-08T00:00:00+00:00")


def test_manual_run_without_logical_date_uses_run_after_day():
    ctx = {"params": {"lookback_days": 1}, "data_interval_end": None,
           "dag_run": SimpleNamespace(run_after=dt.datetime(2026, 11, 9, 13, 5, tzinfo=UTC))}
    assert interval(ctx) == ("2026-11-08T00:00:00+00:00", "2026-11-09T00:00:00+00:00")


def test_end_date_param_wins():
    ctx = {"params": {"lookback_days": 2, "end_date": "2026-11-04"},
           "data_interval_end": dt.datetime(2026, 11, 8, tzinfo=UTC)}
    assert interval(ctx)[1] == "2026-11-04T00:00:00+00:00"


@pytest.mark.parametrize("params, message", [
    ({"end_date": "next tuesday"}, "end_date='next tuesday' is not a date"),
    ({"k_min": 6, "k_max": 3}, "k_max=3 should be >= k_min=6"),
    ({"sample_fraction": 0}, "sample_fraction: Input should be greater than 0"),
    ({"kmax": 3}, r"unknown params \['kmax'\]; this DAG takes \[.*'k_max'"),
])
def test_bad_params_fail_before_any_work(params, message):
    ctx = {"params": params, "data_interval_end": dt.datetime(2026, 11, 8, tzinfo=UTC)}
    with pytest.raises(ValueError, match=message):
        interval(ctx)
