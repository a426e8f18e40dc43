"""Start the server: load the champion (and the challenger as canary) from MLflow, bind, serve.

Run on its own by ``kmeans-serve`` or ``python -m pipeline.serving`` (what the serving image
runs, :mod:`pipeline.serving.__main__`), and by the platform's ``kmeans serve``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time

import uvicorn

from pipeline import registry
from pipeline.core.settings import Settings
from pipeline.data.features import feature_store
from pipeline.model.artifact import ArtifactError
from pipeline.serving.app import InferenceApp
from pipeline.serving.lookup import OnlineLookup
from pipeline.serving.model import SegmentService
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.transport import limited_protocol

log = logging.getLogger(__name__)

#: Shortest bearer token the production profile serves with (a guessable token is no token).
MIN_TOKEN_LENGTH = 16
#: Of the shutdown grace period, what is kept for cancelling what still runs and exiting.
EXIT_RESERVE_SECONDS = 2.0


def token_problems(settings: Settings) -> str | None:
    """Why the production profile's tokens cannot serve, naming the variable, or None."""
    if settings.profile != "production":
        return None
    for name in ("serving_token", "admin_token"):
        token = getattr(settings.serving, name)
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            return (f"KMEANS_{name.upper()} has {len(token.get_secret_value())} characters; "
                    f"the production profile needs at least {MIN_TOKEN_LENGTH} (e.g. "
                    "`openssl rand -hex 24`)")
    return None


def drain_seconds(grace: float) -> int:
    """How long requests in flight may finish after SIGTERM, of a ``grace`` period to exit
    (whole seconds, as uvicorn takes it)."""
    return max(int(grace - EXIT_RESERVE_SECONDS), 1)


def registry_loader(settings: Settings):
    """``loader(version=..., alias=...)`` for the admin API: download and verify a version
    (LookupError for an unknown version or alias, ArtifactError for a tampered artifact)."""

    def load(version: str | None = None, alias: str | None = None):
        try:
            return registry.download_model(settings, alias or "champion", version=version)
        except RecursionError as err:  # a JSON file of the artifact nested too deeply
            raise ArtifactError("the artifact's model.json or checksums.json is nested too "
                                "deeply to read") from err
    return load


def online_lookup(settings: Settings, feature_names: list[str]) -> OnlineLookup:
    """Lookups by customer id through the feature service of ``settings`` (LookupError, naming
    the way out, when the online store does not hold it)."""
    from feast.errors import FeastObjectNotFoundException

    try:
        return OnlineLookup(feature_store(settings), settings.feature_service, feature_names)
    except FeastObjectNotFoundException as err:
        raise LookupError(f"{err}: lookups by customer_id need feature service "
                          f"{settings.feature_service!r} in the Feast online store; apply the "
                          "feature repo and materialize (`kmeans apply`, `kmeans materialize`), "
                          "or serve feature vectors only (--no-feast)") from err


def build_app(settings: Settings, *, alias: str = "champion", version: str | None = None,
              canary_alias: str | None = "challenger", canary_mode: str = "shadow",
              canary_weight: float = 0.0, with_feast: bool = True, access_log=None):
    """The app serving ``version`` (default: the one behind ``alias``); ``canary_alias`` (when
    it exists and differs) as the canary."""

    loader = registry_loader(settings)
    model, version = loader(version=version, alias=None if version else alias)
    lookup = None  # without it, lookups by customer_id answer 503
    if with_feast:
        lookup = online_lookup(settings, model.feature_names)
    serving = settings.serving
    service = SegmentService(settings.model_name, lookup=lookup,
                             max_batch_rows=serving.max_batch_rows,
                             range_tolerance=serving.range_tolerance,
                             max_lookup_ids=serving.max_lookup_ids)
    service.load(model, version, "stable")
    if canary_alias:
        found = registry.alias_version(settings, canary_alias)
        if found is not None and str(found.version) != version:
            canary, canary_version = loader(version=str(found.version))
            service.load(canary, canary_version, "canary")
            service.set_traffic(canary_weight, canary_mode)
    plog = (PredictionLog(settings.predictions_dir, list(model.feature_names),
                          sample_rate=serving.prediction_log_sample_rate,
                          max_queue_rows=serving.prediction_log_max_queue_rows)
            if serving.prediction_log_sample_rate > 0 else None)
    return InferenceApp(service, serving, loader=loader, access_log=access_log,
                        prediction_log=plog)


def serve(settings: Settings, **kwargs) -> None:
    """Serve until SIGINT or SIGTERM; ``kwargs`` go to :func:`build_app`. After SIGTERM the
    server reads no new request, gives those in flight up to ``shutdown_grace_seconds`` less
    :data:`EXIT_RESERVE_SECONDS` to finish, cancels what still runs (503) and exits."""
    problem = token_problems(settings)
    if problem:
        raise ValueError(problem)
    # JSON lines on the process's standard output: `kmeans serve` runs its commands with
    # sys.stdout redirected to stderr (stdout is kept for a command's JSON result).
    stdout = sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
    app = build_app(settings, access_log=stdout.buffer, **kwargs)
    serve_app(app, settings.serving.serving_host, settings.serving.serving_port,
              grace=settings.serving.shutdown_grace_seconds)


def uvicorn_options(app, grace: float) -> dict:
    """How uvicorn runs the app: uvloop, this package's HTTP protocol (limits, one write per
    answer), our own access log, and none of what costs per request and serves nothing here:
    the proxy-headers middleware (no field of the access log or the app reads the client's
    address) and the ``server`` header (it only tells scanners the server's name)."""
    return {"log_level": "warning", "access_log": False, "loop": "uvloop",
            "http": limited_protocol(app), "lifespan": "on", "proxy_headers": False,
            "server_header": False, "timeout_graceful_shutdown": drain_seconds(grace)}


def serve_app(app, host: str, port: int, *, grace: float = 20.0) -> None:
    """Serve ``app`` in this (main) thread until SIGINT or SIGTERM, draining as :func:`serve`
    says; the server's own process (GC tuned for serving)."""
    app.tune_gc = True  # a process of its own
    uvicorn.run(app, host=host, port=port, **uvicorn_options(app, grace))


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, grace: float = 10.0,
            keep_alive: float = 5.0):
    """Run ``app`` on loopback in a background thread; yields the base URL. On leaving, the
    server drains as after SIGTERM (``grace``: see :func:`serve`). An idle connection is
    closed ``keep_alive`` seconds after its last answer (uvicorn's default, as `serve`)."""
    sock = socket.socket()
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, **uvicorn_options(app, grace),
                            timeout_keep_alive=keep_alive)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=grace + 10)
        sock.close()
