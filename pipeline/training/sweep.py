"""The K sweep of a training run, computed and returned: no MLflow here.

:func:`sweep` fits every K of the params' range on the snapshot's training rows (in-process
or on Spark), scores each on the holdout, chooses K and draws the sweep's plot; it returns
all of it as a :class:`SweepResult`, which :func:`pipeline.training.tracking.log_sweep`
writes to MLflow.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.settings import FEATURE_NAMES, Settings
from pipeline.data.features import Snapshot
from pipeline.engine.estimator import fit_sweep
from pipeline.engine.inprocess import in_process_source
from pipeline.engine.kernel import assign
from pipeline.engine.session import spark_session
from pipeline.engine.snapshot import list_parquet
from pipeline.engine.spark import SparkBlockSource
from pipeline.engine.staging import BlockSpec, block_key
from pipeline.model.artifact import SegmentModel
from pipeline.model.preprocessing import LOG_FEATURES, Preprocessor
from pipeline.training.evaluation import K_RULE_NAME, choose_k, cluster_metrics
from pipeline.training.krule import GAP_REFERENCES, k_figures
from pipeline.training.params import TrainParams
from pipeline.training.split import TrainingRows, read_split

log = logging.getLogger("pipeline.training.stages")  # the name the run's lines had
#: Holdout rows the gap statistic is computed on.
GAP_SAMPLE = 4000


@dataclass
class SweepResult:
    """What the sweep found: a row of figures per K, the chosen K and its fit, and the plot.

    Attributes
    ----------
    rows : list of dict
        Per K (ascending): the sweep's figures and the holdout's cluster metrics.
    chosen : int
        The K the rule chose (:data:`pipeline.training.evaluation.K_RULE`).
    why : str
        The rule's reason, in one sentence that names the figures it read.
    best : dict
        The row of the chosen K.
    figure : matplotlib.figure.Figure
        Inertia, silhouette, Davies-Bouldin and stability against K, the chosen K marked.
    placement : dict or None
        Where Spark ran the blocks (None in-process).
    """

    snapshot: Snapshot
    params: TrainParams
    preprocessor: Preprocessor
    fit: Any  # the chosen K's fit: centroids, counts, empty_events
    rows: list[dict]
    chosen: int
    why: str
    best: dict
    distance_p99: float
    training_rows: int
    holdout_rows: int
    figure: Any
    placement: dict | None = None

    def model(self, *, run_id: str, code_version: str) -> SegmentModel:
        """The chosen model, its metadata naming the run that logs it."""
        snap, params, fit = self.snapshot, self.params, self.fit
        return SegmentModel(fit.centroids, self.preprocessor, {
            "data_hash": snap.data_hash, "feature_service": snap.feature_service,
            "distance_p99": self.distance_p99, "metrics": finite(self.best),
            "cluster_shares": (fit.counts / fit.counts.sum()).tolist(),
            "empty_events": fit.empty_events, "empty_cluster_policy": params.empty_cluster,
            "init": params.init, "run_id": run_id, "code_version": code_version,
            "k_rule": K_RULE_NAME, "k_why": self.why})


def sweep(settings: Settings, snapshot_path: str, params: TrainParams | dict) -> SweepResult:
    """Fit every K of ``params`` on the snapshot, score each on the holdout, choose K.

    Raises ValueError when the training rows are fewer than the largest K.
    """
    params = TrainParams.model_validate(params)
    snap = Snapshot.load(snapshot_path)

    train_sample, holdout = read_split(snap, params.seed)
    pre = Preprocessor.fit(train_sample, FEATURE_NAMES, log_features=LOG_FEATURES)
    x_hold = pre.transform(holdout)
    source = _source(settings, snap, pre, params)
    ks = list(range(params.k_min, params.k_max + 1))
    if source.n_rows < params.k_max:
        raise ValueError(f"n_samples={source.n_rows} should be >= n_clusters={params.k_max}")
    fits = fit_sweep(source, ks, init=params.init, n_init=params.n_init,
                     max_iter=params.max_iter, seed=params.seed,
                     empty_cluster=params.empty_cluster)
    gap_rows = x_hold if len(x_hold) <= GAP_SAMPLE else x_hold[
        np.random.default_rng(params.seed).choice(len(x_hold), GAP_SAMPLE, replace=False)]
    gaps = k_figures(gap_rows, {k: f.centroids for k, f in fits.fits.items()}, seed=params.seed,
                     strength=False, references=max(3, min(GAP_REFERENCES, 160 // len(ks))))
    rows = []
    for row in fits.table():
        fit = fits.fits[row["k"]]
        rows.append({**row, **cluster_metrics(x_hold, fit.centroids, seed=params.seed),
                     **gaps[row["k"]]})
    chosen, why = choose_k(rows)
    log.info("chose K=%d: %s", chosen, why)
    best = next(r for r in rows if r["k"] == chosen)
    placement = None
    if isinstance(source, SparkBlockSource):
        placement = source.report()
        log.info("engine placement: %s", placement)
        source.close()
    return SweepResult(
        snapshot=snap, params=params, preprocessor=pre, fit=fits.fits[chosen], rows=rows,
        chosen=chosen, why=why, best=best,
        distance_p99=source_distance_quantile(x_hold, fits.fits[chosen].centroids),
        training_rows=source.n_rows, holdout_rows=len(holdout),
        figure=plot_sweep(rows, chosen, why), placement=placement)


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


def source_distance_quantile(x: np.ndarray, centroids: np.ndarray, q: float = 99.0) -> float:
    """Distance quantile of holdout points to their centroid: the out-of-distribution cut."""

    return float(np.percentile(np.sqrt(assign(x, centroids)[1]), q))


def plot_sweep(rows: list[dict], chosen: int, why: str = "") -> Any:
    """The sweep's panels against K, the chosen K marked and the rule's reason as the title: a
    matplotlib Figure, built without pyplot (no global figure to close; the caller saves it)."""
    from matplotlib.figure import Figure

    ks = [r["k"] for r in rows]
    fig = Figure(figsize=(20, 4.2))
    axes = fig.subplots(1, 5)
    panels = [("inertia", "inertia (elbow)"), ("silhouette", "silhouette (95% CI)"),
              ("gap", "gap statistic (± s.e.)"),
              ("davies_bouldin", "Davies-Bouldin (lower is better)"),
              ("stability", "stability (ARI)")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(ks, [r.get(key, np.nan) for r in rows], marker="o")
        if key == "silhouette":
            ax.fill_between(ks, [r.get("silhouette_lo", np.nan) for r in rows],
                            [r.get("silhouette_hi", np.nan) for r in rows], alpha=0.3)
        if key == "gap":
            gap = np.array([r.get("gap", np.nan) for r in rows])
            sd = np.array([r.get("gap_sd", np.nan) for r in rows])
            ax.fill_between(ks, gap - sd, gap + sd, alpha=0.3)
        ax.axvline(chosen, color="red", linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("K")
    if why:
        fig.suptitle("\n".join(textwrap.wrap(f"K={chosen}: {why}", 180)), fontsize=10)
    fig.tight_layout()
    return fig


def finite(row: dict) -> dict:
    """The finite numbers of ``row`` as floats: what MLflow takes as metrics."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            and np.isfinite(v)}
