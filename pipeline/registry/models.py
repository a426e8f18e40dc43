"""Model versions in the registry: the artifact logged as a models-from-code pyfunc that
stands alone (its code, its pinned requirements, its signature), registered, and downloaded
and verified again for serving.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.core.io import (
    make_private,
)
from pipeline.core.settings import Settings
from pipeline.model import kmeans_segments
from pipeline.model.artifact import SegmentModel
from pipeline.registry.client import alias_version, client, configure, model_version
from pipeline.registry.signature import input_example, model_signature

MODEL_CODE = Path(__file__).parent.parent / "model" / "pyfunc.py"
#: Logged beside MODEL_CODE and imported by it under its top-level name: all the model needs.
MODEL_MODULE = Path(kmeans_segments.__file__)
#: What the logged model needs to run: nothing from this project.
MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas")
ARTIFACT_PATH = "segment_model"

def log_model_version(settings: Settings, run_id: str, artifact_dir: Path, tags: dict) -> str:
    """Log the artifact folder as a models-from-code pyfunc in ``run_id`` and register it.

    The logged model stands alone: the model code, :mod:`pipeline.model.kmeans_segments`
    (``code_paths``) and requirements pinned to the installed MLflow, NumPy and pandas; with a
    signature (every feature an optional double column) and an input example.
    """
    import mlflow

    model = SegmentModel.load(artifact_dir)  # refuses a modified artifact before logging it
    configure(settings)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        # MLflow keeps the folder's own name inside the model; give it the one loaders expect.
        staged = shutil.copytree(artifact_dir, Path(tmp) / ARTIFACT_PATH)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            code_paths=[str(MODEL_MODULE)],
            artifacts={ARTIFACT_PATH: str(staged)},
            registered_model_name=settings.model_name,
            signature=model_signature(model.feature_names),
            input_example=input_example(model),
            pip_requirements=pinned_requirements(),
        )
    _make_local_tree_private(mlflow.get_logged_model(info.model_id).artifact_location)
    version = str(info.registered_model_version)
    c = client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(settings.model_name, version, key, str(value))
    return version


def _make_local_tree_private(uri: str | None) -> None:
    """Owner-only modes on a logged model's files when they are in a local folder (MLflow
    copies artifacts without their modes, so they get the umask's)."""
    if not uri or not uri.startswith("file:"):
        return
    root = Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
    for folder, _, names in os.walk(root):
        make_private(folder)
        for name in names:
            make_private(Path(folder) / name)


def pinned_requirements() -> list[str]:
    """``name==version`` of the installed MLflow, NumPy and pandas: the logged model's whole
    environment."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def download_model(settings: Settings, alias: str = "champion", *, version: str | None = None):
    """Download and verify the artifact of ``version`` (default: the one behind ``alias``);
    returns (SegmentModel, version)."""
    import mlflow

    if version is None:
        found = alias_version(settings, alias)
        if found is None:
            raise LookupError(f"model {settings.model_name!r} has no alias {alias!r}; "
                              f"run the training DAG or `kmeans train` first")
        version = str(found.version)
    else:
        version = str(model_version(settings, version).version)  # LookupError if unknown
    configure(settings)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{settings.model_name}/{version}")
    folder = Path(local) / "artifacts" / ARTIFACT_PATH
    return SegmentModel.load(folder), str(version)


