"""``kmeans-serve`` (or ``python -m pipeline.serving``): the inference server on its own.

What the serving image runs (docker/serving.Dockerfile, k8s/base/inferenceservice.yaml). It imports
the server and what the server needs (settings, the model artifact, the MLflow registry, the
Feast online store), never the rest of the platform, so it runs from the ``serving`` extra
alone: no Airflow, Spark, Great Expectations or Evidently. The options are those of the
platform's ``kmeans serve``, which runs the same :func:`pipeline.serving.server.serve`.

Standard output carries the access log (one JSON line per request); logs go to standard error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from pydantic import ValidationError

from pipeline.core import preflight
from pipeline.core.settings import load_settings
from pipeline.serving.model import MODES
from pipeline.serving.server import serve, token_problems

#: Dependencies whose INFO logs and warnings are noise to someone running the server.
NOISY_LOGGERS = ("mlflow", "feast", "alembic", "urllib3", "numba", "httpx")


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: 0 to 100") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value:g} is outside the allowed range 0 to 100")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: 0 to 65535"
                                         ) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is outside the allowed range 0 to 65535")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmeans-serve",
        description="Serve the model behind an alias (Open Inference Protocol v2 and KServe v1). "
                    "Settings come from KMEANS_* environment variables, as for `kmeans`.")
    p.add_argument("--alias", default="champion",
                   help="Model alias to serve as the stable version (default: %(default)s).")
    p.add_argument("--version", default=None,
                   help="Serve this registry version instead of the alias (KServe canary "
                        "revisions).")
    p.add_argument("--canary-alias", default="challenger",
                   help="Alias loaded as the canary when it exists ('' for none; default: "
                        "%(default)s).")
    p.add_argument("--canary-mode", default="shadow", choices=MODES,
                   help="shadow: the canary scores, the stable answers; canary: the canary "
                        "answers its weight's share (default: %(default)s).")
    p.add_argument("--canary-weight", type=_percent, default=0.0,
                   help="Percent of keys the canary answers in canary mode (default: "
                        "%(default)s).")
    p.add_argument("--host", default=None, help="Bind address (KMEANS_SERVING_HOST).")
    p.add_argument("--port", type=_port, default=None, help="Port (KMEANS_SERVING_PORT).")
    p.add_argument("--feast", action=argparse.BooleanOptionalAction, default=True,
                   help="Resolve customer ids through the Feast online store; with --no-feast "
                        "the server needs no feature store and answers lookups by id with 503.")
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
    overrides = {k: v for k, v in (("serving_host", args.host), ("serving_port", args.port))
                 if v is not None}
    try:
        settings = load_settings(**overrides)
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
        preflight.check(settings, needs=("postgres", "mlflow", *(("redis",) if args.feast else ())))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException  # the registry's errors

    try:
        serve(settings, alias=args.alias, version=args.version,
              canary_alias=args.canary_alias or None, canary_mode=args.canary_mode,
              canary_weight=args.canary_weight, with_feast=args.feast)
    except (LookupError, ValueError, FileNotFoundError, MlflowException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shuts down gracefully, then re-raises SIGINT
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
