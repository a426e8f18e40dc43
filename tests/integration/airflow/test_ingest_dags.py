"""The kmeans_ingest DAGs, one per source, in real dag.test() runs: the lake, the local
PostgreSQL (127.0.0.1:5432) and the local Redis (127.0.0.1:6379). Each run lands one interval,
reports its counts, is idempotent, and emits the features asset event that kmeans_training is
scheduled on; an asset-triggered training run takes its window from the events."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipeline.orchestration.dag_defaults import FEATURES_ASSET, INGEST_SOURCES
from tests.helpers.clock import BEGIN, at, iso, iso_day, partition, zulu
from tests.helpers.homes import make_settings
from tests.helpers.sources import SERVER, create_table, event, generated, insert

DAY0 = BEGIN  # the first sample day (tests.helpers.clock), as in tests.helpers.sources
INGEST_DAGS = [f"kmeans_ingest_{source}" for source in INGEST_SOURCES]


# ---------------------------------------------------------------- the DAGs as declared


def test_one_ingest_dag_per_source_each_landing_to_the_features_asset(airflow_db):
    from airflow.sdk import Asset

    from pipeline.devtools.airflow_env import load_dag

    for dag_id, (source, spec) in zip(INGEST_DAGS, INGEST_SOURCES.items(), strict=True):
        dag = load_dag(dag_id)
        assert dag.catchup is False and "ingest" in dag.tags and source in dag.tags
        assert dag.timetable.expression == {"@daily": "0 0 * * *",
                                            "@hourly": "0 * * * *"}[spec.cron]
        assert dag.timetable.interval == spec.period  # each run lands the period that ended
        assert dag.get_task("land").outlets == [Asset(**FEATURES_ASSET)]
        dag.params.validate()  # a plain "Trigger" works: start and end are optional
        assert dag.params["start"] is None and dag.params["end"] is None


def test_training_runs_daily_as_before_or_on_the_features_asset(airflow_db):
    from airflow.sdk import Asset, AssetOrTimeSchedule
    from airflow.sdk.definitions.dag import _create_timetable
    from airflow.serialization.encoders import encode_timetable

    from pipeline.devtools.airflow_env import load_dag

    dag = load_dag("kmeans_training")
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.asset_condition == Asset(**FEATURES_ASSET)
    # The time part is exactly what schedule="@daily" was.
    assert encode_timetable(dag.timetable.timetable) == encode_timetable(
        _create_timetable("@daily", dag.timezone))


# ---------------------------------------------------------------- helpers


def _files(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders, by path."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def _xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    """A task's XCom value as the task pushed it (None: none)."""
    from airflow.models.xcom import XComModel
    from airflow.sdk.serde import deserialize
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id,
            XComModel.task_id == task_id, XComModel.key == key)).first()
        return None if row is None else deserialize(XComModel.deserialize_value(row))


def _run(dag_id: str, conf: dict | None = None, logical_date: dt.datetime | None = None):
    """A dag.test() run: its state, its land task's state and return value, and the features
    asset events it emitted."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from pipeline.devtools.airflow_env import load_dag

    run = load_dag(dag_id).test(logical_date=logical_date or DAY0 + dt.timedelta(days=2),
                                run_conf=conf or {})
    [ti] = run.get_task_instances()
    with create_session() as session:
        events = [e.extra for e in session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
                AssetModel.uri == FEATURES_ASSET["uri"], AssetEvent.source_dag_id == dag_id,
                AssetEvent.source_run_id == run.run_id))]
    return str(run.state), str(ti.state), _xcom(dag_id, run.run_id, "land"), events


def _extra(report: dict) -> dict:
    return {k: report[k] for k in ("source", "start", "end", "landed", "rejected", "new")}


# ---------------------------------------------------------------- the lake


def test_lake_lands_the_interval_quarantines_a_bad_row_and_emits_the_asset_event(
        airflow_db, tmp_path, monkeypatch):
    from pipeline.data.datagen import generate_lake
    from pipeline.data.ingest import OFFLINE_TABLE

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    settings = make_settings(tmp_path)
    lake = generate_lake(settings.lake_dir, n_customers=300, start=DAY0.date(), days=2, seed=5)
    part = settings.lake_dir / "customer_activity" / partition(1) / "part-00000.parquet"
    frame = pd.read_parquet(part)
    bad = frame.iloc[[0]].assign(total_spend_30d=-5.0,
                                 event_timestamp=frame.event_timestamp.iloc[0]
                                 + pd.Timedelta(seconds=1))
    pd.concat([frame, bad], ignore_index=True).to_parquet(part, index=False)
    conf = {"start": zulu(0), "end": zulu(2)}

    state, task_state, report, events = _run("kmeans_ingest_lake", conf)
    assert (state, task_state) == ("success", "success")
    assert report["source"] == "lake" and report["days"] == [iso_day(0), iso_day(1)]
    assert (report["start"], report["end"]) == (iso(0), iso(2))
    assert (report["landed"], report["rejected"]) == (lake.rows, 1)
    assert report["reasons"] == {"total_spend_30d outside [0, 1e+06]": 1}
    quarantine = settings.rejected_dir / OFFLINE_TABLE / partition(1) / "part-00000.parquet"
    assert report["quarantine"] == [str(quarantine)]
    assert pd.read_parquet(quarantine)["reject_reason"].tolist() == [
        "total_spend_30d outside [0, 1e+06]"]
    assert events == [_extra(report)]

    assert report["new"] == lake.rows

    # Re-running the interval: the same files, byte for byte, and the same report, but no new
    # row (a training on this arrival counts new rows: landing a day twice trains once).
    landed = _files(settings.offline_dir, settings.rejected_dir)
    again = _run("kmeans_ingest_lake", conf)
    assert again[:3] == (state, task_state, {**report, "new": 0,
                                              "unchanged_days": report["days"]})
    assert again[3] == [{**_extra(report), "new": 0}]
    assert _files(settings.offline_dir, settings.rejected_dir) == landed

    # Without start and end: the day that ended at the logical date.
    _, _, day, _ = _run("kmeans_ingest_lake", logical_date=at(1))
    assert (day["start"], day["end"], day["days"]) == (iso(0), iso(1), [iso_day(0)])

    # A partial day is refused at once, without retries; nothing is emitted.
    state, task_state, _, events = _run("kmeans_ingest_lake", {
        "start": zulu(0, hours=6), "end": zulu(1)})
    assert (state, task_state, events) == ("failed", "failed", [])


# ---------------------------------------------------------------- training on data arrival


def test_an_asset_triggered_training_run_trains_on_the_window_the_landing_ends(
        airflow_db, tmp_path, monkeypatch):
    """The lake landing's asset event, consumed by a run of kmeans_training created as the
    scheduler creates one on data arrival (no logical date, no data interval), then its
    ``window`` task run for real: the window ends where the landing ends, the landings are
    logged and kept in the XCom ``arrivals``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    from pipeline.data.datagen import generate_lake
    from pipeline.devtools.airflow_env import load_dag

    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    generate_lake(make_settings(tmp_path).lake_dir, n_customers=100, start=DAY0.date(), days=1)
    state, _, report, _ = _run("kmeans_ingest_lake", logical_date=DAY0 + dt.timedelta(days=1))
    assert state == "success" and report["end"] == iso(1)
    # the landing brings enough rows to retrain on (fewer: the run is skipped,
    # tests/unit/orchestration/test_flow.py)
    monkeypatch.setenv("KMEANS_TRAIN_MIN_ARRIVAL_ROWS", str(report["landed"]))

    dag = load_dag("kmeans_training")
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    queued = at(1, minutes=7, seconds=13)  # when the event queued the run
    with create_session() as session:
        event = session.scalars(  # the one the run above emitted: the newest
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
                AssetModel.uri == FEATURES_ASSET["uri"]).order_by(AssetEvent.id.desc())).first()
        assert event.extra == _extra(report)
        run = scheduler_dag.create_dagrun(
            run_id=f"asset_triggered__{uuid.uuid4().hex[:8]}", logical_date=None,
            data_interval=None, run_after=queued, run_type=DagRunType.ASSET_TRIGGERED,
            triggered_by=DagRunTriggeredByType.ASSET, state=DagRunState.RUNNING,
            session=session)
        run.consumed_asset_events.append(event)
        session.flush()
        ti = run.get_task_instance("window", session=session)
        ti.try_number = 1
        source_run_id, run_id = event.source_run_id, run.run_id
        session.commit()
        session.refresh(ti)
        session.expunge(ti)
    _run_task(ti=ti, task=dag.get_task("window"))

    with create_session() as session:
        assert session.scalar(select(TaskInstance.state).where(
            TaskInstance.run_id == run_id, TaskInstance.task_id == "window")) == "success"
    # the training window: the week that ends where the landing ends
    assert _xcom("kmeans_training", run_id, "window") == (iso(-6), iso(1))
    [arrival] = _xcom("kmeans_training", run_id, "window", key="arrivals")
    assert {k: arrival[k] for k in ("source", "start", "end", "landed", "rejected", "new")} \
        == _extra(report)
    assert (arrival["dag_id"], arrival["run_id"]) == ("kmeans_ingest_lake", source_run_id)


# ---------------------------------------------------------------- PostgreSQL


def test_sql_is_skipped_until_configured(airflow_db, tmp_path, monkeypatch):
    monkeypatch.setenv("KMEANS_HOME", str(tmp_path))
    state, task_state, report, events = _run("kmeans_ingest_sql")
    assert (state, task_state, report, events) == ("success", "skipped", None, [])


def test_sql_lands_the_watermark_interval_of_the_configured_source(
        airflow_db, tmp_path, monkeypatch, schema):
    from pipeline.data.ingest import OFFLINE_TABLE

    relation = create_table(schema, "activity")
    good = generated(days=1, customers=200, seed=3)
    first = good.sort_values("updated_at").iloc[[0]]  # in the interval
    bad = first.assign(discount_share=1.5,
                       event_timestamp=first.event_timestamp + pd.Timedelta(seconds=1))
    insert(relation, pd.concat([good, bad], ignore_index=True))
    for name, value in {"HOME": str(tmp_path), "SQL_URL": SERVER, "SQL_TABLE": relation,
                        "SQL_WATERMARK": "updated_at", "SQL_SOURCE": "shop"}.items():
        monkeypatch.setenv(f"KMEANS_{name}", value)
    settings = make_settings(tmp_path)
    start, end = DAY0, DAY0 + dt.timedelta(hours=12)
    conf = {"start": start.isoformat(), "end": end.isoformat()}

    state, task_state, report, events = _run("kmeans_ingest_sql", conf)
    assert (state, task_state) == ("success", "success")
    inside = ((good.updated_at >= start) & (good.updated_at < end)).sum()
    assert 0 < inside < len(good)  # the rows of the afternoon are the next interval's
    assert (report["source"], report["name"], report["landed"], report["rejected"]) == (
        "sql", "shop", inside, 1)
    assert report["reasons"] == {"discount_share outside [0, 1]": 1}
    [quarantine] = report["quarantine"]
    assert Path(quarantine).parent == settings.rejected_dir / "sql" / "shop"
    assert pd.read_parquet(quarantine)["reject_reason"].tolist() == [
        "discount_share outside [0, 1]"]
    assert events == [_extra(report)]

    assert report["new"] == inside
    landed = _files(settings.offline_dir / OFFLINE_TABLE, settings.rejected_dir)
    assert _run("kmeans_ingest_sql", conf)[:3] == (state, task_state, {**report, "new": 0})
    assert _files(settings.offline_dir / OFFLINE_TABLE, settings.rejected_dir) == landed

    # An hour without a row: skipped, nothing emitted.
    empty = {"start": zulu(4), "end": zulu(4, hours=1)}
    assert _run("kmeans_ingest_sql", empty) == ("success", "skipped", None, [])


def test_the_sql_source_settings_go_together():
    with pytest.raises(ValueError, match="KMEANS_SQL_TABLE, KMEANS_SQL_WATERMARK are unset"):
        make_settings(Path("/tmp/unused"), sql_url="postgresql://postgres@127.0.0.1/x")


# ---------------------------------------------------------------- the stream


def test_stream_is_drained_and_the_rows_of_the_interval_reported(
        airflow_db, tmp_path, monkeypatch, client, names):
    from pipeline.data.ingest import OFFLINE_TABLE
    from pipeline.data.sources import stream as st

    for name, value in {"HOME": str(tmp_path), **names}.items():
        monkeypatch.setenv(f"KMEANS_{name.upper()}", value)
    settings = make_settings(tmp_path)
    start = DAY0 + dt.timedelta(hours=5)
    inside = [event(i, 100 + i, pd.Timestamp(start) + pd.Timedelta(minutes=2 * i))
              for i in range(25)]
    before = [event(100 + i, 300 + i, pd.Timestamp(start) - pd.Timedelta(minutes=i + 1))
              for i in range(5)]
    bad = ["{not json", event(200, 400, pd.Timestamp(start), orders_30d=-3.0)]
    st.publish(client, names["stream_name"], [*inside, *before, *bad])
    conf = {"start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat()}

    state, task_state, report, events = _run("kmeans_ingest_stream", conf)
    assert (state, task_state) == ("success", "success")
    assert (report["landed"], report["rejected"]) == (25, 2)
    assert report["drained"]["read"] == 32 and report["drained"]["landed"] == 30
    assert sorted(report["reasons"].values()) == [1, 1]
    assert [r.split(" (")[0] for r in sorted(report["reasons"])] == [
        "event is not valid JSON", "orders_30d outside [0, 1000]"]
    assert report["quarantine"] == [str(settings.rejected_dir / st.QUARANTINE_FOLDER
                                        / OFFLINE_TABLE)]
    assert events == [_extra(report)]
    assert client.xpending(names["stream_name"], names["stream_group"])["pending"] == 0

    # Re-running the interval: nothing new to drain, the same rows, the same files.
    landed = _files(settings.offline_dir / OFFLINE_TABLE)
    state, task_state, again, events = _run("kmeans_ingest_stream", conf)
    assert (again["landed"], again["rejected"], again["drained"]["read"]) == (25, 0, 0)
    assert (report["new"], again["new"]) == (30, 0)
    assert events == [_extra(again)]
    assert _files(settings.offline_dir / OFFLINE_TABLE) == landed
