"""An Airflow plugin: the reports folder (Great Expectations validation, Evidently drift) served
by Airflow's own API server, so a drift review links its report over HTTP, one click away from
the Required Actions page.

Registered through the ``airflow.plugins`` entry point (pyproject.toml): installing the project
is enough. It mounts the read-only app of :mod:`pipeline.orchestration.reports_app` at
``/kmeans`` and adds "K-means reports" to the UI's navigation.

The navigation entry is an external view with a ``url_route``: the UI links it as a page of its
own (``/plugin/kmeans-reports``) that shows ``href`` inside the UI. Without ``url_route`` the
entry was drawn as a menu button carrying the address, and a click on it went nowhere.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pipeline.orchestration.reports_app import URL_PREFIX, reports_app

NAME = "K-means reports"
#: The UI's page of the entry: ``<Airflow URL>/plugin/<URL_ROUTE>``.
URL_ROUTE = "kmeans-reports"


class KMeansPlugin(AirflowPlugin):
    name = "kmeans"
    fastapi_apps = [{"app": reports_app, "url_prefix": URL_PREFIX, "name": NAME}]
    external_views = [{"name": NAME, "href": f"{URL_PREFIX}/reports/", "url_route": URL_ROUTE,
                       "destination": "nav"}]
