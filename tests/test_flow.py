"""The DAG task functions' window logic, without Airflow."""

import datetime as dt
from types import SimpleNamespace

import pytest

from pipeline.orchestration.flow import arrivals, ingest_interval, interval

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


def _asset_run(run_after: dt.datetime, *ends: str, lookback: int = 2) -> dict:
    """The context of a run the scheduler created on data arrival: no data interval, the
    landings' asset events."""
    events = [SimpleNamespace(extra={"source": "sql", "start": None, "end": end, "landed": 5,
                                     "rejected": 0},
                              source_dag_id="kmeans_ingest_sql", source_run_id=f"r{i}",
                              timestamp=run_after - dt.timedelta(seconds=10 - i))
              for i, end in enumerate(ends)]
    return {"params": {"lookback_days": lookback},
            "dag_run": SimpleNamespace(run_type="asset_triggered", run_after=run_after),
            "triggering_asset_events": {"features": events}}


@pytest.mark.parametrize("ends, expected_end", [
    # The newest landing ends after the hour the run was queued in: the window takes it in.
    (["2026-11-09T13:00:00+00:00", "2026-11-09T13:30:00+00:00"], "2026-11-09T13:30:00+00:00"),
    # A landing that ends on the hour, or earlier (an interval re-landed by hand): the hour.
    (["2026-11-09T13:00:00+00:00"], "2026-11-09T13:00:00+00:00"),
    (["2026-11-02T00:00:00+00:00"], "2026-11-09T13:00:00+00:00"),
    # Never after the run was queued; no events at all: the hour.
    (["2026-11-09T14:00:00+00:00"], "2026-11-09T13:00:00+00:00"),
    ([], "2026-11-09T13:00:00+00:00"),
])
def test_an_asset_triggered_run_trains_on_the_data_that_arrived(ends, expected_end,
                                                               monkeypatch):
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "0")
    run_after = dt.datetime(2026, 11, 9, 13, 41, 7, tzinfo=UTC)
    start, end = interval(_asset_run(run_after, *ends))
    assert end == expected_end
    assert dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start) == dt.timedelta(2)


def test_an_asset_triggered_run_on_a_trickle_is_skipped(monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    context = _asset_run(dt.datetime(2026, 11, 9, 13, 41, tzinfo=UTC),
                         "2026-11-09T13:00:00+00:00", "2026-11-09T12:00:00+00:00")  # 10 rows
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "11")
    with pytest.raises(AirflowSkipException, match="arrival of 10 rows, fewer than "
                                                   "KMEANS_TRAIN_MIN_ARRIVAL_ROWS=11"):
        interval(context)
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "10")
    assert interval(context)[1] == "2026-11-09T13:00:00+00:00"


def test_the_landings_that_triggered_a_run_are_listed_oldest_first():
    context = _asset_run(dt.datetime(2026, 11, 9, 13, 41, tzinfo=UTC),
                         "2026-11-09T13:00:00+00:00", "2026-11-09T12:00:00+00:00")
    assert [(a["end"], a["run_id"], a["dag_id"]) for a in arrivals(context)] == [
        ("2026-11-09T13:00:00+00:00", "r0", "kmeans_ingest_sql"),
        ("2026-11-09T12:00:00+00:00", "r1", "kmeans_ingest_sql")]


HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize("context, expected", [
    # A scheduled run: its data interval, the hour that ended at its logical date.
    ({"data_interval_start": dt.datetime(2026, 11, 9, 13, tzinfo=UTC),
      "data_interval_end": dt.datetime(2026, 11, 9, 14, tzinfo=UTC)}, ("13:00", "14:00")),
    # By hand at 14:37 (an interval that ends then): the hour that ended last, on the grid.
    ({"data_interval_start": dt.datetime(2026, 11, 9, 13, 37, tzinfo=UTC),
      "data_interval_end": dt.datetime(2026, 11, 9, 14, 37, tzinfo=UTC)}, ("13:00", "14:00")),
    ({"dag_run": SimpleNamespace(run_after=dt.datetime(2026, 11, 9, 14, 37, tzinfo=UTC))},
     ("13:00", "14:00")),
    # The params win; naive means UTC.
    ({"params": {"start": "2026-11-09T02:00:00", "end": "2026-11-09T05:30:00+00:00"},
      "data_interval_end": dt.datetime(2026, 11, 9, 14, tzinfo=UTC)}, ("02:00", "05:30")),
])
def test_an_ingest_run_lands_one_explicit_interval(context, expected):
    start, end = ingest_interval(context, HOUR)
    assert (start.strftime("%H:%M"), end.strftime("%H:%M")) == expected
    assert start.tzinfo == end.tzinfo == UTC


@pytest.mark.parametrize("params, message", [
    ({"start": "2026-11-09T02:00:00Z"}, "give both start and end"),
    ({"start": "2026-11-09T02:00:00Z", "end": "2026-11-09T02:00:00Z"}, "must be after start"),
    ({"start": "today", "end": "2026-11-09T02:00:00Z"}, "start='today' is not an ISO date-time"),
    ({"begin": "2026-11-09T02:00:00Z"}, r"unknown params \['begin'\]"),
])
def test_a_bad_ingest_interval_is_refused(params, message):
    with pytest.raises(ValueError, match=message):
        ingest_interval({"params": params, "data_interval_end": dt.datetime(2026, 11, 9,
                                                                            tzinfo=UTC)}, HOUR)
