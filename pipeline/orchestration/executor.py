"""Airflow's LocalExecutor with the pipeline already imported in its workers.

Each task of the LocalExecutor is a process forked from one of the executor's worker processes.
A task of the DAGs imports the pipeline and its libraries first (``pipeline.orchestration.flow``
with pandas, scikit-learn, numba and pyarrow; MLflow, Feast, Great Expectations and Evidently
where it uses them): 5-18 s on this machine, most of what a short task takes. A worker of this
executor imports them once when it starts, so every task forked from it finds them imported:
the same code, imported earlier, as a pre-loading web server does.

Set ``AIRFLOW__CORE__EXECUTOR=pipeline.orchestration.executor.PreloadingLocalExecutor`` (the
launchers in :mod:`pipeline.devtools.airflow_env` do). The modules are imported only,
nothing is run: no thread, connection, Spark session or settings exist in the worker when a task
forks, so the usual care about forking after threads does not arise. A module that fails to
import is logged and skipped: the task imports it itself and fails with its own error.
Measured in ``tests/integration/airflow/test_airflow_scheduler.py``'s deployment: see the README.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import time
from typing import Any

from airflow.executors import local_executor
from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)

#: What a task of the DAGs imports, heaviest first.
PRELOAD = ("pipeline.orchestration.flow", "evidently", "feast", "great_expectations", "mlflow")


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import ``modules``; the seconds each took (a failure is logged, not raised)."""
    took = {}
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception:  # the task will import it and fail with its own error
            log.exception("preloading %s failed; tasks import it themselves", name)
            continue
        took[name] = round(time.perf_counter() - started, 2)
    return took


def _run_preloaded_worker(**kwargs: Any) -> None:
    took = preload()
    log.info("LocalExecutor worker preloaded %s", took)
    local_executor._run_worker(**kwargs)


class PreloadingLocalExecutor(LocalExecutor):
    """:class:`LocalExecutor` whose worker processes import :data:`PRELOAD` before they take
    work (``_spawn_worker`` as in Airflow 3.3's LocalExecutor, with another target)."""

    def _spawn_worker(self) -> None:
        p = multiprocessing.Process(
            target=_run_preloaded_worker,
            kwargs={
                "logger_name": self.log.name,
                "input": self.activity_queue,
                "output": self.result_queue,
                "unread_messages": self._unread_messages,
                "team_conf": self.conf,
            },
        )
        p.start()
        assert p.pid is not None
        self.workers[p.pid] = p
