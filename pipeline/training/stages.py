"""Stages 4 and 5 of a training run: the K sweep (train) and the holdout comparison with the
champion (evaluate). The DAG tasks and the CLI call these functions.

Each stage takes explicit inputs (a snapshot path, a run id, :class:`TrainParams`) and returns
small, JSON-friendly results, so Airflow's XCom only carries URIs, ids and a few metrics.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline import __version__, registry
from pipeline.core.settings import FEATURE_NAMES, PROJECT_ROOT, Settings
from pipeline.data.features import Snapshot
from pipeline.engine.estimator import fit_sweep
from pipeline.engine.inprocess import in_process_source
from pipeline.engine.kernel import assign
from pipeline.engine.spark import (
    BlockSpec,
    SparkBlockSource,
    block_key,
    list_parquet,
    spark_session,
)
from pipeline.model.artifact import SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.training.evaluation import K_RULE, choose_k, cluster_metrics
from pipeline.training.matching import match_clusters, relabel
from pipeline.training.params import TrainParams
from pipeline.training.split import TrainingRows, read_split

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- stage 4: train

def _source(settings: Settings, snap, pre: Preprocessor, params: TrainParams):
    """The training rows of the snapshot, preprocessed, as an engine source: staged blocks
    (the same on both engines), iterated in-process or by Spark."""
    spec = BlockSpec(
        snapshot_dir=snap.path, files=tuple(snap.files), stage_dir=settings.block_stage_dir,
        # the key names everything the blocks depend on: data, preprocessing, side, sampling
        key=block_key(f"{snap.data_hash}:{','.join(snap.files)}", pre.to_dict(), "train",
                      params.seed, params.sample_fraction),
        transform=pre.transform, row_filter=TrainingRows(params.seed),
        sample_fraction=params.sample_fraction, sample_seed=params.seed,
        row_offsets=list_parquet(snap.path, snap.files).offsets)
    if params.engine == "local":
        return in_process_source(spec)
    spark = spark_session(settings.spark_master, app_name="kmeans-train",
                          driver_memory=settings.spark_driver_memory,
                          ui_port=settings.spark_ui_port)
    return SparkBlockSource(spark, spec)


def train(settings: Settings, snapshot_path: str, params: TrainParams | dict,
          *, validation_report: str | None = None) -> dict:
    """Run the K sweep on the snapshot, score every K on the holdout, choose K, log to MLflow.

    Returns ``{"run_id", "k", "metrics"}``; the chosen model's artifact is logged in the run.
    """
    import mlflow

    params = TrainParams.model_validate(params)
    snap = Snapshot.load(snapshot_path)

    train_sample, holdout = read_split(snap, params.seed)
    pre = Preprocessor.fit(train_sample, FEATURE_NAMES, log_features=LOG_FEATURES)
    x_hold = pre.transform(holdout)
    source = _source(settings, snap, pre, params)
    ks = list(range(params.k_min, params.k_max + 1))
    if source.n_rows < params.k_max:
        raise ValueError(f"n_samples={source.n_rows} should be >= n_clusters={params.k_max}")
    sweep = fit_sweep(source, ks, init=params.init, n_init=params.n_init,
                      max_iter=params.max_iter, seed=params.seed,
                      empty_cluster=params.empty_cluster)
    rows = []
    for row in sweep.table():
        fit = sweep.fits[row["k"]]
        rows.append({**row, **cluster_metrics(x_hold, fit.centroids, seed=params.seed)})
    chosen = choose_k(rows)
    best = next(r for r in rows if r["k"] == chosen)

    experiment_id = registry.configure(settings)
    tags = {"data_hash": snap.data_hash, "feature_service": snap.feature_service,
            "code_version": code_version(), "interval": f"{snap.start}/{snap.end}",
            "engine": params.engine}
    with mlflow.start_run(experiment_id=experiment_id, tags=tags,
                          run_name=f"sweep-k{params.k_min}-{params.k_max}") as run:
        mlflow.log_params({**params.model_dump(), "training_rows": source.n_rows,
                           "holdout_rows": len(holdout), "snapshot": snap.path})
        if isinstance(source, SparkBlockSource):
            placement = source.report()
            log.info("engine placement: %s", placement)
            mlflow.log_dict(placement, "engine/placement.json")
            mlflow.log_metrics({f"engine_{k}": float(placement[k]) for k in (
                "blocks", "executors", "stagings", "restaged", "moves", "block_imbalance")})
            source.close()
        for row in rows:
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"k={row['k']}",
                                  nested=True, tags=tags):
                mlflow.log_param("k", row["k"])
                mlflow.log_metrics(_finite(row))
        mlflow.log_metrics({f"chosen_{k}": v for k, v in _finite(best).items()})
        mlflow.log_metric("k", chosen)
        mlflow.set_tag("k_rule", K_RULE)
        distances = source_distance_quantile(x_hold, sweep.fits[chosen].centroids)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "sweep.json").write_text(json.dumps(
                {"rule": K_RULE, "chosen_k": chosen, "rows": rows}, indent=2, default=float))
            _plot_sweep(rows, chosen, tmp / "sweep.png")
            mlflow.log_artifacts(str(tmp), artifact_path="sweep")
            if validation_report:
                mlflow.log_artifact(validation_report, artifact_path="validation")
            fit = sweep.fits[chosen]
            model = SegmentModel(fit.centroids, pre, {
                "data_hash": snap.data_hash, "feature_service": snap.feature_service,
                "distance_p99": distances, "metrics": _finite(best),
                "cluster_shares": (fit.counts / fit.counts.sum()).tolist(),
                "empty_events": fit.empty_events, "empty_cluster_policy": params.empty_cluster,
                "init": params.init, "run_id": run.info.run_id,
                "code_version": tags["code_version"]})
            model.save(tmp / "model")
            mlflow.log_artifacts(str(tmp / "model"), artifact_path="candidate")
    log.info("run %s: chose k=%d (silhouette %.3f)", run.info.run_id, chosen, best["silhouette"])
    return {"run_id": run.info.run_id, "k": chosen, "metrics": _finite(best)}


def source_distance_quantile(x: np.ndarray, centroids: np.ndarray, q: float = 99.0) -> float:
    """Distance quantile of holdout points to their centroid: the out-of-distribution cut."""

    return float(np.percentile(np.sqrt(assign(x, centroids)[1]), q))


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
                                    for k, v in _finite(result[side]).items()})
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


def _finite(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            and np.isfinite(v)}


def _plot_sweep(rows: list[dict], chosen: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    panels = [("inertia", "inertia (elbow)"), ("silhouette", "silhouette (95% CI)"),
              ("davies_bouldin", "Davies-Bouldin (lower is better)"),
              ("stability", "stability (ARI)")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(ks, [r.get(key, np.nan) for r in rows], marker="o")
        if key == "silhouette":
            ax.fill_between(ks, [r.get("silhouette_lo", np.nan) for r in rows],
                            [r.get("silhouette_hi", np.nan) for r in rows], alpha=0.3)
        ax.axvline(chosen, color="red", linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("K")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def code_version() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"{__version__}+{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__
