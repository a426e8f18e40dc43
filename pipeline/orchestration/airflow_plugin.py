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
from starlette.requests import Request
from starlette.responses import Response

from pipeline.orchestration.reports_app import URL_PREFIX, make_app, refusal

NAME = "K-means reports"
#: The UI's page of the entry: ``<Airflow URL>/plugin/<URL_ROUTE>``.
URL_ROUTE = "kmeans-reports"


async def airflow_user(request: Request) -> Response | None:
    """Let a request through only with a valid token of Airflow's auth manager: ``Authorization:
    Bearer`` (scripts, as for the REST API) or the UI's session cookie (a logged-in browser:
    the navigation entry, the review links); 401 otherwise, as ``/api/v2`` answers."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else \
        request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        return refusal(401, "not authenticated: log in to Airflow (the reports are for its "
                            "users), or send Authorization: Bearer <token from /auth/token>")
    try:
        await get_auth_manager().get_user_from_token(token)
    except Exception as err:  # noqa: BLE001 - any failure to resolve the token refuses it
        return refusal(401, f"not authenticated: the token was refused "
                            f"({type(err).__name__}); log in to Airflow again")
    return None


class KMeansPlugin(AirflowPlugin):
    name = "kmeans"
    fastapi_apps = [{"app": make_app(airflow_user), "url_prefix": URL_PREFIX, "name": NAME}]
    external_views = [{"name": NAME, "href": f"{URL_PREFIX}/reports/", "url_route": URL_ROUTE,
                       "destination": "nav"}]
