"""``kmeans-serve`` (or ``python -m pipeline.serving``): the inference server on its own.

What the serving image runs (docker/serving.Dockerfile, k8s/base/predictor/inferenceservice.yaml).
It imports the server and what the server needs (settings, the model artifact, the MLflow
registry, the Feast online store), never the rest of the platform, so it runs from the
``serving`` extra alone: no Airflow, Spark, Great Expectations or Evidently. The options are
those of the platform's ``kmeans serve``, which runs the same
:func:`pipeline.serving.server.serve`: both are derived from
:class:`pipeline.serving.params.ServeParams`.

Standard output carries the access log (one JSON line per request); logs go to standard error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from pipeline.core import preflight
from pipeline.core.settings import load_settings
from pipeline.serving.params import ServeParams
from pipeline.serving.server import serve, token_problems

#: Dependencies whose INFO logs and warnings are noise to someone running the server.
NOISY_LOGGERS = ("mlflow", "feast", "alembic", "urllib3", "numba", "httpx")


def _bounded(kind: type, low: float | None, high: float | None) -> Callable[[str], float]:
    """An argparse ``type`` that parses ``kind`` and names the allowed range when the text is
    not one, or lies outside it."""
    noun = "an integer" if kind is int else "a number"
    allowed = (f"{low:g} to {high:g}" if low is not None and high is not None
               else f">= {low:g}" if low is not None else f"<= {high:g}" if high is not None
               else noun)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; allowed: {allowed}"
                                             ) from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value:g} is outside the allowed range {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def _plain(annotation):
    """``X`` of ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        [annotation] = [a for a in get_args(annotation) if a is not type(None)]
    return annotation


def add_options(p: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of ``model`` (name, default, help, choices and bounds from the
    field), as ``pipeline.cli.options_from`` gives a typer command: the model is the one place
    the server's options are declared."""
    for name, field in model.model_fields.items():
        flag, kind = f"--{name.replace('_', '-')}", _plain(field.annotation)
        text = f"{field.description} (default: %(default)s)"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                           help=text)
        elif get_origin(kind) is Literal:
            p.add_argument(flag, choices=get_args(kind), default=field.default, help=text)
        elif kind in (int, float):
            bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "le")
                      if getattr(m, k, None) is not None}
            p.add_argument(flag, type=_bounded(kind, bounds.get("ge"), bounds.get("le")),
                           default=field.default, help=text)
        else:
            p.add_argument(flag, default=field.default, help=text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmeans-serve",
        description="Serve the model behind an alias (Open Inference Protocol v2 and KServe v1). "
                    "Settings come from KMEANS_* environment variables, as for `kmeans`.")
    add_options(p, ServeParams)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Debug logs and dependencies' warnings.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, load the settings and the model, serve until SIGINT or SIGTERM. Returns
    the exit code: 0 after SIGINT, or 2 for an error the user can fix (named on one line),
    a server of the production profile that does not answer included.
    After SIGTERM (what Kubernetes sends) the process ends by that signal once the server has
    shut down gracefully, as uvicorn arranges."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not args.verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(mlflow|feast)\b")
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        options = ServeParams(**{name: getattr(args, name) for name in ServeParams.model_fields})
        settings = load_settings(**options.setting_overrides())
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                             for e in err.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    problem = token_problems(settings)  # before any server is asked: a fix of the settings
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:  # the production profile's servers: MLflow, Redis unless --no-feast, PostgreSQL if set
        preflight.check(settings, needs=("postgres", "mlflow",
                                         *(("redis",) if options.feast else ())))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException  # the registry's errors

    try:
        serve(settings, alias=options.alias, version=options.version,
              canary_alias=options.canary_alias or None, canary_mode=options.canary_mode,
              canary_weight=options.canary_weight, with_feast=options.feast)
    except (LookupError, ValueError, FileNotFoundError, MlflowException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shuts down gracefully, then re-raises SIGINT
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
