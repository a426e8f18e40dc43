"""MLflow pointed at this deployment's store: the tracking and registry client, the
experiments (training and monitoring), and looking versions up by alias or number.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
import urllib.request
from contextlib import suppress
from pathlib import Path

from pipeline.core.io import (
    PRIVATE_FILE_MODE,
    make_private,
    private_dir,
)
from pipeline.core.settings import Settings

log = logging.getLogger("pipeline.registry")  # one logger for the package, as before the split


def configure(settings: Settings) -> str:
    """Point MLflow at this deployment's store and make sure the experiment exists.

    The embedded default's SQLite store and local artifact folder are owner-only (0600 and
    0700): they hold every run's parameters, metrics, tags and model files.
    """
    import mlflow

    db = sqlite_store(settings)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):
            # An empty file is an empty SQLite database: MLflow creates its tables in it, and
            # the store is owner-only from its first byte (SQLite gives its journal the same
            # mode).
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if db is not None:
        make_private(db)  # a store created by an earlier version, or by MLflow itself
    if settings.profile == "local" and settings.artifact_root.exists():
        make_private(settings.artifact_root)
    if exp is None:
        location = None
        if settings.profile == "local":
            location = private_dir(settings.artifact_root).as_uri()
        return mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location)
    return exp.experiment_id


def monitoring_experiment_name(settings: Settings) -> str:
    """The MLflow experiment of the monitoring windows: ``<experiment>-monitoring``."""
    return f"{settings.mlflow_experiment}-monitoring"


def monitoring_artifact_root(settings: Settings) -> Path | None:
    """Where the monitoring runs' artifacts go in the embedded default:
    ``<home>/mlartifacts/monitoring`` (beside the training runs', owner-only); None in the
    production profile, whose MLflow server keeps the artifacts where it keeps the others."""
    return settings.artifact_root / "monitoring" if settings.profile == "local" else None


def monitoring_experiment(settings: Settings) -> str:
    """The id of the monitoring experiment, created with its artifact location under the home
    (:func:`monitoring_artifact_root`) when it is missing.

    An experiment created without a location (as every version before this one did) has
    MLflow's default, ``<cwd of the process that created it>/mlruns/<id>``: outside the home,
    and MLflow cannot move an experiment's location. Such an experiment is renamed
    ``<name>-misplaced-<id>`` (its runs and figures stay readable there, the windows' JSON
    keep their run ids) and a new one is created in the right place, with a warning naming
    both: no new run writes to the old location.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)  # configure(): the store exists and MLflow points at it
    name = monitoring_experiment_name(settings)
    root = monitoring_artifact_root(settings)
    last: Exception | None = None
    for _ in range(3):  # another process may be creating or renaming it at the same time
        exp = c.get_experiment_by_name(name)
        if exp is not None and (root is None or _is_under(exp.artifact_location, root)):
            return exp.experiment_id
        try:
            if exp is not None:
                aside = f"{name}-misplaced-{exp.experiment_id}"
                c.rename_experiment(exp.experiment_id, aside)
                log.warning("MLflow experiment %r (id %s) keeps its artifacts at %s, outside "
                            "%s: renamed %r; the monitoring runs go to a new experiment %r",
                            name, exp.experiment_id, exp.artifact_location, root, aside, name)
            location = None if root is None else private_dir(root).as_uri()
            return c.create_experiment(name, artifact_location=location)
        except MlflowException as err:
            last = err
    raise RuntimeError(f"could not create the MLflow experiment {name!r}: {last}")


def _is_under(location: str | None, root: Path) -> bool:
    """Whether an experiment's artifact location (a local path or ``file:`` URI) lies in
    ``root``."""
    if not location:
        return False
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme not in ("", "file"):
        return False
    path = Path(urllib.request.url2pathname(parsed.path if parsed.scheme else location))
    return path.resolve().is_relative_to(root.resolve())


def sqlite_store(settings: Settings) -> Path | None:
    """The file of the MLflow store when it is SQLite (the embedded default), else None."""
    uri = settings.mlflow_tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    name = uri.removeprefix("sqlite:///").split("?", 1)[0]  # without ?timeout=... options
    return None if name in ("", ":memory:") else Path(name)


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

def model_version(settings: Settings, version: str):
    """The registered version ``version`` of the model; LookupError if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version(settings.model_name, str(version))
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise LookupError(f"model {settings.model_name!r} has no version {version!r}") from err
        raise


