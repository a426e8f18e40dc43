"""Feature preprocessing shared by training and serving (log1p for the skewed columns, median
imputation, standardisation), stored as plain JSON, never as a pickle.

The definition lives in the standalone :mod:`pipeline.model.kmeans_segments` (it travels with
the logged model); this module names the project's choice of columns: the features and their
``log`` flags in :data:`pipeline.core.settings.FEATURES`.
"""

from __future__ import annotations

from pipeline.core.settings import FEATURES
from pipeline.model.kmeans_segments import PreprocessingArrays, Preprocessor

__all__ = ["LOG_FEATURES", "Preprocessor", "PreprocessingArrays"]

#: The features that get ``log1p`` before imputation (``"log": True`` in the settings' table).
LOG_FEATURES: list[str] = [name for name, spec in FEATURES.items() if spec.get("log")]
