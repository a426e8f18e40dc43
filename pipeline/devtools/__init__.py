"""Development tooling, outside the product: what runs the product on this machine and what
measures it.

- ``airflow_env``: Airflow on the embedded SQLite default (``make airflow-ui``, the demo's and the
  tests' DAG runs);
- ``stack``: the production profile on one machine (``make prod-up``, ``prod-status``,
  ``prod-down``);
- ``replay``: synthetic traffic through a live server, window by window (the monitoring tests and
  ``benchmarks/bench_monitoring.py``).

It sits above the product layers and below ``demo`` and ``cli``; no product module imports it
(an import-linter contract in ``pyproject.toml`` keeps it so).
"""
