"""What the DAG tasks call: one function per task, settings read from the environment.

Each function takes the task's explicit data interval and params, so re-running a task for the
same interval changes nothing, and returns something small enough for XCom. Each calls the
stage's own function; nothing here but unpacking and packing.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict

from pipeline import registry
from pipeline.core.settings import load_settings
from pipeline.data import features
from pipeline.data.ingest import ingest_lake
from pipeline.data.validation import validate_snapshot
from pipeline.monitoring import actions as monitoring_actions
from pipeline.monitoring.window import monitor_window, monitoring_dir
from pipeline.promotion import gates as gate_checks
from pipeline.promotion.publish import publish_segments
from pipeline.promotion.register import register as register_run
from pipeline.promotion.register import verify_serving
from pipeline.rollout import controller as ro
from pipeline.rollout import watch as rollout_watch
from pipeline.training import stages
from pipeline.training.params import TrainParams, parse_params, window

log = logging.getLogger(__name__)


def interval(context: dict) -> tuple[str, str]:
    """The training window of a run: ``lookback_days`` days ending at the run's interval end.

    The end is the ``end_date`` param when given, else the data interval end, else (a manual run
    with no logical date) the day the run was queued for, at midnight UTC.
    """
    params = context.get("params") or {}
    _known_only(params, {*TrainParams.model_fields, *WINDOW_PARAMS})
    if params.get("reason"):
        log.info("run reason: %s", params["reason"])
    train_params(params)  # a bad K range fails here, before ingest and snapshot run
    if params.get("end_date"):
        try:
            end = dt.datetime.fromisoformat(str(params["end_date"]))
        except ValueError as err:
            raise ValueError(f"end_date={params['end_date']!r} is not a date (YYYY-MM-DD)") from err
    elif context.get("data_interval_end") is not None:
        end = context["data_interval_end"]
    else:
        end = context["dag_run"].run_after
    end = dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC)
    start, end = window(end, int(params.get("lookback_days", 7)))
    return start.isoformat(), end.isoformat()


# The training DAG's params beside TrainParams' fields: the window.
WINDOW_PARAMS = ("lookback_days", "end_date", "reason")
ROLLBACK_PARAMS = ("reason", "to_version", "drop_challenger")


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


def gates(evaluated: dict, snapshot_path: str, report: str) -> dict:
    """The promotion gates; the summary says whether the drift needs a person's review."""
    return gate_checks.check(load_settings(), evaluated["run_id"], snapshot_path, report)


def register(gated: dict, review: dict | None = None) -> dict:
    """Register a gated run; ``review`` is the drift reviewer's answer if there was a review."""
    return register_run(load_settings(), gated["run_id"], gates=gated, review=review)


def ready_to_serve(registered: dict) -> dict:
    return verify_serving(load_settings(), version=registered["version"])


def rollback(params: dict, actor: str) -> dict:
    """Move ``champion`` back (to ``previous``, or the ``to_version`` param) for the given
    reason."""
    _known_only(params, set(ROLLBACK_PARAMS))
    done = registry.rollback(load_settings(), reason=str(params.get("reason") or ""),
                             to_version=params.get("to_version") or None, actor=actor,
                             drop_challenger=bool(params.get("drop_challenger")))
    log.warning("rollback: %s", done["summary"])
    return done


def rollout(registered: dict) -> dict:
    """Roll the newly registered challenger out on the configured backend (shadow, traffic
    steps, promoted), or say why not. A rolled-back rollout fails the task after the rollback
    is complete, so the run shows red and the on-call sees the reason."""
    settings = load_settings()
    version = str(registered["version"])
    if "champion" in registered.get("aliases", []):
        return {"version": version, "outcome": "skipped",
                "reason": "first version of the model: it is the champion already"}
    if ro.backend_for(settings) is None:
        return {"version": version, "outcome": "skipped",
                "reason": "KMEANS_ROLLOUT_BACKEND=none: the challenger waits for "
                          "`kmeans rollout` or `kmeans promote`"}
    state = ro.controller_for(settings).start(version)
    if state.outcome != "promoted":
        raise ro.RolloutError(f"version {version} was rolled back: {state.reason}")
    return asdict(state)


def publish(params: dict) -> dict:
    """Publish every customer's segment (the customer_segment feature view)."""
    _known_only(params, {"version"})
    done = publish_segments(load_settings(), version=params.get("version") or None)
    log.info("published the segments of %d customers with version %s: %s", done["customers"],
             done["model_version"], done["folder"])
    return done


def sync_server(rolled_back: dict) -> dict:
    """Serve the champion the rollback chose, where a rollout backend is configured."""
    routing = ro.sync_stable(load_settings())
    return {"champion": rolled_back["champion"], "server": routing or "no rollout backend"}


def monitor(context: dict) -> dict:
    """One monitoring window: the run's data interval (``[start, end)``, UTC)."""
    params = context.get("params") or {}
    _known_only(params, set(MONITOR_PARAMS))
    if params.get("start") or params.get("end"):
        if not (params.get("start") and params.get("end")):
            raise ValueError("give both start and end (ISO date-times, UTC), or neither")
        start, end = (_utc_param(params, name) for name in ("start", "end"))
    else:  # the hour that ended at the run's interval end (its logical date)
        end = context.get("data_interval_end") or context["dag_run"].run_after
        end = end.replace(minute=0, second=0, microsecond=0)
        begin: dt.datetime | None = context.get("data_interval_start")
        start = begin if begin is not None and begin < end else end - dt.timedelta(hours=1)
    settings = load_settings()
    figures = monitor_window(settings, start, end)
    log.info("monitoring report: %s", monitoring_url(settings, figures["report"]))
    return figures


MONITOR_PARAMS = ("start", "end")


def _utc_param(params: dict, name: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(str(params[name]))
    except ValueError as err:
        raise ValueError(f"{name}={params[name]!r} is not an ISO date-time") from err
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


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
