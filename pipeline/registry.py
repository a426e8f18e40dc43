"""MLflow tracking and model registry: runs, models-from-code versions, aliases, audit trail."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
from pathlib import Path

from pipeline.settings import Settings

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("model_code.py")
ARTIFACT_PATH = "segment_model"
ALIASES = ("champion", "challenger", "previous")


def configure(settings: Settings) -> str:
    """Point MLflow at this deployment's store and make sure the experiment exists."""
    import mlflow

    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        location = None
        if settings.profile == "local":
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.as_uri()
        return mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location)
    return exp.experiment_id


def client(settings: Settings):
    from mlflow import MlflowClient

    configure(settings)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                        registry_uri=settings.mlflow_tracking_uri)


def alias_version(settings: Settings, alias: str):
    """The model version behind ``alias``, or None if the alias (or the model) does not exist.

    Any other registry error propagates: treating an outage as "no champion" would promote an
    unchecked model.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
                err.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(err)):
            return None
        raise


def log_model_version(settings: Settings, run_id: str, artifact_dir: Path, tags: dict) -> str:
    """Log the artifact folder as a models-from-code pyfunc in ``run_id`` and register it."""
    import shutil
    import tempfile

    import mlflow

    configure(settings)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        # MLflow keeps the folder's own name inside the model; give it the one loaders expect.
        staged = shutil.copytree(artifact_dir, Path(tmp) / ARTIFACT_PATH)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={ARTIFACT_PATH: str(staged)},
            registered_model_name=settings.model_name,
            pip_requirements=["kmeans-platform", "mlflow", "numpy", "pandas"],
        )
    version = str(info.registered_model_version)
    c = client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(settings.model_name, version, key, str(value))
    return version


def move_alias(settings: Settings, alias: str, version: str, *, reason: str,
               actor: str | None = None, figures: dict | None = None) -> dict:
    """Point ``alias`` at ``version`` and append the move to the audit trail."""
    if alias not in ALIASES:
        raise ValueError(f"alias={alias!r} should be one of {ALIASES}")
    c = client(settings)
    before = alias_version(settings, alias)
    c.set_registered_model_alias(settings.model_name, alias, str(version))
    entry = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(), "model": settings.model_name,
        "alias": alias, "from_version": str(before.version) if before else None,
        "to_version": str(version), "actor": actor or _actor(), "reason": reason,
        "figures": figures or {},
    }
    audit_path(settings).parent.mkdir(parents=True, exist_ok=True)
    with open(audit_path(settings), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
    log.info("alias %s: %s -> %s (%s)", alias, entry["from_version"], version, reason)
    return entry


def audit_path(settings: Settings) -> Path:
    return settings.home / "audit" / "aliases.jsonl"


def read_audit(settings: Settings) -> list[dict]:
    path = audit_path(settings)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def download_model(settings: Settings, alias: str = "champion", *, version: str | None = None):
    """Download and verify the artifact of ``version`` (default: the one behind ``alias``);
    returns (SegmentModel, version)."""
    import mlflow

    from pipeline.artifact import SegmentModel

    if version is None:
        found = alias_version(settings, alias)
        if found is None:
            raise LookupError(f"model {settings.model_name!r} has no alias {alias!r}; "
                              f"run the training DAG or `kmeans train` first")
        version = str(found.version)
    configure(settings)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{settings.model_name}/{version}")
    folder = Path(local) / "artifacts" / ARTIFACT_PATH
    return SegmentModel.load(folder), str(version)


def _actor() -> str:
    return os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or getpass.getuser()
