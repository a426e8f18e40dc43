"""The DAG task functions' window logic, without Airflow."""

import datetime as dt
from types import SimpleNamespace

import pytest

from pipeline.orchestration.flow import arrivals, final, ingest_interval, interval
from tests.helpers import clock

UTC = dt.UTC


def test_window_ends_at_the_data_interval_end():
    ctx = {"params": {"lookback_days": 3},
           "data_interval_end": clock.at(7)}
    assert interval(ctx) == (clock.iso(4), clock.iso(7))


def test_manual_run_without_logical_date_uses_run_after_day():
    ctx = {"params": {"lookback_days": 1}, "data_interval_end": None,
           "dag_run": SimpleNamespace(run_after=clock.at(8, hours=13, minutes=5))}
    assert interval(ctx) == (clock.iso(7), clock.iso(8))


def test_end_date_param_wins():
    ctx = {"params": {"lookback_days": 2, "end_date": clock.iso_day(3)},
           "data_interval_end": clock.at(7)}
    assert interval(ctx)[1] == clock.iso(3)


@pytest.mark.parametrize("params, message", [
    ({"end_date": "next tuesday"}, "end_date='next tuesday' is not a date"),
    ({"k_min": 6, "k_max": 3}, "k_max=3 should be >= k_min=6"),
    ({"sample_fraction": 0}, "sample_fraction: Input should be greater than 0"),
    ({"kmax": 3}, r"unknown params \['kmax'\]; this DAG takes \[.*'k_max'"),
])
def test_bad_params_fail_before_any_work(params, message):
    """A bad param fails the window task at once: AirflowFailException, which Airflow does not
    retry (a retry cannot fix it)."""
    from airflow.sdk.exceptions import AirflowFailException

    ctx = {"params": params, "data_interval_end": clock.at(7)}
    with pytest.raises(AirflowFailException, match=message) as raised:
        interval(ctx)
    assert isinstance(raised.value.__cause__, ValueError)


def test_an_infrastructure_failure_keeps_the_retries():
    """Only the named errors end the task at once; anything else (an Airflow API call that
    timed out on a busy box) stays what it was, so the task's retries apply."""
    from airflow.sdk.exceptions import AirflowFailException

    @final(ValueError)
    def task(error: Exception):
        raise error

    with pytest.raises(AirflowFailException, match="ValueError: bad"):
        task(ValueError("bad"))
    with pytest.raises(TimeoutError, match="API call timed out"):
        task(TimeoutError("API call timed out"))


def _asset_run(run_after: dt.datetime, *ends: str, lookback: int = 2,
               new: list[int | None] | None = None) -> dict:
    """The context of a run the scheduler created on data arrival: no data interval, the
    landings' asset events (5 rows landed each; ``new``: how many of them were new, default
    all; None: an event without the key, as an earlier version emitted)."""
    news = new or [5] * len(ends)
    events = [SimpleNamespace(extra={"source": "sql", "start": None, "end": end, "landed": 5,
                                     "rejected": 0,
                                     **({} if news[i] is None else {"new": news[i]})},
                              source_dag_id="kmeans_ingest_sql", source_run_id=f"r{i}",
                              timestamp=run_after - dt.timedelta(seconds=10 - i))
              for i, end in enumerate(ends)]
    return {"params": {"lookback_days": lookback},
            "dag_run": SimpleNamespace(run_type="asset_triggered", run_after=run_after),
            "triggering_asset_events": {"features": events}}


@pytest.mark.parametrize("ends, expected_end", [
    # The newest landing ends after the hour the run was queued in: the window takes it in.
    ([clock.iso(8, hours=13), clock.iso(8, hours=13, minutes=30)],
     clock.iso(8, hours=13, minutes=30)),
    # A landing that ends on the hour, or earlier (an interval re-landed by hand): the hour.
    ([clock.iso(8, hours=13)], clock.iso(8, hours=13)),
    ([clock.iso(1)], clock.iso(8, hours=13)),
    # Never after the run was queued; no events at all: the hour.
    ([clock.iso(8, hours=14)], clock.iso(8, hours=13)),
    ([], clock.iso(8, hours=13)),
])
def test_an_asset_triggered_run_trains_on_the_data_that_arrived(ends, expected_end,
                                                               monkeypatch):
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "0")
    run_after = clock.at(8, hours=13, minutes=41, seconds=7)
    start, end = interval(_asset_run(run_after, *ends))
    assert end == expected_end
    assert dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start) == dt.timedelta(2)


def test_an_asset_triggered_run_on_a_trickle_is_skipped(monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    context = _asset_run(clock.at(8, hours=13, minutes=41),
                         clock.iso(8, hours=13), clock.iso(8, hours=12))  # 10 rows
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "11")
    with pytest.raises(AirflowSkipException, match=r"arrival of 10 new rows \(0 landed again "
                                                   r"unchanged\), fewer than "
                                                   r"KMEANS_TRAIN_MIN_ARRIVAL_ROWS=11"):
        interval(context)
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "10")
    assert interval(context)[1] == clock.iso(8, hours=13)


def test_landing_the_same_rows_again_starts_no_second_training(monkeypatch):
    """A day landed twice (a run by hand beside the scheduled one): the second landing's event
    says it brought no new row, so the training it would trigger is skipped. An event without
    ``new`` (from an earlier version) counts all it landed."""
    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", "1")
    queued = clock.at(8, hours=13, minutes=41)
    again = _asset_run(queued, clock.iso(8, hours=13), new=[0])
    with pytest.raises(AirflowSkipException, match=r"arrival of 0 new rows \(5 landed again "):
        interval(again)
    assert interval(_asset_run(queued, clock.iso(8, hours=13), new=[None]))[1] == \
        clock.iso(8, hours=13)
    assert interval(_asset_run(queued, clock.iso(8, hours=13), clock.iso(8, hours=12),
                               new=[0, 3]))[1] == clock.iso(8, hours=13)


def test_the_landings_that_triggered_a_run_are_listed_oldest_first():
    context = _asset_run(clock.at(8, hours=13, minutes=41),
                         clock.iso(8, hours=13), clock.iso(8, hours=12))
    assert [(a["end"], a["run_id"], a["dag_id"]) for a in arrivals(context)] == [
        (clock.iso(8, hours=13), "r0", "kmeans_ingest_sql"),
        (clock.iso(8, hours=12), "r1", "kmeans_ingest_sql")]


HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize("context, expected", [
    # A scheduled run: its data interval, the hour that ended at its logical date.
    ({"data_interval_start": clock.at(8, hours=13),
      "data_interval_end": clock.at(8, hours=14)}, ("13:00", "14:00")),
    # By hand at 14:37 (an interval that ends then): the hour that ended last, on the grid.
    ({"data_interval_start": clock.at(8, hours=13, minutes=37),
      "data_interval_end": clock.at(8, hours=14, minutes=37)}, ("13:00", "14:00")),
    ({"dag_run": SimpleNamespace(run_after=clock.at(8, hours=14, minutes=37))},
     ("13:00", "14:00")),
    # The params win; naive means UTC.
    ({"params": {"start": f"{clock.iso_day(8)}T02:00:00",
                 "end": clock.iso(8, hours=5, minutes=30)},
      "data_interval_end": clock.at(8, hours=14)}, ("02:00", "05:30")),
])
def test_an_ingest_run_lands_one_explicit_interval(context, expected):
    start, end = ingest_interval(context, HOUR)
    assert (start.strftime("%H:%M"), end.strftime("%H:%M")) == expected
    assert start.tzinfo == end.tzinfo == UTC


@pytest.mark.parametrize("params, message", [
    ({"start": clock.zulu(8, hours=2)}, "give both start and end"),
    ({"start": clock.zulu(8, hours=2), "end": clock.zulu(8, hours=2)}, "must be after start"),
    ({"start": "today", "end": clock.zulu(8, hours=2)}, "start='today' is not an ISO date-time"),
    ({"begin": clock.zulu(8, hours=2)}, r"unknown params \['begin'\]"),
])
def test_a_bad_ingest_interval_is_refused(params, message):
    """At once: AirflowFailException, which Airflow does not retry (a retry cannot fix a param;
    the ingest DAGs used to wait out their retry delay first)."""
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=message):
        ingest_interval({"params": params, "data_interval_end": clock.at(8)}, HOUR)
