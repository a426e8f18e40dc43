"""What the DAG tasks call: one function per task, settings read from the environment.

Each function takes the task's explicit data interval and params, so re-running a task for the
same interval changes nothing, and returns something small enough for XCom.
"""

from __future__ import annotations

import datetime as dt
import logging

from pipeline import training
from pipeline.settings import load_settings

log = logging.getLogger(__name__)


def interval(context: dict) -> tuple[str, str]:
    """The training window of a run: ``lookback_days`` days ending at the run's interval end.

    The end is the ``end_date`` param when given, else the data interval end, else (a manual run
    with no logical date) the day the run was queued for, at midnight UTC.
    """
    params = context.get("params") or {}
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
    end = dt.datetime(end.year, end.month, end.day, tzinfo=dt.timezone.utc)
    start, end = training.window(end, int(params.get("lookback_days", 7)))
    return start.isoformat(), end.isoformat()


def train_params(params: dict) -> dict:
    """The run's training params, validated (ValueError naming each bad value)."""
    from pydantic import ValidationError

    keys = training.TrainParams.model_fields
    try:
        return training.TrainParams(**{k: v for k, v in params.items() if k in keys}).model_dump()
    except ValidationError as err:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}"
                                   for e in err.errors())) from err


def ingest(window: tuple[str, str]) -> dict:
    start, end = (dt.datetime.fromisoformat(v) for v in window)
    return training.ingest(load_settings(), start, end)


def materialize(window: tuple[str, str]) -> dict:
    """Refresh the online store with the window's latest values, for lookups by customer id."""
    from pipeline import features

    start, end = (dt.datetime.fromisoformat(v) for v in window)
    features.apply_repo(load_settings())
    features.materialize(load_settings(), start, end)
    return {"materialized": list(window)}


def snapshot(window: tuple[str, str]) -> str:
    start, end = (dt.datetime.fromisoformat(v) for v in window)
    return training.snapshot(load_settings(), start, end)


def validate(snapshot_path: str) -> str:
    return training.validate(load_settings(), snapshot_path)


def train(snapshot_path: str, report: str, params: dict) -> dict:
    return training.train(load_settings(), snapshot_path, train_params(params),
                          validation_report=report)


def evaluate(trained: dict, snapshot_path: str, params: dict) -> dict:
    result = training.evaluate(load_settings(), trained["run_id"], snapshot_path,
                               seed=int(params.get("seed", 42)))
    return {"run_id": trained["run_id"], "k": trained["k"],
            "silhouette": result["challenger"].get("silhouette")}


def gates(evaluated: dict, snapshot_path: str, report: str) -> dict:
    """The promotion gates; the summary says whether the drift needs a person's review."""
    return training.gates(load_settings(), evaluated["run_id"], snapshot_path, report)


def register(gated: dict, review: dict | None = None) -> dict:
    """Register a gated run; ``review`` is the drift reviewer's answer if there was a review."""
    return training.register(load_settings(), gated["run_id"], gates=gated, review=review)


def ready_to_serve(registered: dict) -> dict:
    return training.verify_serving(load_settings(), version=registered["version"])


def rollback(params: dict, actor: str) -> dict:
    """Move ``champion`` back (to ``previous``, or the ``to_version`` param) for the given
    reason."""
    from pipeline import registry

    return registry.rollback(load_settings(), reason=str(params.get("reason") or ""),
                             to_version=params.get("to_version") or None, actor=actor)


def rollout(registered: dict) -> dict:
    """Roll the newly registered challenger out on the configured backend (shadow, traffic
    steps, promoted), or say why not. A rolled-back rollout fails the task after the rollback
    is complete, so the run shows red and the on-call sees the reason."""
    from dataclasses import asdict

    from pipeline import rollout as ro

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


def sync_server(rolled_back: dict) -> dict:
    """Serve the champion the rollback chose, where a rollout backend is configured."""
    from pipeline import rollout as ro

    routing = ro.sync_stable(load_settings())
    return {"champion": rolled_back["champion"], "server": routing or "no rollout backend"}
