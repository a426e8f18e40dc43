"""The MLflow side of segment profiles: a profile's files as its run's artifacts (under
``profile/``), the profile a run logged, and the model a run would register.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline import registry
from pipeline.core.settings import Settings
from pipeline.model.artifact import SegmentModel
from pipeline.promotion.profile_report import FILES, JSON_FILE
from pipeline.training.stages import download_candidate

ARTIFACT_DIR = "profile"


def artifact_uri(run_id: str, name: str = JSON_FILE) -> str:
    return f"runs:/{run_id}/{ARTIFACT_DIR}/{name}"


def registration_model(settings: Settings, run_id: str) -> SegmentModel:
    """The model registration takes from a run (``matched`` if evaluate wrote it, else the
    ``candidate``)."""
    with tempfile.TemporaryDirectory() as tmp:
        return SegmentModel.load(download_candidate(settings, run_id, Path(tmp),
                                                    prefer_matched=True))


def log_to_run(settings: Settings, run_id: str, folder: Path) -> None:
    """The profile's files as the run's artifacts under ``profile/``."""
    c = registry.client(settings)
    for name in FILES:
        c.log_artifact(run_id, str(folder / name), artifact_path=ARTIFACT_DIR)


def logged(settings: Settings, run_id: str) -> dict | None:
    """The profile logged with a run, or None."""
    import mlflow

    names = {a.path for a in registry.client(settings).list_artifacts(run_id, ARTIFACT_DIR)}
    if f"{ARTIFACT_DIR}/{JSON_FILE}" not in names:
        return None
    registry.configure(settings)
    return mlflow.artifacts.load_dict(artifact_uri(run_id))

