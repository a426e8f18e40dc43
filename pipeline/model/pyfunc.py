"""MLflow models-from-code definition of the segment model (no pickle is written).

MLflow copies this file into the logged model and logs ``kmeans_segments.py`` beside it
(``code_paths``); the artifact folder ``segment_model`` holds the centroids (NPY) and the
metadata (JSON). The logged model needs MLflow, NumPy and pandas only, not this project: it
loads and serves wherever those are installed (``mlflow.pyfunc.load_model``,
``mlflow models serve``, ``mlflow.pyfunc.spark_udf``).

Input: a DataFrame with the feature columns (double; a missing column or NaN is a missing value,
imputed with the training median). Each row is checked as the project's server checks it
(``kmeans_segments.InputCheck``, the ranges recorded in the artifact): a row with no known value,
or with a value that is not finite or lies outside its feature's accepted range, raises an
``MlflowException`` (``INVALID_PARAMETER_VALUE``, a 400 from ``mlflow models serve``) whose
message names the row, the feature and the accepted range, the text the server answers with.
Output: one row per input row with ``cluster``, ``distance``, ``runner_up``, ``margin`` and
``ood``.
"""

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

try:  # the logged model: MLflow puts its code_paths folder on sys.path
    import kmeans_segments
except ModuleNotFoundError:  # logging from the project, where the module lives in the package
    from pipeline.model import kmeans_segments


class SegmentPyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model = kmeans_segments.SegmentModel.load(context.artifacts["segment_model"])

    def predict(self, context, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        # A feature column the caller left out is missing in every row (the signature marks
        # every feature optional); reindex adds it as NaN and drops columns the model ignores.
        try:
            rows = self.model.check_input(frame.reindex(columns=self.model.feature_names))
        except kmeans_segments.InputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from err
        result = self.model.assign(rows)
        return pd.DataFrame({name: getattr(result, name)
                             for name in kmeans_segments.OUTPUTS}, index=frame.index)


mlflow.models.set_model(SegmentPyfunc())
