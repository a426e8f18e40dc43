"""The model artifact as the project writes and reads it.

Reading, checking and assigning live in :mod:`pipeline.model.kmeans_segments`, the standalone
module that MLflow logs with the model; this module adds writing: ``centroids.npy`` (no
pickle), ``model.json`` and ``checksums.json``, each through an atomic rename. ``model.json``
records what a served row may hold (the features' valid ranges of
:data:`pipeline.core.settings.FEATURES` and the default ``range_tolerance``), so the logged
model checks its input as the server does, without the project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_path, atomic_write_json
from pipeline.core.settings import FEATURES, ServingSettings
from pipeline.model import kmeans_segments
from pipeline.model.kmeans_segments import (
    CENTROIDS,
    CHECKSUMS,
    FILES,
    FORMAT_VERSION,
    METADATA,
    ArtifactError,
    Assignment,
    Preprocessor,
    artifact_checksums,
)

__all__ = ["FILES", "FORMAT_VERSION", "ArtifactError", "Assignment", "Preprocessor",
           "SegmentModel"]


class SegmentModel(kmeans_segments.SegmentModel):
    """Fitted centroids plus the preprocessing that maps raw features to model space; the
    standalone model with :meth:`save`."""

    def save(self, folder: Path | str) -> Path:
        """Write the artifact to ``folder`` (created if needed); returns the folder."""
        folder = Path(folder)
        with atomic_path(folder / CENTROIDS) as tmp, open(tmp, "wb") as fh:
            np.save(fh, self.centroids, allow_pickle=False)
        atomic_write_json(folder / METADATA, {
            **input_limits(self.feature_names), **self.metadata,
            "format_version": FORMAT_VERSION, "k": self.k,
            "cluster_ids": self.cluster_ids.tolist(),
            "preprocessing": self.preprocessor.to_dict()})
        atomic_write_json(folder / CHECKSUMS, artifact_checksums(folder))
        return folder


def input_limits(feature_names: list[str]) -> dict:
    """What ``model.json`` records of the served input check unless the metadata has its own:
    each feature's valid range from the settings' table and the server's default tolerance."""
    return {"input_ranges": {name: [float(FEATURES[name]["min"]), float(FEATURES[name]["max"])]
                             for name in feature_names if name in FEATURES},
            "range_tolerance": float(ServingSettings.model_fields["range_tolerance"].default)}
