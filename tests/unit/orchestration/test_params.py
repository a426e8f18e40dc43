"""One declaration of the training parameters: the CLI's options and the DAG's Params are
derived from TrainParams, and both refuse what it refuses."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.orchestration.params import param_schemas
from pipeline.training.params import TrainParams, parse_params

runner = CliRunner()


def test_cli_train_options_are_the_fields_of_train_params():
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name, field in TrainParams.model_fields.items():
        option = f"--{name.replace('_', '-')}"
        assert option in result.output, option
        assert field.description.split()[0] in result.output


@pytest.mark.parametrize("args, message", [
    (["--engine", "gpu"], "'gpu' is not one of 'spark', 'local'"),
    (["--k-min", "1"], "k_min: Input should be greater than or equal to 2"),
    (["--n-init", "21"], "n_init: Input should be less than or equal to 20"),
])
def test_cli_refuses_what_train_params_refuses(tmp_path, args, message):
    result = runner.invoke(app, ["train", str(tmp_path), *args], terminal_width=200)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split()), result.output


def test_param_schemas_carry_defaults_bounds_and_choices():
    schemas = param_schemas(TrainParams)
    assert list(schemas) == list(TrainParams.model_fields)
    assert schemas["k_max"] == {"default": 8, "type": "integer", "minimum": 2, "maximum": 256,
                                "description": "Largest K of the sweep."}
    assert schemas["engine"]["enum"] == ["spark", "local"]
    assert schemas["sample_fraction"]["exclusiveMinimum"] == 0
    assert parse_params({k: s["default"] for k, s in schemas.items()}) == TrainParams()


