"""What a monitoring window calls for: a retraining, at most once per cooldown (and, through
:mod:`pipeline.rollout.watch`, a rollback of a new champion that degrades).

Every decision to act is appended to ``<home>/audit/monitoring.jsonl`` with the figures that
caused it (the window, its reasons, the champion); the cooldown is read back from there, so a
long drift episode triggers one retraining, not one per hour.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pipeline.core.io import append_line, file_lock, private_dir, read_json_lines
from pipeline.core.settings import Settings


def actions_path(settings: Settings) -> Path:
    return settings.home / "audit" / "monitoring.jsonl"


def read_actions(settings: Settings) -> list[dict]:
    return read_json_lines(actions_path(settings))


def retrain_decision(settings: Settings, figures: dict, *, actor: str,
                     now: dt.datetime | None = None) -> dict | None:
    """The conf of a kmeans_training run to trigger for a drifted window (and the audit entry
    that says why), or None: the window did not drift, or a retraining was triggered less
    than ``monitor_retrain_cooldown_hours`` ago."""
    if figures.get("status") != "drift":
        return None
    now = now or dt.datetime.now(dt.UTC)
    cooldown = dt.timedelta(hours=settings.monitoring.monitor_retrain_cooldown_hours)
    private_dir(actions_path(settings).parent)
    with file_lock(actions_path(settings).with_suffix(".lock"), wait=30):
        recent = [a for a in read_actions(settings) if a["action"] == "retrain"
                  and now - dt.datetime.fromisoformat(a["at"]) < cooldown]
        if recent:
            return None
        reason = (f"monitoring window {figures['window']} drifted: "
                  + "; ".join(figures["reasons"]))
        _append(settings, "retrain", actor=actor, figures=figures, at=now,
                extra={"reasons": figures["reasons"]})
    return {"reason": reason[:1000]}


def record(settings: Settings, action: str, *, actor: str, figures: dict,
           extra: dict | None = None) -> dict:
    """Append one action taken on a window (``rollback``, ``rollback_refused``, ...) to the
    trail, with the window's key figures and ``extra``."""
    private_dir(actions_path(settings).parent)
    with file_lock(actions_path(settings).with_suffix(".lock"), wait=30):
        return _append(settings, action, actor=actor, figures=figures,
                       at=dt.datetime.now(dt.UTC), extra=extra or {})


def _append(settings: Settings, action: str, *, actor: str, figures: dict, at: dt.datetime,
            extra: dict) -> dict:
    """The caller holds the trail's lock."""
    entry = {"at": at.isoformat(), "action": action, "actor": actor,
             "window": figures["window"], "champion_version": figures.get("champion_version"),
             "report": figures.get("report"), "mlflow_run_id": figures.get("mlflow_run_id"),
             "figures": {k: figures.get(k) for k in (
                 "rows", "segment_psi", "distance_ratio", "ood_rate",
                 "low_margin_share", "silhouette")}
             | {"feature_drift_share": (figures.get("feature_drift") or {}).get("drift_share"),
                "shadow_max_shift": (figures.get("shadow") or {}).get("max_shift")},
             **extra}
    append_line(actions_path(settings), json.dumps(entry, sort_keys=True, default=str))
    return entry
