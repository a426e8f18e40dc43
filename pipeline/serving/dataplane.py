"""The data plane: what the server answers about its model and the predictions it makes.

Health and metadata (Open Inference Protocol v2 and KServe v1), v2 infer and v1 predict,
``/metrics`` and the OpenAPI document. Each handler takes a parsed
:class:`~pipeline.serving.asgi.Request` (body read, limits and token checked by
:class:`~pipeline.serving.asgi.AsgiCore`) and returns ``(status, body, content type,
versions)``; the bodies are read by :mod:`pipeline.serving.codec`, the rows scored by the
:class:`~pipeline.serving.model.SegmentService`. Small batches are scored on the event loop;
lookups by id, big batches and their answers move to a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.serving.asgi import JSON_TYPES, json_reply
from pipeline.serving.codec import int_list, parse_v1, parse_v2, requested_outputs
from pipeline.serving.errors import InvalidInput, ModelNotFound, brief
from pipeline.serving.metrics import Metrics
from pipeline.serving.model import Prediction, SegmentService
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.protocol import OUTPUTS

INLINE_ROWS = 256  # bigger batches, their answers and every lookup by id run in a worker thread
INLINE_BODY = 64 * 1024  # bigger bodies are parsed in a worker thread: probes go on meanwhile


def output_names(pred: Prediction, wanted: list[str] | None) -> list[str]:
    """The outputs of an answer: every output the prediction has (``stale`` and ``error``
    only when it has them), or those ``wanted``, which must be among them."""
    names = [n for n in OUTPUTS if n not in ("stale", "error")]
    if pred.stale is not None:
        names.append("stale")
    if pred.error is not None:
        names.append("error")
    if wanted is not None:
        absent = [n for n in wanted if n not in names]
        if absent:
            raise InvalidInput(f"requested outputs {absent} are not produced for this "
                               f"input; available: {names}")
        names = wanted
    return names


def loaded_versions(service: SegmentService) -> list[str]:
    """The versions ``service`` holds, stable first."""
    r = service.routing
    return [s.version for s in (r.stable, r.canary) if s is not None]


class DataPlane:
    """The v2 and v1 handlers of ``service``; ``openapi`` is the document served as is."""

    def __init__(self, service: SegmentService, metrics: Metrics, *, openapi: bytes,
                 server_version: str = "0.1.0", prediction_log: PredictionLog | None = None):
        self.service = service
        self.metrics = metrics
        self.openapi_document = openapi
        self.server_version = server_version
        self.prediction_log = prediction_log

    # ---- health and metadata -------------------------------------------------------------
    async def live(self, request):
        return json_reply({"live": True})

    async def live_v1(self, request):
        return json_reply({"status": "alive"})

    async def ready(self, request):
        ready = self.service.ready
        return json_reply({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request):
        return json_reply(self.server_info())

    def server_info(self) -> dict:
        """The server's metadata (v2): name, version, extensions."""
        return {"name": "kmeans-platform", "version": self.server_version,
                "extensions": ["binary_tensor_data_input", "model_versions"]}

    def check_model(self, params: Mapping[str, str]) -> None:
        if params["name"] != self.service.name:
            raise ModelNotFound(f"model {brief(params['name'])} is unknown; this server serves "
                                f"[{self.service.name!r}]")
        version = params.get("version")
        if version is not None and version not in self._loaded():
            raise ModelNotFound(f"version {brief(version)} of {self.service.name!r} is not "
                                f"loaded; loaded: {self._loaded()}")

    def _loaded(self) -> list[str]:
        return loaded_versions(self.service)

    async def model_metadata(self, request):
        return json_reply(self.metadata(request.params))

    def metadata(self, params: Mapping[str, str]) -> dict:
        """The model's metadata (v2), of the version ``params`` names or the stable one."""
        self.check_model(params)
        r = self.service.routing
        slot = r.stable
        if params.get("version") and r.canary and r.canary.version == params["version"]:
            slot = r.canary
        model = slot.model if slot else None
        width = len(model.feature_names) if model else -1
        return {
            "name": self.service.name, "versions": self._loaded(), "platform": "kmeans-platform",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, width]},
                       {"name": "customer_id", "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": t, "shape": [-1]} for n, t in OUTPUTS.items()],
            "parameters": {"feature_names": model.feature_names if model else [],
                           "k": model.k if model else None,
                           "cluster_ids": model.cluster_ids.tolist() if model else [],
                           "routing": r.describe()}}

    async def model_ready(self, request):
        self.check_model(request.params)
        ready = self.service.ready
        return json_reply({"name": self.service.name, "ready": ready}, 200 if ready else 503)

    async def list_models(self, request):
        return json_reply({"models": [self.service.name]})

    async def prometheus(self, request):
        return 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode(), ()

    async def openapi(self, request):
        return 200, self.openapi_document, JSON_TYPES[0], ()

    # ---- predictions ---------------------------------------------------------------------
    async def infer(self, request):
        self.check_model(request.params)
        if len(request.body) > INLINE_BODY:
            body, tensors = await asyncio.to_thread(parse_v2, request, self.service)
        else:
            body, tensors = parse_v2(request, self.service)
        wanted = requested_outputs(body.get("outputs"))  # refused before any scoring
        pred = await self.score(*tensors, version=request.params.get("version"),
                                request_id=request.id)
        names = output_names(pred, wanted)
        n = len(pred)
        outputs = []
        for name in names:
            data = getattr(pred, name)
            outputs.append({"name": name, "datatype": OUTPUTS[name], "shape": [n], "data": data})
        reply = {"model_name": self.service.name,
                 "model_version": ",".join(pred.versions_used), "outputs": outputs}
        if isinstance(body.get("id"), str):
            reply["id"] = body["id"]
        if n > INLINE_ROWS:  # a big answer is serialised off the event loop: probes go on
            return await asyncio.to_thread(json_reply, reply, 200, pred.versions_used)
        return json_reply(reply, versions=pred.versions_used)

    async def predict_v1(self, request):
        self.check_model(request.params)
        if len(request.body) > INLINE_BODY:
            kind, data = await asyncio.to_thread(parse_v1, request.body, self.service)
        else:
            kind, data = parse_v1(request.body, self.service)
        pred = await self.score(kind, data, request_id=request.id)
        if len(pred) > INLINE_ROWS:  # one dict per row: built and serialised off the loop
            return await asyncio.to_thread(
                lambda: json_reply({"predictions": pred.rows()}, versions=pred.versions_used))
        return json_reply({"predictions": pred.rows()}, versions=pred.versions_used)

    async def score(self, kind: str, data, version: str | None = None,
                    request_id: str = "") -> Prediction:
        """``data`` (customer ids or a feature matrix) scored by the version its routing
        picks (or ``version``), counted in the metrics and sampled to the prediction log; for
        REST and gRPC alike."""
        service = self.service
        ids = None
        if kind == "customer_id":
            service.check_ids(len(data))  # before a look at each id
            ids = int_list(data)
            # Off the event loop: a store read must not stall the other requests. When the
            # client goes, the task is cancelled: a lookup not started yet is dropped from the
            # pool's queue, and a running one stops at its next chunk of ids.
            stop = threading.Event()
            try:
                pred = await asyncio.to_thread(service.predict_entities, ids, version=version,
                                               stop=stop)
            except asyncio.CancelledError:
                stop.set()
                raise
        elif len(data) <= INLINE_ROWS:
            pred = service.predict_vectors(data, version=version)
        else:
            pred = await asyncio.to_thread(service.predict_vectors, data, version=version)
        self.metrics.observe(pred)
        if self.prediction_log is not None:
            self.prediction_log.record(request_id, data if ids is None else pred.features,
                                       pred, None if pred.error is None else pred.ok(), ids)
        return pred
