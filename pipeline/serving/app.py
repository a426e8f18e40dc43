"""The inference server as a lean ASGI app: the HTTP core and the handlers put together.

Open Inference Protocol v2 REST (health, server and model metadata, infer, with the binary
tensor extension for inputs), KServe v1 (list, ready, predict), Prometheus ``/metrics``, an
OpenAPI document, and the admin API the rollout controller drives (load, traffic, promote,
drop, analysis window).

Three parts, each with one reason to change, as MLServer separates its REST plumbing from its
data plane: :mod:`pipeline.serving.asgi` (reading requests, limits, auth, access log, metrics,
errors to statuses), :mod:`pipeline.serving.dataplane` (what the server answers and predicts)
and :mod:`pipeline.serving.admin` (the rollout controller's API). The route table
(:data:`~pipeline.serving.routes.ROUTES`) names each route's handler; this module binds the
names to the handlers.

Every error is a typed :class:`~pipeline.serving.errors.ServingError` turned into JSON
``{"error": ...}`` with its status; bad input never becomes a 500.
"""

from __future__ import annotations

from typing import BinaryIO

import orjson

from pipeline.core.settings import ServingSettings
from pipeline.serving.admin import AdminApi, Loader
from pipeline.serving.asgi import AsgiCore, Handler
from pipeline.serving.dataplane import DataPlane
from pipeline.serving.grpc_v2 import GrpcServer
from pipeline.serving.metrics import Metrics
from pipeline.serving.model import SegmentService
from pipeline.serving.openapi import document
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.routes import ROUTES

__all__ = ["InferenceApp", "Loader", "Metrics"]


class InferenceApp(AsgiCore):
    """ASGI callable serving ``service`` with the tokens and limits of ``serving`` (None: the
    settings' defaults, no tokens). ``loader`` fetches a version from the registry for the
    admin API; ``prediction_log`` samples the predictions to the lake; ``tune_gc`` is for a
    server process of its own.

    Examples
    --------
    >>> app = InferenceApp(service, ServingSettings(max_body_bytes=64 * 1024))  # doctest: +SKIP
    """

    def __init__(self, service: SegmentService, serving: ServingSettings | None = None, *,
                 loader: Loader | None = None, access_log: BinaryIO | None = None,
                 tune_gc: bool = False, server_version: str = "0.1.0",
                 prediction_log: PredictionLog | None = None):
        super().__init__(service, ServingSettings() if serving is None else serving,
                         access_log=access_log, tune_gc=tune_gc, prediction_log=prediction_log)
        self.loader = loader
        self.server_version = server_version
        self._openapi = orjson.dumps(document(service.name))  # built once, served as is
        self.dataplane = DataPlane(service, self.metrics, openapi=self._openapi,
                                   server_version=server_version, prediction_log=prediction_log)
        self.admin = AdminApi(self, loader)
        #: Each handler the route table names, by name: the data plane's or the admin API's.
        self.handlers = self._handlers()
        self.serve_routes(self.handlers)
        self.metrics.routing(service.routing.describe())
        service.ids_read = self.metrics.lookup_ids.inc
        #: The Open Inference Protocol over gRPC on ``grpc_port``, when it is set: started and
        #: stopped with the app's lifespan (:attr:`GrpcServer.port` is the port bound).
        self.grpc = (GrpcServer(self, self.dataplane, self.serving.serving_host,
                                self.serving.grpc_port)
                     if self.serving.grpc_port is not None else None)

    async def started(self) -> None:
        if self.grpc is not None:
            await self.grpc.start()

    async def stopping(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace=min(self.serving.shutdown_grace_seconds, 5.0))

    def _handlers(self) -> dict[str, Handler]:
        """Each handler the route table names, from the data plane or the admin API."""
        handlers: dict[str, Handler] = {}
        for route in ROUTES:
            for part in (self.dataplane, self.admin):
                handler = getattr(part, route.handler, None)
                if handler is not None:
                    handlers[route.handler] = handler
                    break
        return handlers
