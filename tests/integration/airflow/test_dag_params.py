"""The training DAG as Airflow loads it: its Params are derived from TrainParams (the CLI's side
is tests/unit/orchestration/test_params.py)."""

from __future__ import annotations

from pipeline.orchestration.params import param_schemas
from pipeline.training.params import TrainParams, parse_params


def test_training_dag_params_are_derived_from_train_params(airflow_db):
    from pipeline.orchestration.airflow_env import load_dag

    dag = load_dag("kmeans_training")
    for name, schema in param_schemas(TrainParams).items():
        param = dag.params.get_param(name)
        assert param.value == schema["default"], name
        assert param.description == schema["description"], name
        assert param.schema == {k: v for k, v in schema.items()
                                if k not in ("default", "description")}, name
    # The window's own params are optional in the trigger form: null is a valid value.
    assert dag.params.get_param("end_date").value is None
    assert parse_params(dict(dag.params)) == TrainParams()
