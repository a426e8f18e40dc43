"""What the logged model says of its inputs and outputs: the MLflow signature and the input
example logged beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.model import schema
from pipeline.model.artifact import SegmentModel

INPUT_EXAMPLE_ROWS = 3


def model_signature(feature_names: list[str]):
    """Input: each feature a double column, optional (absent or NaN = missing, imputed).
    Output: the segment output as :mod:`pipeline.model.schema` declares it (``cluster`` and
    ``runner_up`` long, ``distance`` and ``margin`` double, ``ood`` boolean)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", name, required=False) for name in feature_names]),
        outputs=Schema([ColSpec(c.mlflow, c.name) for c in schema.OUTPUTS]))


def input_example(model: SegmentModel, rows: int = INPUT_EXAMPLE_ROWS) -> pd.DataFrame:
    """A few raw rows that land on the model's first centroids, rounded for reading."""
    raw = model.preprocessor.inverse_transform(model.centroids[:rows])
    return pd.DataFrame(np.round(raw, 4), columns=model.feature_names)


