"""The reports folder over HTTP, read-only: the app the Airflow plugin mounts at ``/kmeans``
(:mod:`pipeline.orchestration.airflow_plugin`). ``/reports/`` lists the reports, newest first;
``/reports/<path>`` serves one (HTML, JSON or PNG under KMEANS_HOME/reports, nothing else: a
symbolic link that leads out of the folder is neither listed nor served).

The reports show the data's figures, so they are for Airflow's users only: :func:`make_app`
takes the check a request must pass (the plugin gives Airflow's auth manager: a bearer token,
or the UI's session cookie), and refuses with 401 before anything is read.

Apart from the plugin so that it can be used, and tested, without importing Airflow.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.core.settings import AIRFLOW_PLUGIN_PREFIX, load_settings

URL_PREFIX = AIRFLOW_PLUGIN_PREFIX
SERVED_SUFFIXES = {".html": "text/html; charset=utf-8", ".json": "application/json",
                   ".png": "image/png"}
# The reports are self-contained pages; nothing they load may come from elsewhere, and no other
# site may frame them.
HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN",
           "Cache-Control": "no-store"}


def _root() -> Path:
    return load_settings().reports_dir.resolve()


def _served(root: Path, relative: str) -> Path | None:
    """The file a request names, if it is a served report inside the reports folder."""
    if "\x00" in relative:
        return None
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or path.suffix not in SERVED_SUFFIXES:
        return None
    return path if path.is_file() else None


async def report(request: Request) -> Response:
    path = _served(_root(), request.path_params["path"])
    if path is None:
        return PlainTextResponse("no such report", status_code=404, headers=HEADERS)
    return FileResponse(path, media_type=SERVED_SUFFIXES[path.suffix], headers=HEADERS)


def _listed(root: Path) -> list[Path]:
    """The served reports, newest first: files inside the folder once links are followed."""
    if not root.is_dir():
        return []
    found = [p for p in root.rglob("*")
             if p.suffix in SERVED_SUFFIXES and p.is_file() and p.resolve().is_relative_to(root)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


async def index(request: Request) -> Response:
    root = _root()
    found = _listed(root)
    rows = "\n".join(
        f"<tr><td>{html.escape(p.parent.relative_to(root).as_posix() or '.')}</td>"
        f"<td><a href=\"{quote(p.relative_to(root).as_posix())}\">{html.escape(p.name)}</a></td>"
        f"<td>{dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC):%Y-%m-%d %H:%M:%S} UTC</td>"
        f"<td>{p.stat().st_size:,}</td></tr>" for p in found)
    page = (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>K-means reports</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}"
        "</style></head><body><h1>K-means reports</h1>"
        f"<p>{len(found)} reports in <code>{html.escape(str(root))}</code>, newest first.</p>"
        "<table><tr><th>kind</th><th>report</th><th>written</th><th>bytes</th></tr>"
        f"{rows}</table></body></html>")
    return HTMLResponse(page, headers=HEADERS)


#: A request's check: None lets it through, a response refuses it.
Check = Callable[[Request], Awaitable[Response | None]]


class _Guarded:
    """The app behind ``check``: every HTTP request passes it first."""

    def __init__(self, app: ASGIApp, check: Check) -> None:
        self.app, self.check = app, check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = await self.check(Request(scope, receive))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refusal(status: int, reason: str) -> Response:
    return JSONResponse({"error": reason}, status_code=status, headers=HEADERS)


def make_app(check: Check | None) -> Starlette:
    """The reports app; every request passes ``check`` first (None: no check, for tests of
    the app alone and for a caller that guards it itself)."""
    app = Starlette(routes=[
        Route("/reports/", index),
        Route("/reports/{path:path}", report),
    ])
    if check is not None:
        app.add_middleware(_Guarded, check=check)
    return app


reports_app = make_app(None)
