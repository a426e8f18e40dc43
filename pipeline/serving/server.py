"""Start the server: load the champion from MLflow, bind, serve."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from pipeline.settings import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings, *, alias: str = "champion", with_feast: bool = True):
    from pipeline import registry
    from pipeline.serving.app import create_app
    from pipeline.serving.model import SegmentPredictor

    store = None
    if with_feast:
        from pipeline.features import feature_store

        store = feature_store(settings)
    predictor = SegmentPredictor(settings.model_name, feature_store=store,
                                 feature_service=settings.feature_service,
                                 max_batch_rows=settings.max_batch_rows)
    model, version = registry.download_model(settings, alias)
    predictor.load(model, version)
    token = settings.serving_token.get_secret_value() if settings.serving_token else None
    return create_app(predictor, token=token, max_body_bytes=settings.max_body_bytes)


def serve(settings: Settings, *, alias: str = "champion") -> None:
    import uvicorn

    app = build_app(settings, alias=alias)
    uvicorn.run(app, host=settings.serving_host, port=settings.serving_port, log_level="warning",
                access_log=False)


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0):
    """Run ``app`` on loopback in a background thread; yields the base URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False)
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
        thread.join(timeout=10)
        sock.close()
