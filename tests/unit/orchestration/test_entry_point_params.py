"""One typed model per entry point: the CLI's options and ``kmeans-serve``'s flags are derived
from it (names, defaults, help), and every default is one the Airflow trigger form accepts. The
DAGs' side, which needs Airflow's DAG loading, is tests/integration/airflow/test_dag_params.py.
"""

from __future__ import annotations

import typing

import jsonschema
import pytest
from pydantic import BaseModel
from typer.main import get_command
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.params import IntervalParams
from pipeline.orchestration.params import param_schemas
from pipeline.promotion.params import PromoteParams, PublishParams, RollbackParams
from pipeline.serving.__main__ import parser
from pipeline.serving.model import MODES
from pipeline.serving.params import ServeParams
from pipeline.training.params import TrainParams, WindowParams
from tests.helpers import clock

#: command -> the model its options come from
COMMANDS: dict[str, type[BaseModel]] = {
    "train": TrainParams, "rollback": RollbackParams, "publish-segments": PublishParams,
    "serve": ServeParams, "monitor": IntervalParams}
#: Every model a DAG's params come from.
DAG_MODELS = (TrainParams, WindowParams, IntervalParams, PromoteParams, RollbackParams,
              PublishParams)

runner = CliRunner()


@pytest.mark.parametrize("command, model", COMMANDS.items())
def test_cli_options_are_the_models_fields_and_defaults(command, model):
    options = {p.name: p for p in get_command(app).commands[command].params  # type: ignore[attr-defined]
               if p.name in model.model_fields}
    assert list(options) == list(model.model_fields)
    for name, field in model.model_fields.items():
        option = options[name]
        assert option.default == field.default, name
        assert option.help == field.description, name
        assert option.opts == [f"--{name.replace('_', '-')}"], name


def test_kmeans_serve_flags_are_the_serve_models_fields_and_defaults():
    actions = {a.dest: a for a in parser()._actions if a.dest in ServeParams.model_fields}
    assert list(actions) == list(ServeParams.model_fields)
    for name, field in ServeParams.model_fields.items():
        assert actions[name].default == field.default, name
        assert actions[name].help.startswith(field.description), name
    # Both entry points take the same flags (kmeans-serve adds --verbose only).
    theirs = {o for p in get_command(app).commands["serve"].params  # type: ignore[attr-defined]
              for o in [*p.opts, *p.secondary_opts]} - {"--help"}
    ours = {o for a in parser()._actions for o in a.option_strings} - {"-h", "--help", "-v",
                                                                        "--verbose"}
    assert theirs == ours


def test_serve_modes_are_the_servers():
    assert set(typing.get_args(ServeParams.model_fields["canary_mode"].annotation)) == set(MODES)


@pytest.mark.parametrize("model", DAG_MODELS, ids=lambda m: m.__name__)
def test_every_default_is_one_the_trigger_form_accepts(model):
    for name, spec in param_schemas(model).items():
        schema = {k: v for k, v in spec.items() if k not in ("default", "description")}
        jsonschema.validate(spec["default"], schema)
        if spec["default"] is None:  # optional: None with a nullable type
            assert "null" in schema["type"], name
    model.model_validate({k: s["default"] for k, s in param_schemas(model).items()})


def test_rollback_reason_has_one_default_for_the_dag_and_the_cli(monkeypatch):
    """Defaulted on both sides (the trigger form needs a default): the CLI takes a rollback
    without --reason to the registry instead of refusing it."""
    def settings(**_):
        raise LookupError("reached the registry")

    monkeypatch.setattr("pipeline.cli._settings", settings)
    result = runner.invoke(app, ["rollback"])
    assert result.exit_code == 2 and "reached the registry" in result.output, result.output
    assert param_schemas(RollbackParams)["reason"]["default"] == RollbackParams().reason


@pytest.mark.parametrize("params, message", [
    ({"start": clock.iso(1)}, "give both start and end"),
    ({"start": "yesterday", "end": "today"}, "start='yesterday' is not an ISO date-time"),
])
def test_interval_params_name_what_is_wrong(params, message):
    with pytest.raises(ValueError, match=message):
        IntervalParams(**params)


def test_kmeans_monitor_checks_its_interval_as_the_dag_does(monkeypatch):
    """The CLI's window is parsed by the DAG's model: the same errors, ISO with or without a
    time zone, and the window passed on as given."""
    seen = {}
    monkeypatch.setattr("pipeline.cli._settings", lambda **_: None)
    monkeypatch.setattr("pipeline.cli.monitor_window",
                        lambda _s, start, end: seen.update(start=start, end=end) or {})
    result = runner.invoke(app, ["monitor", "--start", clock.iso(1)])
    assert result.exit_code == 2 and "give both start and end" in result.output
    naive = clock.at(1).replace(tzinfo=None).isoformat(timespec="minutes")  # a UTC time
    result = runner.invoke(app, ["monitor", "--start", naive, "--end", clock.iso(1, hours=1)])
    assert result.exit_code == 0, result.output
    assert (seen["start"], seen["end"]) == (clock.at(1), clock.at(1, hours=1))
