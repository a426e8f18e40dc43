"""What the DAG tasks call: one function per task, settings read from the environment.

Each function takes the task's explicit data interval and params, so re-running a task for the
same interval changes nothing, and returns something small enough for XCom. Each calls the
stage's own function; nothing here but unpacking and packing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from pipeline import registry
from pipeline.core.io import PRIVATE_FILE_MODE, atomic_write_json, file_lock
from pipeline.core.params import parse
from pipeline.core.settings import load_settings
from pipeline.data import features
from pipeline.data.ingest import OFFLINE_TABLE, PART, IngestRefused, ingest_lake, landed_rows
from pipeline.data.params import IntervalParams
from pipeline.data.sources import postgres, stream
from pipeline.data.validation import ValidationFailed, validate_snapshot
from pipeline.monitoring import actions as monitoring_actions
from pipeline.monitoring.shadow import Shadow
from pipeline.monitoring.window import monitor_window, monitoring_dir
from pipeline.orchestration.dag_defaults import FEATURES_ASSET, INGEST_SOURCES
from pipeline.promotion import gates as gate_checks
from pipeline.promotion.gates import GateRefused
from pipeline.promotion.params import PromoteParams, PublishParams, RollbackParams
from pipeline.promotion.publish import ChampionSegmenter, publish_segments, published_version
from pipeline.promotion.register import register as register_run
from pipeline.promotion.register import verify_serving
from pipeline.rollout import controller as ro
from pipeline.rollout import watch as rollout_watch
from pipeline.training import stages
from pipeline.training.params import TrainParams, WindowParams, parse_params, window

log = logging.getLogger(__name__)

_Task = TypeVar("_Task", bound=Callable[..., Any])


def final(*errors: type[BaseException]) -> Callable[[_Task], _Task]:
    """The task function's ``errors`` that a retry cannot fix (a bad param, a refused batch or
    model, a rolled-back rollout) fail the task at once, without retries
    (``AirflowFailException``). Anything else (an Airflow API call that timed out on a busy
    box, a server away for a moment) fails the try, and the task's retries apply."""
    def wrap(fn: _Task) -> _Task:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except errors as err:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"{type(err).__name__}: {err}") from err
        return run  # type: ignore[return-value]
    return wrap


@final(ValueError)
def run_params(model, params: dict | None):
    """A run's params as ``model`` types them; a bad one fails the task at once (a retry
    cannot fix it: a misspelt key once waited out the 2-minute retry delay first)."""
    return parse(model, dict(params or {}))


@final(ValueError)
def interval(context: dict) -> tuple[str, str]:
    """The training window of a run: ``lookback_days`` days ending at the run's interval end.

    The end is the ``end_date`` param when given, else the data interval end, else (a manual run
    with no logical date) the day the run was queued for, at midnight UTC. A run triggered by
    data arrival (the features asset, see :func:`arrivals`) has no data interval: its window
    ends at the hour it was queued in, or at the end of the newest interval that arrived when
    that is later (never after the run was queued), so it trains on the data that triggered it.
    Such a run is skipped when its landings brought fewer than ``train_min_arrival_rows`` rows
    (hourly trickles wait for the daily run instead of each starting a K sweep).
    """
    params = context.get("params") or {}
    _known_only(params, {*TrainParams.model_fields, *WindowParams.model_fields})
    span = parse(WindowParams, params, only_known=True)
    if span.reason:
        log.info("run reason: %s", span.reason)
    train_params(params)  # a bad K range fails here, before ingest and snapshot run
    lookback = span.lookback_days
    if span.end_date is not None:
        end = dt.datetime(span.end_date.year, span.end_date.month, span.end_date.day)
    elif context.get("data_interval_end") is not None:
        end = context["data_interval_end"]
    elif _run_type(context) == "asset_triggered":
        _enough_arrived(context)
        start, end = window(_arrival_end(context), lookback)
        log.info("training window [%s, %s)", start.isoformat(), end.isoformat())
        return start.isoformat(), end.isoformat()
    else:
        end = context["dag_run"].run_after
    end = dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC)
    start, end = window(end, lookback)
    return start.isoformat(), end.isoformat()


def _run_type(context: dict) -> str | None:
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return None if run_type is None else str(getattr(run_type, "value", run_type))


#: What each features asset event's extra says about the landing that emitted it.
#: ``new``: the rows this landing added or changed (0 when the interval was landed before with
#: the same rows): a training run on data arrival counts those, so landing a day twice (a manual
#: run beside the scheduled one) does not start a second training.
ARRIVAL_KEYS = ("source", "start", "end", "landed", "rejected", "new")


def arrivals(context: dict) -> list[dict]:
    """The landings that triggered the run: one entry per asset event (its extra's
    :data:`ARRIVAL_KEYS`, the DAG run that emitted it, when), oldest first."""
    found = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = event.extra or {}
            found.append({**{key: extra.get(key) for key in ARRIVAL_KEYS},
                          "dag_id": event.source_dag_id, "run_id": event.source_run_id,
                          "at": event.timestamp.isoformat()})
    return sorted(found, key=lambda a: a["at"])


def _enough_arrived(context: dict) -> None:
    """Skip an asset-triggered run whose landings brought too few rows to retrain on."""
    from airflow.sdk.exceptions import AirflowSkipException

    least = load_settings().train_min_arrival_rows
    found = arrivals(context)
    # An event of an earlier version has no "new": all it landed counts.
    landed = sum(int((a["landed"] if a["new"] is None else a["new"]) or 0) for a in found)
    if landed < least:
        again = sum(int(a["landed"] or 0) for a in found) - landed
        raise AirflowSkipException(
            f"data arrival of {landed} new rows ({again} landed again unchanged), fewer than "
            f"KMEANS_TRAIN_MIN_ARRIVAL_ROWS={least}: not retraining on it; the daily run takes "
            f"new rows in")


def _arrival_end(context: dict) -> dt.datetime:
    """The end of an asset-triggered run's window (see :func:`interval`); the arrivals are
    logged and kept in the task's XCom ``arrivals``."""
    queued = _aware(context["dag_run"].run_after)
    arrived = arrivals(context)
    ends = [_aware(dt.datetime.fromisoformat(str(a["end"]))) for a in arrived if a["end"]]
    end = max([_floor(queued, dt.timedelta(hours=1)), *(e for e in ends if e <= queued)])
    for landing in arrived:
        log.info("triggered by data arrival: %s [%s, %s) landed %s rows, rejected %s (%s/%s)",
                 landing["source"], landing["start"], landing["end"], landing["landed"],
                 landing["rejected"], landing["dag_id"], landing["run_id"])
    if not arrived:
        log.warning("asset-triggered run without asset events: the window ends at the hour "
                    "it was queued in")
    if context.get("ti") is not None:
        context["ti"].xcom_push(key="arrivals", value=arrived)
    return end


def _aware(value: dt.datetime) -> dt.datetime:
    """``value`` as a plain datetime in UTC (naive: UTC; Airflow's pendulum times too)."""
    plain = dt.datetime.fromisoformat(value.isoformat())
    return plain.replace(tzinfo=dt.UTC) if plain.tzinfo is None else plain.astimezone(dt.UTC)


def _floor(value: dt.datetime, period: dt.timedelta) -> dt.datetime:
    """``value`` down to the grid of ``period`` (a day: midnight UTC; an hour: the hour)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    value = _aware(value)
    return epoch + (value - epoch) // period * period


def _known_only(params: dict, known: set[str]) -> None:
    """A run's conf may not carry keys the DAG does not know: a misspelt key (``kmax``) would
    otherwise be ignored and the run go ahead with the default."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown params {unknown}; this DAG takes {sorted(known)}")


def train_params(params: dict) -> TrainParams:
    """The run's training params, validated (ValueError naming each bad value)."""
    return parse_params(params)


def _days(window: tuple[str, str]) -> tuple[dt.datetime, dt.datetime]:
    start, end = (dt.datetime.fromisoformat(v) for v in window)
    return start, end


def ingest(window: tuple[str, str], *, delete_missing: bool = False) -> dict:
    start, end = _days(window)
    return ingest_lake(load_settings(), start.date(), end.date(),
                       delete_missing=delete_missing).to_dict()


def materialize(window: tuple[str, str]) -> dict:
    """Refresh the online store with the window's latest values, for lookups by customer id."""
    settings = load_settings()
    start, end = _days(window)
    features.apply_repo(settings)
    features.materialize(settings, start, end)
    return {"materialized": list(window)}


def snapshot(window: tuple[str, str]) -> str:
    settings = load_settings()
    start, end = _days(window)
    features.apply_repo(settings)
    return features.training_snapshot(settings, start, end).path


@final(ValidationFailed)
def validate(snapshot_path: str) -> str:
    settings = load_settings()
    return validate_snapshot(settings, features.Snapshot.load(snapshot_path)).report_html


def train(snapshot_path: str, report: str, params: dict) -> dict:
    return stages.train(load_settings(), snapshot_path, train_params(params),
                        validation_report=report)


def evaluate(trained: dict, snapshot_path: str, params: dict) -> dict:
    result = stages.evaluate(load_settings(), trained["run_id"], snapshot_path,
                             seed=train_params(params).seed)
    return {"run_id": trained["run_id"], "k": trained["k"],
            "silhouette": result["challenger"].get("silhouette")}


@final(GateRefused)
def gates(evaluated: dict, snapshot_path: str, report: str) -> dict:
    """The promotion gates; the summary says whether the drift needs a person's review."""
    return gate_checks.check(load_settings(), evaluated["run_id"], snapshot_path, report)


def register(gated: dict, review: dict | None = None) -> dict:
    """Register a gated run; ``review`` is the drift reviewer's answer if there was a review."""
    return register_run(load_settings(), gated["run_id"], gates=gated, review=review)


def ready_to_serve(registered: dict) -> dict:
    return verify_serving(load_settings(), version=registered["version"])


@final(ValueError, LookupError, registry.AliasMoveInProgress)
def rollback(params: dict, actor: str) -> dict:
    """Move ``champion`` back (to ``previous``, or the ``to_version`` param) for the given
    reason."""
    asked = parse(RollbackParams, dict(params or {}))
    done = registry.rollback(load_settings(), reason=asked.reason, to_version=asked.to_version,
                             actor=actor, drop_challenger=asked.drop_challenger)
    log.warning("rollback: %s", done["summary"])
    return done


@final(ValueError, LookupError, registry.AliasMoveInProgress, ro.RolloutError)
def promote(params: dict, actor: str) -> dict:
    """Make a version champion by hand (the promote DAG): the ``version`` param, else the
    pending challenger. With ``canary`` and a rollout backend, it goes through the rollout's
    steps (shadow, traffic shares) and is rolled back at the first failed step; else it is
    promoted at once, as ``kmeans promote`` does, its gate figures in the audit trail."""
    asked = parse(PromoteParams, dict(params or {}))
    settings = load_settings()
    version = asked.version
    if version is None:
        found = registry.alias_version(settings, "challenger")
        if found is None:
            raise LookupError(f"model {settings.model_name!r} has no challenger to promote; "
                              f"give a version")
        version = str(found.version)
    reason = asked.reason
    if asked.canary and ro.backend_for(settings) is not None:
        state = _promoted_by_rollout(settings, version)
        log.warning("promoted version %s through the canary steps", version)
        return {"champion": version, "how": "canary", "reason": reason,
                "rollout": asdict(state)}
    found = registry.model_version(settings, version)
    figures = gate_checks.figures_of(gate_checks.load_summary(settings, found.run_id))
    done = registry.promote(settings, version, reason=reason, actor=actor, figures=figures)
    log.warning("promoted version %s: %s", version, done)
    return {**done, "champion": version, "how": "at once" if not asked.canary else
            "at once (no rollout backend: KMEANS_ROLLOUT_BACKEND=none)"}


@final(ro.RolloutError)
def rollout(registered: dict) -> dict:
    """Roll the newly registered challenger out on the configured backend (shadow, traffic
    steps, promoted), or say why not. A rolled-back rollout fails the task after the rollback
    is complete, so the run shows red and the on-call sees the reason.

    The task's success emits the champion asset (the segments are republished), so it
    succeeds only when the champion moved: the first version of a model, or a promoted
    rollout. Otherwise (no rollout backend: the challenger waits) it is skipped, with the
    reason in its log, and nothing is republished."""
    from airflow.sdk.exceptions import AirflowSkipException

    done = rollout_outcome(registered)
    if not done["champion_moved"]:
        log.info("rollout skipped: %s", done["reason"])
        raise AirflowSkipException(f"the champion did not move: {done['reason']}")
    return done


def rollout_outcome(registered: dict) -> dict:
    """:func:`rollout` without Airflow: what happened, and whether the champion moved."""
    settings = load_settings()
    version = str(registered["version"])
    if "champion" in registered.get("aliases", []):
        return {"version": version, "outcome": "first", "champion_moved": True,
                "reason": "first version of the model: it is the champion already"}
    if ro.backend_for(settings) is None:
        return {"version": version, "outcome": "skipped", "champion_moved": False,
                "reason": "KMEANS_ROLLOUT_BACKEND=none: the challenger waits for "
                          "`kmeans rollout` or `kmeans promote`"}
    return {**asdict(_promoted_by_rollout(settings, version)), "champion_moved": True}


def _promoted_by_rollout(settings, version: str):
    """Roll ``version`` out through the backend's steps; its final state once promoted, or
    :class:`RolloutError` once it was rolled back (the rollback is complete then)."""
    state = ro.controller_for(settings).start(version)
    if state.outcome != "promoted":
        raise ro.RolloutError(f"version {version} was rolled back: {state.reason}")
    return state


def publish(params: dict, context: dict | None = None) -> dict:
    """Publish every customer's segment (the customer_segment feature view). A run the champion
    asset triggered is skipped when the newest publication is the champion's already (an event
    that moved nothing); a run by hand always publishes."""
    from airflow.sdk.exceptions import AirflowSkipException

    asked = run_params(PublishParams, params)
    settings = load_settings()
    if asked.version is None and (context or {}).get("triggering_asset_events"):
        champion = registry.alias_version(settings, "champion")
        published = published_version(settings)
        if champion is not None and str(champion.version) == published:
            raise AirflowSkipException(f"the newest publication is the champion's (version "
                                       f"{published}) already: nothing to republish")
    done = publish_segments(settings, version=asked.version)
    log.info("published the segments of %d customers with version %s: %s", done["customers"],
             done["model_version"], done["folder"])
    return done


def sync_server(rolled_back: dict) -> dict:
    """Serve the champion the rollback chose, where a rollout backend is configured."""
    routing = ro.sync_stable(load_settings())
    return {"champion": rolled_back["champion"], "server": routing or "no rollout backend"}


def monitor(context: dict) -> dict:
    """One monitoring window: the run's data interval (``[start, end)``, UTC)."""
    asked = run_params(IntervalParams, context.get("params"))
    if asked.start is not None and asked.end is not None:
        start, end = asked.start, asked.end
    else:  # the hour that ended at the run's interval end (its logical date)
        end = context.get("data_interval_end") or context["dag_run"].run_after
        end = end.replace(minute=0, second=0, microsecond=0)
        begin: dt.datetime | None = context.get("data_interval_start")
        start = begin if begin is not None and begin < end else end - dt.timedelta(hours=1)
    settings = load_settings()
    figures = monitor_window(settings, start, end)
    log.info("monitoring report: %s", monitoring_url(settings, figures["report"]))
    return figures


def monitoring_url(settings, name: str) -> str:
    """Where a monitoring report is served (the Airflow plugin), else its path."""
    path = monitoring_dir(settings) / name
    return gate_checks.report_url(settings, path) or str(path)


def watch(figures: dict, actor: str) -> dict:
    """The post-promotion watch on this window: a new champion that degraded is rolled back
    and the server told (see :mod:`pipeline.rollout.watch`)."""
    decided = rollout_watch.watch(load_settings(), figures, actor=actor)
    (log.warning if decided["action"] != "none" else log.info)("watch: %s", decided["summary"])
    return decided


def retrain_decision(figures: dict, actor: str, watched: dict | None = None) -> dict | None:
    """The conf of the kmeans_training run to trigger (None: none, see the log). Not after
    the watch rolled the champion back: the next window judges the restored one."""
    if watched and watched.get("action") == "rolled_back":
        log.info("no retraining: the watch rolled version %s back to %s",
                 watched["champion_version"], watched["champion"])
        return None
    conf = monitoring_actions.retrain_decision(load_settings(), figures, actor=actor)
    if conf is None:
        log.info("no retraining: window %s is %s%s", figures["window"], figures["status"],
                 " (a retraining was triggered within the cooldown)"
                 if figures["status"] == "drift" else "")
    else:
        log.info("triggering kmeans_training: %s", conf["reason"])
    return conf


# ---------------------------------------------------------------- landing (kmeans_ingest DAGs)

def ingest_interval(context: dict, period: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    """The interval ``[start, end)`` a kmeans_ingest run lands: the ``start`` and ``end`` params
    (ISO date-times, naive meaning UTC) when given, else the run's data interval on the grid of
    ``period`` (a run triggered by hand at 14:37 lands the period that ended at 14:00)."""
    asked = run_params(IntervalParams, context.get("params"))
    if asked.start is not None and asked.end is not None:
        return _aware(asked.start), _aware(asked.end)
    end = _floor(context.get("data_interval_end") or context["dag_run"].run_after, period)
    begin = context.get("data_interval_start")
    begin = None if begin is None else _floor(begin, period)
    return (begin if begin is not None and begin < end else end - period), end


def land(source: str, context: dict) -> dict:
    """Land one interval of ``source`` (a key of :data:`INGEST_SOURCES`) in the offline feature
    table and report it: ``source, start, end, landed, rejected, reasons, quarantine`` and the
    source's own figures. The features asset event of the task gets the source, the interval
    and the counts as its extra (:data:`ARRIVAL_KEYS`).

    An interval without a row is skipped (no asset event: nothing arrived, nothing to retrain
    on); so is the SQL source while none is configured. A configuration error or a refused
    landing (too many rows rejected) fails the task without retries: a retry cannot fix it.
    """
    from airflow.sdk import Asset
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        start, end = ingest_interval(context, INGEST_SOURCES[source].period)
        report = _LANDINGS[source](load_settings(), start, end)
    except _NotConfigured as err:
        log.warning("%s", err)
        raise AirflowSkipException(str(err)) from err
    except (ValueError, IngestRefused, postgres.IntervalRefused) as err:
        if isinstance(err, postgres.SourceUnavailable):
            raise  # the server may come back: the task's retries apply
        raise AirflowFailException(str(err)) from err
    log.info("landed %s [%s, %s): %d rows, %d rejected %s; quarantine: %s", source,
             report["start"], report["end"], report["landed"], report["rejected"],
             report["reasons"], report["quarantine"] or "none")
    if report["landed"] == 0 and report["rejected"] == 0:
        raise AirflowSkipException(f"no rows of {source} in [{report['start']}, "
                                   f"{report['end']}): nothing landed, no asset event")
    event = context["outlet_events"][Asset(name=FEATURES_ASSET["name"],
                                           uri=FEATURES_ASSET["uri"])]
    event.extra.update({key: report[key] for key in ARRIVAL_KEYS})
    return report


class _NotConfigured(LookupError):
    """The source is not configured in this deployment."""


def _land_lake(settings, start: dt.datetime, end: dt.datetime) -> dict:
    """The lake's days of the interval (whole days only)."""
    for name, value in (("start", start), ("end", end)):
        if value != _floor(value, dt.timedelta(days=1)):
            raise ValueError(f"{name}={value.isoformat()} is not a midnight (UTC): the lake "
                             f"lands whole days")
    done = ingest_lake(settings, start.date(), end.date())
    # A day landed without a rejected row has no quarantine file (ingest removes a stale one).
    rejected = [settings.rejected_dir / OFFLINE_TABLE / f"day={day}" / PART for day in done.days]
    return {"source": "lake", "start": start.isoformat(), "end": end.isoformat(),
            "landed": done.accepted, "rejected": done.rejected, "reasons": done.reasons,
            "new": done.new, "quarantine": [str(p) for p in rejected if p.exists()],
            "days": done.days, "missing_days": done.missing_days,
            "unchanged_days": done.unchanged_days}


def _land_sql(settings, start: dt.datetime, end: dt.datetime) -> dict:
    """The rows of the configured PostgreSQL source whose watermark is in the interval."""
    sql = settings.sql
    if sql.sql_url is None or sql.sql_table is None or sql.sql_watermark is None:
        raise _NotConfigured("no SQL source configured: set KMEANS_SQL_URL, KMEANS_SQL_TABLE "
                             "and KMEANS_SQL_WATERMARK (and KMEANS_SQL_SOURCE for a query) to "
                             "land one with kmeans_ingest_sql; skipped")
    done = postgres.ingest_sql(settings, url=sql.sql_url.get_secret_value(),
                               table=sql.sql_table, watermark=sql.sql_watermark,
                               start=start.isoformat(), end=end.isoformat(),
                               source=sql.sql_source)
    quarantine = [f for f in done["files"] if f.startswith(str(settings.rejected_dir))]
    return {"source": "sql", "start": done["start"], "end": done["end"],
            "landed": done["accepted"], "rejected": done["rejected"],
            "new": _new_rows(settings, f"sql-{done['source']}", done),
            "reasons": done["reasons"], "quarantine": quarantine, "name": done["source"],
            "rows": done["rows"], "days": done["days"], "checksum": done["checksum"]}


def _new_rows(settings, name: str, done: dict) -> int:
    """The landing's accepted rows, or 0 when the same interval was landed before with the same
    rows (its checksum is kept per interval in ``<home>/sources/<name>.landings.json``)."""
    path = settings.home / "sources" / f"{name}.landings.json"
    key = f"{done['start']}/{done['end']}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock"), wait=60):
        seen = json.loads(path.read_text()) if path.exists() else {}
        if seen.get(key) == done["checksum"]:
            return 0
        seen[key] = done["checksum"]
        atomic_write_json(path, seen, mode=PRIVATE_FILE_MODE)
    return int(done["accepted"])


def _land_stream(settings, start: dt.datetime, end: dt.datetime) -> dict:
    """Drain the stream (until caught up, or ``stream_drain_seconds``), then count the stream's
    rows of the offline table whose event time is in the interval."""
    features.apply_repo(settings)  # the consumer pushes to the online store's push source
    drained = _drain(settings, settings.stream.stream_drain_seconds)
    return {"source": "stream", "start": start.isoformat(), "end": end.isoformat(),
            "landed": landed_rows(settings, start, end, files="stream-*.parquet"),
            # What this drain quarantined, whatever the event times (bad ones may have none).
            "rejected": drained.rejected, "reasons": drained.reasons,
            "new": drained.landed,  # events this drain wrote (redeliveries are not new)
            "quarantine": [str(settings.rejected_dir / stream.QUARANTINE_FOLDER
                               / OFFLINE_TABLE)] if drained.rejected else [],
            "drained": drained.to_dict()}


#: A drain reads in slices of this many seconds: a slice that reads nothing means caught up.
DRAIN_SLICE_SECONDS = 1.0


def consumer_hooks(settings) -> dict:
    """What the stream consumer does beside landing, as ``kmeans consume`` and the
    kmeans_ingest_stream drain run it: each fresh event's segment pushed (unless
    ``stream_segments`` is off) and the shadow model fed, both from one copy of the champion."""
    champion = registry.ChampionFollower(settings)
    return {"segmenter": ChampionSegmenter(settings, champion=champion)
            if settings.stream.stream_segments else None,
            "observers": [Shadow(settings, champion=champion).observe]}


def _drain(settings, seconds: float) -> stream.BatchResult:
    consumer = stream.Consumer(settings, stream.open_stream(settings), **consumer_hooks(settings))
    total = stream.BatchResult()
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            got = consumer.run(max_events=settings.stream.stream_batch_size,
                               seconds=min(left, DRAIN_SLICE_SECONDS), block_ms=250)
            total.add(got)
            if got.read == 0:
                break
        else:
            log.warning("stream not caught up after %.0f s (KMEANS_STREAM_DRAIN_SECONDS): "
                        "the rest lands on the next run", seconds)
    finally:
        consumer.close()
    log.info("drained the stream: %s", total.to_dict())
    return total


_LANDINGS = {"lake": _land_lake, "sql": _land_sql, "stream": _land_stream}
