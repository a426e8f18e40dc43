"""The watch after a promotion: a new champion that degrades in production is rolled back.

For ``watch_hours`` after a version became champion (the time of its promotion in the alias
audit trail), every monitoring window also judges it on what production saw:

- from the window (the prediction log against the champion's own training reference): the
  ood rate, the ratio of mean distance to centroid and the PSI of the segment shares, with
  the monitoring thresholds (``monitor_max_*``);
- from the server (the backend's live analysis window, the same figures the rollout controller
  judged the canary on): the error rate and the p99 latency of the champion's requests
  (``watch_max_error_rate``, ``watch_max_p99_ms``).

Any check over its limit rolls the champion back to ``previous`` through the registry (under
the alias lock, the figures in the audit trail) and then tells the server, the way a rollback
by hand does (:func:`pipeline.rollout.controller.sync_stable`: the restored version is loaded
into the stable slot before the bad one stops answering, so no request fails). The decision,
rolled back or not, goes to ``<home>/audit/monitoring.jsonl`` whenever a check failed.

Feature drift alone does not roll back: the data moved, and the previous model saw it no more
than the new one. That is what retraining is for.
"""

from __future__ import annotations

import datetime as dt
import logging

from pipeline import registry
from pipeline.core.settings import Settings
from pipeline.monitoring import actions
from pipeline.rollout.base import RolloutError
from pipeline.rollout.controller import ACTOR, backend_for, sync_stable

log = logging.getLogger(__name__)


def promoted_at(settings: Settings, version: str) -> dt.datetime | None:
    """When ``version`` was last promoted to champion (the alias audit trail), or None (the
    first version, champion by registration, has nothing to return to and is not watched)."""
    moves = [e for e in registry.read_audit(settings)
             if e.get("model") == settings.model_name and e.get("alias") == "champion"
             and e.get("operation") == "promotion" and e.get("to_version") == str(version)]
    return dt.datetime.fromisoformat(moves[-1]["at"]) if moves else None


def checks(settings: Settings, figures: dict, live: dict | None) -> dict:
    """Each watched figure with its limit and whether it holds; a figure that is unknown
    (no rows in the window, no requests on the server) is not judged."""
    monitoring = settings.monitoring
    found = {
        "ood_rate": (figures.get("ood_rate"), monitoring.monitor_max_ood_rate),
        "distance_ratio": (figures.get("distance_ratio"), monitoring.monitor_max_distance_ratio),
        "segment_psi": (figures.get("segment_psi"), monitoring.monitor_max_segment_psi),
        "error_rate": ((live or {}).get("error_rate") if (live or {}).get("requests") else None,
                       settings.rollout.watch_max_error_rate),
        "p99_latency_ms": (((live or {}).get("latency_ms") or {}).get("p99"),
                           settings.rollout.watch_max_p99_ms),
    }
    return {name: {"value": value, "max": limit, "ok": value is None or value <= limit}
            for name, (value, limit) in found.items()}


def watch(settings: Settings, figures: dict, *, actor: str, backend=None,
          now: dt.datetime | None = None) -> dict:
    """Judge the champion of the monitoring window ``figures``; roll it back when it is in its
    watch window and a check fails. Returns what was decided (``action``: ``none``,
    ``rolled_back`` or ``refused``) with the checks and a one-line ``summary``."""
    now = now or dt.datetime.now(dt.UTC)
    version = figures.get("champion_version")
    out: dict = {"window": figures.get("window"), "champion_version": version,
                 "action": "none"}
    if version is None or figures.get("status") not in ("ok", "drift"):
        return {**out, "summary": f"not judged: window status {figures.get('status')}"}
    current = registry.alias_version(settings, "champion")
    if current is None or str(current.version) != str(version):
        return {**out, "summary": f"not judged: the champion is now "
                                  f"{current.version if current else None}, not {version}"}
    since = promoted_at(settings, version)
    watch_for = dt.timedelta(hours=settings.rollout.watch_hours)
    if since is None or now - since > watch_for:
        return {**out, "summary": f"version {version} is not in a watch window (promoted "
                                  f"{since.isoformat() if since else 'never'}, watch "
                                  f"{settings.rollout.watch_hours:g} h)"}
    backend = backend if backend is not None else backend_for(settings)
    live = None
    if backend is not None:
        try:
            live = backend.live().get(str(version))
        except RolloutError as err:  # the server's figures are missing; the window's still count
            log.warning("watch: no live figures from the server: %s", err)
    judged = checks(settings, figures, live)
    out.update(checks=judged, promoted_at=since.isoformat(),
               watch_ends=(since + watch_for).isoformat())
    failed = [f"{n} {c['value']:.4g} > {c['max']:g}" for n, c in judged.items() if not c["ok"]]
    if not failed:
        return {**out, "summary": f"version {version} holds in its watch window "
                                  f"(until {out['watch_ends']})"}
    reason = (f"watch after promotion: version {version} degraded in window "
              f"{figures['window']}: " + "; ".join(failed))
    evidence = {"window": figures["window"], "report": figures.get("report"),
                "mlflow_run_id": figures.get("mlflow_run_id"), "checks": judged}
    try:
        done = registry.rollback(settings, reason=reason, actor=f"{ACTOR}/watch:{actor}",
                                 figures=evidence)
    except (LookupError, ValueError, registry.AliasMoveInProgress) as err:
        actions.record(settings, "rollback_refused", actor=actor, figures=figures,
                       extra={"reasons": failed, "error": str(err)})
        log.error("watch: version %s degraded (%s) but cannot be rolled back: %s", version,
                  "; ".join(failed), err)
        return {**out, "action": "refused", "reasons": failed,
                "summary": f"version {version} degraded but was not rolled back: {err}"}
    server = sync_stable(settings, backend) if backend is not None else None
    actions.record(settings, "rollback", actor=actor, figures=figures,
                   extra={"reasons": failed, "rolled_back_to": done["champion"],
                          "server": server})
    log.warning("watch: %s; champion is version %s again; server routing %s", reason,
                done["champion"], server or "(no rollout backend configured)")
    return {**out, "action": "rolled_back", "reasons": failed, "champion": done["champion"],
            "server": server or "no rollout backend",
            "summary": f"version {version} rolled back to {done['champion']}: "
                       + "; ".join(failed)}
