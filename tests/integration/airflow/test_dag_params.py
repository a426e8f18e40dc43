"""The DAGs as Airflow loads them: each DAG's Params are derived from its typed models, field by
field (name, default, description, schema), and the defaults validate as the models' defaults.
The CLI's side is tests/unit/orchestration/test_entry_point_params.py."""

from __future__ import annotations

import pytest

from pipeline.core.params import parse
from pipeline.data.params import IntervalParams
from pipeline.orchestration.dag_defaults import INGEST_SOURCES
from pipeline.orchestration.params import param_schemas
from pipeline.promotion.params import PromoteParams, PublishParams, RollbackParams
from pipeline.training.params import TrainParams, WindowParams, parse_params

#: DAG -> the models its params come from, in order.
DAG_MODELS = {
    "kmeans_training": (TrainParams, WindowParams),
    "kmeans_monitoring": (IntervalParams,),
    "kmeans_promote": (PromoteParams,),
    "kmeans_rollback": (RollbackParams,),
    "kmeans_publish": (PublishParams,),
    **{f"kmeans_ingest_{source}": (IntervalParams,) for source in INGEST_SOURCES},
}


@pytest.fixture(scope="module")
def dags(airflow_db) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    from pipeline.devtools.airflow_env import DAGS_FOLDER

    bag = DagBag(str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    return {dag_id: bag.get_dag(dag_id) for dag_id in DAG_MODELS}


@pytest.mark.parametrize("dag_id, models", DAG_MODELS.items())
def test_dag_params_are_the_models_fields_and_defaults(dags, dag_id, models):
    dag = dags[dag_id]
    assert list(dag.params) == [name for model in models for name in model.model_fields]
    for model in models:
        for name, schema in param_schemas(model).items():
            param = dag.params.get_param(name)
            assert param.value == schema["default"], name
            assert param.description == schema["description"], name
            assert param.schema == {k: v for k, v in schema.items()
                                    if k not in ("default", "description")}, name
        # What the trigger form sends unchanged is the model's defaults.
        assert parse(model, dict(dag.params), only_known=True) == model()


def test_training_window_params_are_optional_in_the_trigger_form(dags):
    dag = dags["kmeans_training"]
    assert dag.params.get_param("end_date").value is None
    assert parse_params(dict(dag.params)) == TrainParams()
