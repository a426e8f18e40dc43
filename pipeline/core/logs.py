"""Quiet by default: dependencies' known, harmless chatter off, for the CLI and the demo.

``kmeans -v`` leaves everything on. Called by the entry points, never at import.
"""

from __future__ import annotations

import logging
import os
import warnings

# Loggers of dependencies whose INFO lines are noise to a CLI user.
NOISY_LOGGERS = ("py4j", "feast", "mlflow", "great_expectations", "alembic", "urllib3", "httpx",
                 "numba", "airflow", "sqlalchemy", "evidently")

# Warnings that dependencies raise about each other (deprecations, pydantic and pandas
# future changes), none of which the user can act on.
_QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_QUIET_MODULES = (r"(mlflow|feast|pydantic|great_expectations|evidently|airflow|pyspark|sklearn|"
                  r"dask|sqlalchemy|starlette|fastapi|jwt)(\.|$)")


def quiet_dependencies() -> None:
    """Turn off dependencies' deprecation and future warnings, their INFO logs, Great
    Expectations' and tqdm's progress bars, and MLflow's INFO lines. Safe to call again after
    a library (Airflow) reset the warning filters."""
    for category in _QUIET_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=_QUIET_MODULES)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Warnings that reach logging (Airflow captures them) are the ones filtered above.
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
