"""Stages 4 and 5 of a training run: the K sweep (train) and the holdout comparison with the
champion (evaluate). The DAG tasks and the CLI call these functions.

Each stage takes explicit inputs (a snapshot path, a run id, :class:`TrainParams`) and returns
small, JSON-friendly results, so Airflow's XCom only carries URIs, ids and a few metrics.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline import registry
from pipeline.core.settings import Settings
from pipeline.data.features import Snapshot
from pipeline.engine.kernel import assign
from pipeline.model.artifact import SegmentModel
from pipeline.training.evaluation import cluster_metrics
from pipeline.training.matching import match_clusters, relabel
from pipeline.training.params import TrainParams
from pipeline.training.split import read_split
from pipeline.training.sweep import finite, sweep
from pipeline.training.tracking import log_sweep

# ---------------------------------------------------------------- stage 4: train

def train(settings: Settings, snapshot_path: str, params: TrainParams | dict,
          *, validation_report: str | None = None) -> dict:
    """Run the K sweep on the snapshot, score every K on the holdout, choose K, log to MLflow.

    Returns ``{"run_id", "k", "why", "metrics"}`` (why: the K rule's reason); the chosen
    model's artifact is logged in the run. The sweep is :func:`pipeline.training.sweep.sweep`,
    its logging :func:`pipeline.training.tracking.log_sweep`.
    """
    result = sweep(settings, snapshot_path, params)
    run_id = log_sweep(settings, result, validation_report=validation_report)
    return {"run_id": run_id, "k": result.chosen, "why": result.why,
            "metrics": finite(result.best)}


# ---------------------------------------------------------------- stage 5: evaluate

def evaluate(settings: Settings, run_id: str, snapshot_path: str, seed: int | None = None) -> dict:
    """Score the challenger and the current champion (if any) on the same fresh holdout.

    The holdout is the run's own (its ``seed`` param, unless given). With a champion, the
    challenger's clusters are matched to the champion's (Hungarian matching on the holdout
    assignments) and the matched model is logged as the run's ``matched`` artifact, which
    ``register`` prefers; the split/merge/appear/disappear report is logged with the run.
    Re-running starts again from the unmatched ``candidate``, so a retry changes nothing.
    """
    import mlflow

    c = registry.client(settings)
    if seed is None:
        seed = int(c.get_run(run_id).data.params.get("seed", 42))
    challenger = run_model(settings, run_id)
    holdout = read_split(Snapshot.load(snapshot_path), seed)[1]
    x_new = challenger.preprocessor.transform(holdout)
    result = {"challenger": cluster_metrics(x_new, challenger.centroids, seed=seed)}
    if registry.alias_version(settings, "champion") is not None:
        champion, version = registry.download_model(settings, "champion")
        result["champion"] = cluster_metrics(champion.preprocessor.transform(holdout),
                                             champion.centroids, seed=seed)
        result["champion_version"] = version
        mapping, report = match_clusters(champion.assign(holdout).cluster,
                                         assign(x_new, challenger.centroids)[0],
                                         champion.cluster_ids, challenger.k)
        result["matching"] = report
        order = np.argsort(mapping, kind="stable")
        centroids, ids = relabel(challenger.centroids, mapping)
        meta = dict(challenger.metadata, cluster_ids=ids, matched_to_version=version)
        if "cluster_shares" in meta:
            meta["cluster_shares"] = [meta["cluster_shares"][i] for i in order]
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            SegmentModel(centroids, challenger.preprocessor, meta).save(Path(tmp) / "model")
            mlflow.log_artifacts(str(Path(tmp) / "model"), artifact_path="matched")
    with mlflow.start_run(run_id=run_id):
        for side in ("challenger", "champion"):
            if side in result:
                mlflow.log_metrics({f"holdout_{side}_{k}": v
                                    for k, v in finite(result[side]).items()})
        if "matching" in result:
            mlflow.log_metric("holdout_assignment_agreement", result["matching"]["agreement"])
        mlflow.log_dict(result, "evaluation/holdout.json")
    return result


# ---------------------------------------------------------------- helpers

def download_candidate(settings: Settings, run_id: str, dest: Path, *,
                        prefer_matched: bool = False) -> Path:
    """The run's model: ``matched`` (stable ids, written by evaluate) if asked and present,
    else the ``candidate`` written by train."""
    import mlflow

    c = registry.client(settings)
    names = {a.path for a in c.list_artifacts(run_id)}
    path = "matched" if prefer_matched and "matched" in names else "candidate"
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                    dst_path=str(dest)))


def run_model(settings: Settings, run_id: str):
    """The model a run trained (its ``candidate`` artifact), loaded and verified."""

    with tempfile.TemporaryDirectory() as tmp:
        return SegmentModel.load(download_candidate(settings, run_id, Path(tmp)))
