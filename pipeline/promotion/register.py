"""Stage 7: register a gated run's model as a version of the registered model, and check that
the registered version loads as the server will load it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline import registry
from pipeline.core.settings import Settings
from pipeline.data.features import Snapshot
from pipeline.model.artifact import SegmentModel
from pipeline.promotion import drift, profiles
from pipeline.promotion import gates as gates_mod
from pipeline.training.stages import download_candidate


def register(settings: Settings, run_id: str, *, gates: dict | None = None,
             review: dict | None = None) -> dict:
    """Register the run's model as a new version with alias ``challenger``.

    The first version of the model also becomes ``champion`` (there is nothing to compare it
    with); later ones wait for the rollout. ``gates`` is the run's gate summary (default: the
    one logged with the run); a run that a gate refused is not registered. ``review`` is the
    drift reviewer's answer, when there was one. A reference sample of the run's snapshot is
    kept with the run, for the next run's drift gate, and the segment profile of the version
    (:mod:`pipeline.promotion.profiles`) under ``profile/`` and in
    ``reports/profiles/version-<N>/``. Returns what the rollout needs: version, run id,
    aliases, the gate figures and where the profile is.
    """
    summary = gates if gates is not None else gates_mod.load_summary(settings, run_id)
    if summary is not None and summary["refused"]:
        raise gates_mod.GateRefused(run_id, summary["refused"])
    params = registry.client(settings).get_run(run_id).data.params
    try:
        snap = Snapshot.load(params["snapshot"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"snapshot {params['snapshot']} of run {run_id} is gone: "
                                f"registering keeps a reference sample of it for the next drift "
                                f"gate") from err
    frame = snap.frame()
    seed = int(params.get("seed", 42))
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_candidate(settings, run_id, Path(tmp), prefer_matched=True)
        model = SegmentModel.load(folder)
        profile = profiles.for_registration(settings, run_id, model, frame,
                                            source=f"snapshot {snap.data_hash[:16]}")
        tags = {"data_hash": model.metadata["data_hash"], "k": model.k,
                "feature_service": model.metadata["feature_service"],
                "code_version": model.metadata["code_version"], "run_id": run_id,
                "reference": drift.log_reference(settings, run_id, frame, seed=seed),
                "profile": profiles.artifact_uri(run_id),
                **{f"gate_{name}": g["status"]
                   for name, g in (summary or {}).get("gates", {}).items()},
                **{f"metric_{k}": round(v, 6) for k, v in model.metadata["metrics"].items()
                   if isinstance(v, float)}}
        version = registry.log_model_version(settings, run_id, folder, tags)
    published = profiles.publish_version(settings, version, run_id, profile)
    figures = {"metrics": model.metadata["metrics"], **gates_mod.figures_of(summary),
               "profile": published}
    if review:
        figures["drift_review"] = _review_answer(review)
    aliases = registry.register_challenger(settings, version, reason="registered by training run",
                                           actor=run_id, figures=figures)
    return {"model": settings.model_name, "version": version, "run_id": run_id,
            "aliases": aliases, "figures": figures, "profile": published["report"]}


def _review_answer(review: dict) -> dict:
    """The reviewer's answer at the approval task, as the audit trail keeps it."""
    return {"chosen": review.get("chosen_options"), "by": review.get("responded_by_user"),
            "at": str(review.get("responded_at"))}


def verify_serving(settings: Settings, alias: str = "champion", *,
                   version: str | None = None) -> dict:
    """Load a version (or the one behind ``alias``) as the server would, checksums included,
    and score one row."""
    model, version = registry.download_model(settings, alias, version=version)
    # A row of missing values is imputed with the training medians: a valid probe for any model.
    out = model.assign(np.full((1, len(model.feature_names)), np.nan))
    return {"version": version, "k": model.k, "probe_cluster": int(out.cluster[0])}
