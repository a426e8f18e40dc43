"""Airflow's REST API as a user's script calls it, and waits on a run's progress."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.helpers.waiting import wait_until

#: Seconds a run may go without any progress (state, task states, task log growth).
STALL_TIMEOUT = 600.0


class Rest:
    """Airflow's REST API as a user's script calls it: a token from /auth/token, then JSON."""

    def __init__(self, airflow):
        self.airflow, self.url = airflow, airflow.url

    def __call__(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.airflow.token()}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as reply:  # a loaded box is slow
                return json.load(reply)
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: {err.code} {err.read()[:500]!r}") from None

    def tasks(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        found = self("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {t["task_id"]: t["state"] for t in found["task_instances"]}

    def wait_run(self, dag_id: str, run_id: str, *, until=("success", "failed"),
                 task: tuple[str, str] | None = None) -> str:
        """Poll a run until its state is in ``until`` (or ``task`` = (task_id, state) holds);
        a failed task ends the wait at once with the states. The wait lasts while the run
        makes progress (:func:`run_progress`)."""
        seen: dict = {}

        def done() -> str | None:
            state = self("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            tasks = seen["tasks"] = self.tasks(dag_id, run_id)
            if task is not None and tasks.get(task[0]) == task[1]:
                return state
            if state in until or "failed" in tasks.values():
                return state if task is None else f"{state} {tasks}"
            return None

        return wait_until(done, STALL_TIMEOUT, f"{dag_id} {run_id} done",
                          progress=lambda: (repr(seen.get("tasks")),
                                            run_progress(self.airflow, dag_id, run_id)),
                          interval=2, ignore=(OSError, AssertionError))

    def first_run(self, dag_id: str) -> list:
        """The DAG's runs, once the scheduler has created one (a plain limit: the scheduler's
        log grows with its heartbeats, so its size shows no progress of this)."""
        return wait_until(lambda: self("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"],
                          STALL_TIMEOUT, f"the scheduler's first {dag_id} run", interval=1,
                          ignore=(OSError, AssertionError))


def run_progress(airflow, dag_id: str, run_id: str) -> int:
    """Bytes in the run's task logs: each task writes as it goes, and a fit logs every few
    seconds (pipeline.engine.estimator.PROGRESS_EVERY_S)."""
    folder = airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
