"""A training run in MLflow: what the K sweep found, logged as one run with a nested run per
K, the sweep's table and plot, the validation report and the chosen model's artifact.

The sweep (:func:`pipeline.training.sweep.sweep`) computes and returns its figures; this
module only writes them, so the sweep runs without MLflow.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from pathlib import Path

from pipeline import __version__, registry
from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.training.evaluation import K_RULE, K_RULE_NAME
from pipeline.training.sweep import SweepResult, finite

log = logging.getLogger("pipeline.training.stages")  # the name the run's lines had


def log_sweep(settings: Settings, result: SweepResult, *,
              validation_report: str | None = None) -> str:
    """Log ``result`` as a new MLflow run of the training experiment; returns its run id.

    The run holds the params, the engine's placement (Spark), a nested run per K with its
    metrics, the chosen K's metrics, the sweep's table and plot (``sweep/``), the validation
    report (``validation/``) and the chosen model, stamped with the run id (``candidate/``).
    """
    import mlflow

    snap, params = result.snapshot, result.params
    experiment_id = registry.configure(settings)
    tags = {"data_hash": snap.data_hash, "feature_service": snap.feature_service,
            "code_version": code_version(), "interval": f"{snap.start}/{snap.end}",
            "engine": params.engine}
    with mlflow.start_run(experiment_id=experiment_id, tags=tags,
                          run_name=f"sweep-k{params.k_min}-{params.k_max}") as run:
        mlflow.log_params({**params.model_dump(), "training_rows": result.training_rows,
                           "holdout_rows": result.holdout_rows, "snapshot": snap.path})
        if result.placement is not None:
            mlflow.log_dict(result.placement, "engine/placement.json")
            mlflow.log_metrics({f"engine_{k}": float(result.placement[k]) for k in (
                "blocks", "executors", "stagings", "restaged", "moves", "block_imbalance")})
        for row in result.rows:
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"k={row['k']}",
                                  nested=True, tags=tags):
                mlflow.log_param("k", row["k"])
                mlflow.log_metrics(finite(row))
        mlflow.log_metrics({f"chosen_{k}": v for k, v in finite(result.best).items()})
        mlflow.log_metric("k", result.chosen)
        mlflow.set_tags({"k_rule": K_RULE, "k_rule_name": K_RULE_NAME,
                         "k_why": result.why[:5000]})
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "sweep.json").write_text(json.dumps(
                {"rule": K_RULE, "rule_name": K_RULE_NAME, "chosen_k": result.chosen,
                 "why": result.why, "rows": result.rows}, indent=2,
                default=float))
            result.figure.savefig(tmp / "sweep.png", dpi=80)
            mlflow.log_artifacts(str(tmp), artifact_path="sweep")
            if validation_report:
                mlflow.log_artifact(validation_report, artifact_path="validation")
            model = result.model(run_id=run.info.run_id, code_version=tags["code_version"])
            model.save(tmp / "model")
            mlflow.log_artifacts(str(tmp / "model"), artifact_path="candidate")
    log.info("run %s: chose k=%d (silhouette %.3f): %s", run.info.run_id, result.chosen,
             result.best["silhouette"], result.why)
    return run.info.run_id


def code_version() -> str:
    """The package version, with the checkout's short commit when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"{__version__}+{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__
