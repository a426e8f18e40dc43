"""The wire format's fixed vocabulary: tensor datatypes and the outputs of an answer."""

from __future__ import annotations

import numpy as np

BINARY_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
OUTPUTS = {"cluster": "INT64", "distance": "FP64", "runner_up": "INT64", "margin": "FP64",
           "ood": "BOOL", "model_version": "BYTES", "stale": "BOOL", "error": "BYTES"}
