"""The stages of one training run. The DAG tasks and the CLI call these functions.

Each stage takes explicit inputs (a data interval, a snapshot path, a run id) and returns small,
JSON-friendly results, so Airflow's XCom only carries URIs, ids and a few metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import __version__
from pipeline.settings import FEATURE_NAMES, PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


class TrainParams(BaseModel):
    """Parameters of a training run (the DAG's params, the CLI's options)."""

    model_config = ConfigDict(extra="forbid")

    k_min: int = Field(2, ge=2, le=256, description="Smallest K of the sweep.")
    k_max: int = Field(8, ge=2, le=256, description="Largest K of the sweep.")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="Share of training rows used.")
    max_iter: int = Field(50, ge=1, le=1000, description="Most Lloyd iterations per K.")
    n_init: int = Field(1, ge=1, le=20, description="Initialisations per K; best inertia kept.")
    seed: int = Field(42, ge=0, description="Seed of initialisation, sampling and the split.")
    engine: Literal["spark", "local"] = Field("spark", description="Spark or in-process.")
    init: Literal["k-means||", "k-means++"] = Field("k-means||", description="Initialisation.")
    empty_cluster: Literal["farthest", "split"] = Field(
        "farthest", description="Where an emptied centroid goes: farthest point, or split the "
        "largest cluster. Every move is reported in the model's metadata.")

    @model_validator(mode="after")
    def _range(self) -> TrainParams:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max={self.k_max} should be >= k_min={self.k_min}")
        return self


def window(end: dt.datetime, lookback_days: int) -> tuple[dt.datetime, dt.datetime]:
    """The training window that ends at ``end`` (exclusive)."""
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.timezone.utc)
    return end - dt.timedelta(days=lookback_days), end


# ---------------------------------------------------------------- stages 1-3: data

def ingest(settings: Settings, start: dt.datetime, end: dt.datetime) -> dict:
    from pipeline.ingest import ingest_lake

    return ingest_lake(settings, start.date(), end.date()).to_dict()


def snapshot(settings: Settings, start: dt.datetime, end: dt.datetime) -> str:
    from pipeline.features import apply_repo, training_snapshot

    apply_repo(settings)
    return training_snapshot(settings, start, end).path


def validate(settings: Settings, snapshot_path: str) -> str:
    from pipeline.features import Snapshot
    from pipeline.validation import validate_snapshot

    return validate_snapshot(settings, Snapshot.load(snapshot_path)).report_html


# ---------------------------------------------------------------- stage 4: train

def _read_split(snap, seed: int, *, holdout_rows: int = 4000, train_rows: int = 200_000):
    """One pass over the snapshot: a seeded sample of training rows (for fitting the
    preprocessing) and a seeded sample of the holdout (for scoring), split by customer id."""
    from pipeline.preprocessing import holdout_mask

    rng = np.random.default_rng(seed)
    train_parts, hold_parts = [], []
    for name in snap.files:
        frame = pq.read_table(Path(snap.path) / name).to_pandas()
        hold = holdout_mask(frame["customer_id"].to_numpy(), seed)
        hold_parts.append(frame[hold])
        frame = frame[~hold]
        take = min(len(frame), max(1, train_rows // len(snap.files)))
        train_parts.append(frame.iloc[np.sort(rng.choice(len(frame), take, replace=False))])
    holdout = pd.concat(hold_parts, ignore_index=True)
    if len(holdout) > holdout_rows:
        holdout = holdout.sample(holdout_rows, random_state=seed).sort_values("customer_id")
    return pd.concat(train_parts, ignore_index=True), holdout.reset_index(drop=True)


def _source(settings: Settings, snap, pre, params: TrainParams):
    from pipeline.engine.spark import BlockSpec, SparkBlockSource, block_key, spark_session

    spec = BlockSpec(
        snapshot_dir=snap.path, files=tuple(snap.files), stage_dir=str(settings.stage_dir),
        key=block_key(f"{snap.data_hash}:{','.join(snap.files)}", pre.to_dict(), "train",
                      params.seed, params.sample_fraction),
        preprocessor=pre.to_dict(), holdout_seed=params.seed, side="train",
        sample_fraction=params.sample_fraction)
    if params.engine == "local":
        from pipeline.engine.estimator import ArraySource
        from pipeline.engine.spark import load_block

        return ArraySource(np.concatenate([load_block(spec, i) for i in range(len(snap.files))]))
    spark = spark_session(settings.spark_master, app_name="kmeans-train",
                          driver_memory=settings.spark_driver_memory)
    return SparkBlockSource(spark, spec)


def train(settings: Settings, snapshot_path: str, params: TrainParams | dict,
          *, validation_report: str | None = None) -> dict:
    """Run the K sweep on the snapshot, score every K on the holdout, choose K, log to MLflow.

    Returns ``{"run_id", "k", "metrics"}``; the chosen model's artifact is logged in the run.
    """
    import mlflow

    from pipeline import registry
    from pipeline.artifact import SegmentModel
    from pipeline.engine.estimator import fit_sweep
    from pipeline.evaluation import K_RULE, choose_k, cluster_metrics
    from pipeline.features import Snapshot

    params = TrainParams.model_validate(params)
    snap = Snapshot.load(snapshot_path)
    from pipeline.preprocessing import Preprocessor

    train_sample, holdout = _read_split(snap, params.seed)
    pre = Preprocessor.fit(train_sample, FEATURE_NAMES)
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
        for row in rows:
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"k={row['k']}",
                                  nested=True, tags=tags):
                mlflow.log_param("k", row["k"])
                mlflow.log_metrics(_finite(row))
        mlflow.log_metrics({f"chosen_{k}": v for k, v in _finite(best).items()})
        mlflow.log_metric("k", chosen)
        mlflow.set_tag("k_rule", K_RULE)
        distances = source_distance_quantile(x_hold, sweep.fits[chosen].centroids)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
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
    from pipeline.engine.kernel import assign

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

    from pipeline import registry
    from pipeline.artifact import SegmentModel
    from pipeline.engine.kernel import assign
    from pipeline.evaluation import cluster_metrics
    from pipeline.features import Snapshot
    from pipeline.matching import match_clusters, relabel

    c = registry.client(settings)
    if seed is None:
        seed = int(c.get_run(run_id).data.params.get("seed", 42))
    challenger = run_model(settings, run_id)
    holdout = _read_split(Snapshot.load(snapshot_path), seed)[1]
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


# ---------------------------------------------------------------- stage 6: gates

def gates(settings: Settings, run_id: str, snapshot_path: str,
          validation_report: str | None = None) -> dict:
    """Data, quality, comparison and drift gates on an evaluated run (:mod:`pipeline.gates`)."""
    from pipeline import gates as gates_

    return gates_.check(settings, run_id, snapshot_path, validation_report)


# ---------------------------------------------------------------- stage 7: register

def register(settings: Settings, run_id: str, *, gates: dict | None = None,
             review: dict | None = None) -> dict:
    """Register the run's model as a new version with alias ``challenger``.

    The first version of the model also becomes ``champion`` (there is nothing to compare it
    with); later ones wait for the rollout. ``gates`` is the run's gate summary (default: the
    one logged with the run); a run that a gate refused is not registered. ``review`` is the
    drift reviewer's answer, when there was one. A reference sample of the run's snapshot is
    kept with the run, for the next run's drift gate. Returns what the rollout needs: version,
    run id, aliases and the gate figures.
    """
    from pipeline import drift, gates as gates_, registry
    from pipeline.artifact import SegmentModel
    from pipeline.features import Snapshot

    summary = gates if gates is not None else gates_.load_summary(settings, run_id)
    if summary is not None and summary["refused"]:
        raise gates_.GateRefused(run_id, summary["refused"])
    params = registry.client(settings).get_run(run_id).data.params
    try:
        snap = Snapshot.load(params["snapshot"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"snapshot {params['snapshot']} of run {run_id} is gone: "
                                f"registering keeps a reference sample of it for the next drift "
                                f"gate") from err
    with tempfile.TemporaryDirectory() as tmp:
        folder = _download_candidate(settings, run_id, Path(tmp), prefer_matched=True)
        model = SegmentModel.load(folder)
        tags = {"data_hash": model.metadata["data_hash"], "k": model.k,
                "feature_service": model.metadata["feature_service"],
                "code_version": model.metadata["code_version"], "run_id": run_id,
                "reference": drift.log_reference(settings, run_id, snap.frame(),
                                                 seed=int(params.get("seed", 42))),
                **{f"gate_{name}": g["status"]
                   for name, g in (summary or {}).get("gates", {}).items()},
                **{f"metric_{k}": round(v, 6) for k, v in model.metadata["metrics"].items()
                   if isinstance(v, float)}}
        version = registry.log_model_version(settings, run_id, folder, tags)
    figures = {"metrics": model.metadata["metrics"], **gates_.figures_of(summary)}
    if review:
        figures["drift_review"] = _review_answer(review)
    aliases = registry.register_challenger(settings, version, reason="registered by training run",
                                           actor=run_id, figures=figures)
    return {"model": settings.model_name, "version": version, "run_id": run_id,
            "aliases": aliases, "figures": figures}


def _review_answer(review: dict) -> dict:
    """The reviewer's answer at the approval task, as the audit trail keeps it."""
    return {"chosen": review.get("chosen_options"), "by": review.get("responded_by_user"),
            "at": str(review.get("responded_at"))}


def verify_serving(settings: Settings, alias: str = "champion", *,
                   version: str | None = None) -> dict:
    """Load a version (or the one behind ``alias``) as the server would, checksums included,
    and score one row."""
    from pipeline import registry

    model, version = registry.download_model(settings, alias, version=version)
    # A row of missing values is imputed with the training medians: a valid probe for any model.
    out = model.assign(np.full((1, len(model.feature_names)), np.nan))
    return {"version": version, "k": model.k, "probe_cluster": int(out.cluster[0])}


# ---------------------------------------------------------------- helpers

def _download_candidate(settings: Settings, run_id: str, dest: Path, *,
                        prefer_matched: bool = False) -> Path:
    """The run's model: ``matched`` (stable ids, written by evaluate) if asked and present,
    else the ``candidate`` written by train."""
    import mlflow

    from pipeline import registry

    c = registry.client(settings)
    names = {a.path for a in c.list_artifacts(run_id)}
    path = "matched" if prefer_matched and "matched" in names else "candidate"
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                    dst_path=str(dest)))


def run_model(settings: Settings, run_id: str):
    """The model a run trained (its ``candidate`` artifact), loaded and verified."""
    from pipeline.artifact import SegmentModel

    with tempfile.TemporaryDirectory() as tmp:
        return SegmentModel.load(_download_candidate(settings, run_id, Path(tmp)))


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
