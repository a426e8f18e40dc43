"""Airflow ``Param``s derived from a typed parameter model, so a DAG's trigger form, the CLI's
options and the validation of a run's params all come from one declaration
(:class:`pipeline.training.params.TrainParams` and the other entry points' models, see
:mod:`pipeline.core.params`).

Light on purpose: DAG files import it at parse time; airflow is imported where it is used.
"""

from __future__ import annotations

from pydantic import BaseModel

# JSON-schema keywords the trigger form and Airflow's param validation understand.
_KEYWORDS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
             "minLength", "maxLength", "pattern", "format", "description", "title")


def _nullable(prop: dict) -> dict:
    """An optional field (``X | None``: pydantic's ``anyOf`` of X and null) as one schema whose
    type is ``["null", X's type]``, what the trigger form shows as an optional input."""
    branches = prop.get("anyOf")
    if not branches or len(branches) != 2 or {"type": "null"} not in branches:
        return prop
    [other] = [b for b in branches if b != {"type": "null"}]
    return {**{k: v for k, v in prop.items() if k != "anyOf"}, **other,
            "type": ["null", other["type"]]}


def param_schemas(model: type[BaseModel]) -> dict[str, dict]:
    """One JSON schema per field of ``model``, with its default, as a ``Param`` takes it."""
    schema = model.model_json_schema()
    out = {}
    for name, prop in schema["properties"].items():
        prop = _nullable(prop)
        spec = {k: v for k, v in prop.items() if k in _KEYWORDS}
        if "enum" in spec and "type" not in spec:  # Literal[...] of strings
            spec["type"] = "string"
        if "const" in prop:  # a Literal of one value
            spec.update(type="string", enum=[prop["const"]])
        spec.pop("title", None)
        out[name] = {"default": prop.get("default"), **spec}
    return out


def dag_params(model: type[BaseModel]) -> dict:
    """``{name: Param(default, type=..., minimum=..., description=...)}`` for every field."""
    from airflow.sdk import Param

    return {name: Param(spec.pop("default"), **spec)
            for name, spec in param_schemas(model).items()}
