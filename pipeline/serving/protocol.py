"""The wire format's fixed vocabulary: tensor datatypes and the outputs of an answer."""

from __future__ import annotations

import numpy as np

from pipeline.model import schema

BINARY_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}

#: Output name -> v2 datatype: the model's outputs (:data:`pipeline.model.schema.OUTPUTS`, their
#: declared datatype), then what the server adds to each row (who answered, a stale model, a
#: per-row error).
OUTPUTS: dict[str, str] = {**{c.name: c.v2 for c in schema.OUTPUTS if c.v2 is not None},
                           "model_version": "BYTES", "stale": "BOOL", "error": "BYTES"}
