"""An Airflow plugin: the reports folder (Great Expectations validation, Evidently drift) served
by Airflow's own API server, so a drift review links its report over HTTP, one click away from
the Required Actions page.

Registered through the ``airflow.plugins`` entry point (pyproject.toml): installing the project
is enough. It mounts the read-only app of :mod:`pipeline.orchestration.reports_app` at
``/kmeans`` and adds "K-means reports" to the UI's navigation.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipeline.orchestration.reports_app import URL_PREFIX, reports_app


class KMeansPlugin(AirflowPlugin):
    name = "kmeans"
    fastapi_apps = [{"app": reports_app, "url_prefix": URL_PREFIX, "name": "K-means reports"}]
    external_views = [{"name": "K-means reports", "href": f"{URL_PREFIX}/reports/",
                       "destination": "nav"}]
