"""MLflow models-from-code definition of the segment model (no pickle is written).

MLflow copies this file into the logged model; the artifact folder ``segment_model`` holds the
centroids (NPY) and metadata (JSON) that :class:`pipeline.model.artifact.SegmentModel` loads.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipeline.model.artifact import SegmentModel


class SegmentPyfunc(PythonModel):
    def load_context(self, context):

        self.model = SegmentModel.load(context.artifacts["segment_model"])

    def predict(self, context, model_input, params=None):
        frame = pd.DataFrame(model_input)
        result = self.model.assign(frame[self.model.feature_names])
        return pd.DataFrame({"cluster": result.cluster, "distance": result.distance,
                             "runner_up": result.runner_up, "margin": result.margin,
                             "ood": result.ood})


mlflow.models.set_model(SegmentPyfunc())
