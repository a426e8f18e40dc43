"""Validating an entry point's params against its typed model (:class:`pydantic.BaseModel`).

Each entry point declares its params once, as one pydantic model (``TrainParams``,
``WindowParams``, ``IntervalParams``, ``PromoteParams``, ``RollbackParams``, ``PublishParams``,
``ServeParams``); the DAG's ``Param``s (:mod:`pipeline.orchestration.params`), the CLI's options
(``pipeline.cli.options_from``) and the server's flags (``pipeline.serving.__main__``) are derived
from it, and a run's params are validated by it here.

Light on purpose: DAG files import the models at parse time.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def problems(err: ValidationError) -> str:
    """One line naming each bad value: ``"k_min: Input should be ...; end: ..."``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}"
                     for e in err.errors())


def parse(model: type[Model], params: dict, *, only_known: bool = False) -> Model:
    """``params`` validated by ``model``; ValueError naming each bad value.

    With ``only_known``, keys that are not fields of ``model`` are left out (they belong to
    another model of the same run, as the training DAG's window params beside TrainParams');
    without it they are refused, so a misspelt key (``kmax``) never falls back to a default.

    Examples
    --------
    >>> from pydantic import BaseModel
    >>> class P(BaseModel):
    ...     k: int = 2
    >>> parse(P, {"k": "3", "other": 1}, only_known=True).k
    3
    """
    if only_known:
        params = {k: v for k, v in params.items() if k in model.model_fields}
    else:
        unknown = sorted(set(params) - set(model.model_fields))
        if unknown:
            raise ValueError(f"unknown params {unknown}; this DAG takes "
                             f"{sorted(model.model_fields)}")
    try:
        return model(**params)
    except ValidationError as err:
        raise ValueError(problems(err)) from err
