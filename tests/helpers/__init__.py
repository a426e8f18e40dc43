"""What the tests share, in plain modules (no test imports ``conftest`` or another test module).

- ``clock``: the tests' calendar, relative to today (no test writes a calendar date);
- ``waiting``: ``wait_until(predicate, timeout, what)``, a wait that follows progress;
- ``net``: ``free_port``, ``wait_ready`` and the tail of a server's log;
- ``homes``: settings on a folder, the sample data landed, a champion trained;
- ``serving``: a tiny model and the inference routes the server tests share;
- ``artifacts``, ``sources``, ``feast``, ``shadow``: tampered artifacts, rows for PostgreSQL and
  events for Redis, the stock ``feast`` CLI, the streaming shadow's champion and rows;
- ``processes``: services in sessions of their own (a Spark standalone cluster, an S3 server);
- ``airflow_ui``: Airflow's UI in Debian's Chromium (Playwright);
- ``cluster_fit``: a driver script the cluster tests start in a subprocess.

Fixtures live in ``conftest.py`` files, where pytest finds them; these modules hold functions.
"""
