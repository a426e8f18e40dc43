"""Promotion gates: what a trained model must pass before it is registered as challenger.

- **data**: the snapshot's Great Expectations result (every expectation met);
- **quality**: the lower bound of the challenger's 95% bootstrap silhouette interval on the
  holdout at or above a threshold, Davies-Bouldin at or below one, no empty cluster, no
  cluster relocated during the fit, no cluster below a minimum share of the training rows;
- **comparison**: on the same holdout, the challenger's silhouette and Davies-Bouldin no worse
  than the champion's by more than a relative tolerance (both are ratios, comparable across
  models whose preprocessing differs; inertia is not, so it is not compared). The first model
  passes with a note;
- **drift**: the share of feature columns that drifted from the champion's reference sample
  (Evidently). Over the threshold the gate does not refuse: it asks for a person's review
  (the training DAG waits at an approval task).

Each gate gives a :class:`GateResult` with its figures; :func:`check` runs all four on a
training run, logs ``gates/<name>.json`` and a ``gates.json`` summary to the run, and raises
:class:`GateRefused`, naming every refusing gate and its numbers, if any refused. It also
profiles the candidate's segments (:mod:`pipeline.promotion.profiles`) and, with a champion,
writes the page that shows both profiles side by side; the drift review links to it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeGuard
from urllib.parse import quote

from pipeline import registry
from pipeline.core.settings import Settings
from pipeline.data.features import Snapshot
from pipeline.promotion import drift, profiles
from pipeline.training import stages as training

log = logging.getLogger(__name__)

SUMMARY_ARTIFACT = "gates.json"


@dataclass(frozen=True)
class GateResult:
    gate: str
    status: Literal["passed", "refused", "review"]
    message: str
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class GateRefused(RuntimeError):
    """One or more gates refused the model; the message names each gate and its numbers."""

    def __init__(self, run_id: str, refused: list[str]):
        super().__init__(f"run {run_id} refused by the gates: " + "; ".join(refused))
        self.refused = refused


# ---------------------------------------------------------------- the gates


def data_gate(validation: dict | None) -> GateResult:
    """The Great Expectations result of the snapshot (the validation report's JSON)."""
    if validation is None:
        return GateResult("data", "refused", "data gate refused: the snapshot has no "
                          "validation report; run `kmeans validate` on it first")
    stats = validation["statistics"]
    figures = {"success": bool(validation["success"]),
               "evaluated": stats["evaluated_expectations"],
               "successful": stats["successful_expectations"],
               "success_percent": stats.get("success_percent"),
               "failed": validation.get("failed", [])[:5]}
    if figures["success"]:
        return GateResult("data", "passed", f"data gate passed: {figures['successful']} of "
                          f"{figures['evaluated']} expectations met", figures)
    return GateResult("data", "refused", f"data gate refused: {len(validation['failed'])} of "
                      f"{figures['evaluated']} expectations failed: "
                      + "; ".join(figures["failed"]), figures)


def quality_gate(holdout: dict, cluster_shares: list[float], empty_relocations: int, *,
                 min_silhouette_lo: float, max_davies_bouldin: float,
                 min_cluster_share: float) -> GateResult:
    """Cluster quality of the challenger: ``holdout`` is its holdout metrics (evaluate's),
    ``cluster_shares`` its share of the training rows per cluster, ``empty_relocations`` how
    many times the fit moved an emptied centroid."""
    smallest = min(cluster_shares)
    figures = {
        "k": len(cluster_shares), "silhouette": holdout.get("silhouette"),
        "silhouette_lo": holdout.get("silhouette_lo"),
        "silhouette_hi": holdout.get("silhouette_hi"),
        "davies_bouldin": holdout.get("davies_bouldin"),
        "holdout_rows": holdout.get("sample_rows"),
        "smallest_cluster_share": smallest,
        "empty_clusters": sum(1 for s in cluster_shares if s <= 0),
        "empty_relocations": empty_relocations,
        "min_silhouette_lo": min_silhouette_lo, "max_davies_bouldin": max_davies_bouldin,
        "min_cluster_share": min_cluster_share,
    }
    problems = []
    lo, db = figures["silhouette_lo"], figures["davies_bouldin"]
    if not _finite(lo) or lo < min_silhouette_lo:
        problems.append(f"silhouette CI lower bound {_num(lo)} < threshold {min_silhouette_lo:g}")
    if not _finite(db) or db > max_davies_bouldin:
        problems.append(f"Davies-Bouldin {_num(db)} > threshold {max_davies_bouldin:g}")
    if figures["empty_clusters"]:
        problems.append(f"{figures['empty_clusters']} of {len(cluster_shares)} clusters empty")
    elif smallest < min_cluster_share:
        problems.append(f"smallest cluster holds {smallest:.2%} of the rows < minimum "
                        f"{min_cluster_share:.2%}")
    if empty_relocations:
        problems.append(f"{empty_relocations} empty-cluster relocation(s) during the fit")
    if problems:
        return GateResult("quality", "refused", "quality gate refused: " + "; ".join(problems),
                          figures)
    return GateResult("quality", "passed", f"quality gate passed: silhouette CI lower bound "
                      f"{_num(lo)} >= {min_silhouette_lo:g}, Davies-Bouldin {_num(db)} <= "
                      f"{max_davies_bouldin:g}, smallest cluster {smallest:.2%}", figures)


def comparison_gate(evaluation: dict, *, tolerance: float) -> GateResult:
    """Challenger against champion on the same holdout (``evaluation``: evaluate's result)."""
    if "champion" not in evaluation:
        return GateResult("comparison", "passed", "comparison gate passed: no champion yet, "
                          "the first model has nothing to be compared with",
                          {"champion_version": None, "tolerance": tolerance})
    new, old = evaluation["challenger"], evaluation["champion"]
    figures = {
        "champion_version": evaluation.get("champion_version"), "tolerance": tolerance,
        "holdout_rows": new.get("sample_rows"),
        "challenger_silhouette": new.get("silhouette"),
        "champion_silhouette": old.get("silhouette"),
        "challenger_davies_bouldin": new.get("davies_bouldin"),
        "champion_davies_bouldin": old.get("davies_bouldin"),
        "assignment_agreement": (evaluation.get("matching") or {}).get("agreement"),
    }
    sil_floor = old["silhouette"] - tolerance * abs(old["silhouette"])
    db_ceiling = old["davies_bouldin"] * (1 + tolerance)
    figures.update(silhouette_floor=sil_floor, davies_bouldin_ceiling=db_ceiling)
    versus = f"champion version {figures['champion_version']}"
    problems = []
    if not _finite(new.get("silhouette")) or new["silhouette"] < sil_floor:
        problems.append(f"challenger silhouette {_num(new.get('silhouette'))} < {versus}'s "
                        f"{_num(old['silhouette'])} less {tolerance:.0%} tolerance "
                        f"({_num(sil_floor)})")
    if not _finite(new.get("davies_bouldin")) or new["davies_bouldin"] > db_ceiling:
        problems.append(f"challenger Davies-Bouldin {_num(new.get('davies_bouldin'))} > "
                        f"{versus}'s {_num(old['davies_bouldin'])} plus {tolerance:.0%} "
                        f"tolerance ({_num(db_ceiling)})")
    holdout = f" on the same holdout of {figures['holdout_rows']} rows"
    if problems:
        return GateResult("comparison", "refused",
                          "comparison gate refused: " + "; ".join(problems) + holdout, figures)
    return GateResult("comparison", "passed", f"comparison gate passed: challenger silhouette "
                      f"{_num(new['silhouette'])} vs {_num(old['silhouette'])}, Davies-Bouldin "
                      f"{_num(new['davies_bouldin'])} vs {_num(old['davies_bouldin'])} "
                      f"({versus}){holdout}", figures)


def drift_gate(drift: dict | None, *, note: str = "") -> GateResult:
    """Review needed when the drift share is over its threshold (``drift``: the figures of
    :func:`pipeline.promotion.drift.column_drift`, or None when there is nothing to compare
    with)."""
    if drift is None:
        return GateResult("drift", "passed", f"drift gate passed: {note}", {"note": note})
    share, limit = drift["drift_share"], drift["share_threshold"]
    counted = (f"drift share {share:.2f} ({len(drift['drifted_columns'])} of {drift['columns']} "
               f"feature columns over distance {drift['column_threshold']:g})")
    if share > limit:
        return GateResult("drift", "review", f"drift gate needs review: {counted} > threshold "
                          f"{limit:g}; report {drift['report']}", drift)
    return GateResult("drift", "passed", f"drift gate passed: {counted} <= threshold {limit:g}",
                      drift)


# ---------------------------------------------------------------- on a training run


def check(settings: Settings, run_id: str, snapshot_path: str,
          validation_report: str | None = None) -> dict:
    """Run the four gates on a training run (after evaluate), log them to the run, and return
    the summary; raise :class:`GateRefused` if any gate refused (after logging).

    ``validation_report`` is the path validate returned; by default the snapshot's own.
    """

    snap = Snapshot.load(snapshot_path)
    evaluation = _evaluation(settings, run_id)
    model = training.run_model(settings, run_id)
    results = [
        data_gate(_validation(settings, snap, validation_report)),
        quality_gate(evaluation["challenger"], model.metadata["cluster_shares"],
                     len(model.metadata.get("empty_events", [])),
                     min_silhouette_lo=settings.gates.gate_min_silhouette_lo,
                     max_davies_bouldin=settings.gates.gate_max_davies_bouldin,
                     min_cluster_share=settings.gates.gate_min_cluster_share),
        comparison_gate(evaluation, tolerance=settings.gates.gate_comparison_tolerance),
        _drift(settings, run_id, snap),
    ]
    profile = profiles.for_candidate(settings, run_id, snap.frame(),
                                     source=f"snapshot {snap.data_hash[:16]}")
    k_choice = {"k": len(model.metadata["cluster_shares"]),
                "why": model.metadata.get("k_why")}  # None: trained before 2026-12
    summary = _summary(settings, run_id, snap, results, profile, k_choice)
    _log(settings, run_id, results, summary)
    for r in results:
        log.info("run %s: %s", run_id, r.message)
    if summary["refused"]:
        raise GateRefused(run_id, summary["refused"])
    return summary


def load_summary(settings: Settings, run_id: str) -> dict | None:
    """The ``gates.json`` summary logged with a run, or None if its gates never ran."""
    import mlflow

    names = {a.path for a in registry.client(settings).list_artifacts(run_id)}
    if SUMMARY_ARTIFACT not in names:
        return None
    registry.configure(settings)
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{SUMMARY_ARTIFACT}")


def figures_of(summary: dict | None) -> dict:
    """The gate figures of a summary, for the audit trail: ``{"gates": {gate: figures}}``."""
    if summary is None:
        return {"gates": "not run"}
    return {"gates": {name: g["figures"] for name, g in summary["gates"].items()}}


def _drift(settings: Settings, run_id: str, snap) -> GateResult:
    champion = registry.alias_version(settings, "champion")
    if champion is None:
        return drift_gate(None, note="no champion yet, nothing to compare the snapshot with")
    reference = drift.load_reference(settings, champion.run_id)
    if reference is None:
        return drift_gate(None, note=f"champion version {champion.version} has no reference "
                          f"sample (registered before samples were kept); drift not measured")
    current = drift.reference_sample(snap.frame(), settings.gates.drift_sample_rows,
                                     seed=int(snap.data_hash[:8], 16))
    html = (settings.reports_dir / "drift" /
            f"{snap.data_hash[:16]}-vs-v{champion.version}.html")
    figures = drift.column_drift(current, reference, html,
                                 column_threshold=settings.gates.drift_column_threshold,
                                 share_threshold=settings.gates.drift_share_threshold)
    figures.update(champion_version=str(champion.version),
                   report_artifact=f"runs:/{run_id}/drift/{html.name}")
    return drift_gate(figures)


def _summary(settings: Settings, run_id: str, snap, results: list[GateResult],
             profile: dict | None = None, k_choice: dict | None = None) -> dict:
    by_name = {r.gate: r for r in results}
    summary = {
        "run_id": run_id, "snapshot": snap.data_hash[:16],
        "refused": [r.message for r in results if r.status == "refused"],
        "review": by_name["drift"].status == "review",
        "gates": {r.gate: {"status": r.status, "message": r.message, "figures": r.figures}
                  for r in results},
        # the segment profiles (pipeline.promotion.profiles): the candidate's, and the page
        # beside the champion's
        "profiles": profile,
        "k_choice": k_choice,  # the K and why the sweep chose it
    }
    summary["passed"] = not summary["refused"]
    summary["review_body"] = _review_body(settings, summary) if summary["review"] else None
    return summary


def _review_body(settings: Settings, summary: dict) -> str:
    """The Markdown a reviewer reads at the approval task."""
    drift = summary["gates"]["drift"]["figures"]
    rows = "\n".join(f"| {c} | {drift['scores'][c]:.3f} |" for c in drift["drifted_columns"])
    others = "\n".join(f"- {g['message']}" for name, g in summary["gates"].items()
                       if name != "drift")
    return (
        f"**Drift review** of run `{summary['run_id']}` (snapshot `{summary['snapshot']}`) "
        f"against the reference sample of champion version {drift['champion_version']}.\n\n"
        f"Drift share **{drift['drift_share']:.2f}** ({len(drift['drifted_columns'])} of "
        f"{drift['columns']} feature columns with normalised Wasserstein distance over "
        f"{drift['column_threshold']:g}) is over the threshold {drift['share_threshold']:g}.\n\n"
        f"| drifted column | distance |\n|---|---|\n{rows}\n\n"
        f"{_report_link(settings, drift['report'])} (MLflow: `{drift['report_artifact']}`, "
        f"store `{settings.mlflow_tracking_uri}`)\n\n"
        f"{_profiles_link(settings, summary.get('profiles'))}"
        f"{_k_choice(summary.get('k_choice'))}"
        f"Other gates:\n{others}\n\n"
        f"**Approve** registers the model as challenger; **Reject** ends this run without "
        f"registering anything."
    )


def _k_choice(choice: dict | None) -> str:
    """Why the sweep chose the candidate's K (the sweep's plot, ``sweep/sweep.png`` in the
    run, shows the figures)."""
    if not choice or not choice.get("why"):
        return ""
    return f"**K = {choice['k']}**: {choice['why']} (the run's `sweep/sweep.png` plots it).\n\n"


def report_url(settings: Settings, report: str | Path) -> str | None:
    """Where a report under the reports folder is served (``reports_url``), or None."""
    if not settings.reports_url:
        return None
    try:
        relative = Path(report).resolve().relative_to(settings.reports_dir.resolve())
    except ValueError:
        return None
    return f"{settings.reports_url.rstrip('/')}/{quote(relative.as_posix())}"


def _report_link(settings: Settings, report: str) -> str:
    """A Markdown link the reviewer opens in one click, when the reports are served; else the
    report's path."""
    url = report_url(settings, report)
    if url is None:
        return f"Evidently report: `{report}`"
    return f"**[Open the Evidently drift report]({url})** (`{report}`)"


def _profiles_link(settings: Settings, profile: dict | None) -> str:
    """The segment profiles in the review: the champion's and the candidate's side by side
    (a link when the reports are served, else the page's path)."""
    if not profile:
        return ""
    if profile.get("comparison"):
        page = profile["comparison"]
        what = (f"the segment profiles of champion version {profile['champion_version']} and "
                f"of this candidate, side by side")
    else:
        page, what = profile["candidate"], "the segment profile of this candidate"
    url = report_url(settings, page)
    if url is None:
        return f"{what[0].upper()}{what[1:]}: `{page}`\n\n"
    return f"**[Open {what}]({url})** (`{page}`)\n\n"


def _log(settings: Settings, run_id: str, results: list[GateResult], summary: dict) -> None:
    import mlflow

    registry.configure(settings)
    with mlflow.start_run(run_id=run_id):
        for r in results:
            mlflow.log_dict(r.to_dict(), f"gates/{r.gate}.json")
            mlflow.set_tag(f"gate_{r.gate}", r.status)
        mlflow.log_dict(summary, SUMMARY_ARTIFACT)
        report = summary["gates"]["drift"]["figures"].get("report")
        if report:
            mlflow.log_artifact(report, artifact_path="drift")
            mlflow.log_metric("drift_share", summary["gates"]["drift"]["figures"]["drift_share"])


def _evaluation(settings: Settings, run_id: str) -> dict:
    import mlflow

    names = {a.path for a in registry.client(settings).list_artifacts(run_id, "evaluation")}
    if "evaluation/holdout.json" not in names:
        raise LookupError(f"run {run_id} has no evaluation; run `kmeans evaluate {run_id} "
                          f"<snapshot>` first")
    registry.configure(settings)
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/evaluation/holdout.json")


def _validation(settings: Settings, snap, report: str | None) -> dict | None:
    """The validation result of the snapshot: the JSON that validate writes beside its HTML
    report (named by the snapshot's hash unless the report's path is given)."""

    html = Path(report) if report else (settings.reports_dir / "validation" /
                                        f"{snap.data_hash[:16]}.html")
    path = html.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value) -> str:
    return f"{value:.3f}" if _finite(value) else str(value)
