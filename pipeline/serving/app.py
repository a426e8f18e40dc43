"""The ASGI app: Open Inference Protocol v2 REST, KServe v1, health, Prometheus metrics.

Every error is a typed :class:`ServingError` turned into JSON ``{"error": ...}`` with its status;
bad input never becomes a 500.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.serving.errors import (Forbidden, InvalidInput, ModelNotFound, PayloadTooLarge,
                                     ServingError, Unauthorized, UnsupportedMediaType)
from pipeline.serving.model import Prediction, SegmentPredictor

log = logging.getLogger("pipeline.serving.access")

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("kmeans_requests_total", "Requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("kmeans_request_latency_seconds", "Request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, 1))
        self.assignments = Counter("kmeans_assignments_total", "Assignments per cluster",
                                   ["model_version", "cluster"], registry=self.registry)
        self.distance = Histogram("kmeans_distance", "Distance to the assigned centroid",
                                  ["model_version"], registry=self.registry,
                                  buckets=(.25, .5, 1, 1.5, 2, 3, 4, 6, 8, 12))
        self.ood = Counter("kmeans_ood_total", "Out-of-distribution assignments",
                           ["model_version"], registry=self.registry)

    def observe(self, pred: Prediction) -> None:
        ok = [i for i, e in enumerate(pred.error) if not e]
        if not ok:
            return
        counts = np.bincount(np.asarray(pred.cluster)[ok])
        for cluster in np.flatnonzero(counts):
            self.assignments.labels(pred.version, str(cluster)).inc(int(counts[cluster]))
        hist = self.distance.labels(pred.version)
        for i in ok[:256]:  # a sample per request keeps big batches cheap
            hist.observe(pred.distance[i])
        n_ood = sum(pred.ood[i] for i in ok)
        if n_ood:
            self.ood.labels(pred.version).inc(n_ood)


def _reject_constant(name: str):
    raise InvalidInput(f"JSON constant {name} is not allowed; send finite numbers or null")


def create_app(predictor: SegmentPredictor, *, token: str | None = None,
               max_body_bytes: int = 4 * 1024 * 1024) -> Starlette:
    """Build the server around one predictor. ``token`` guards predictions when set."""
    metrics = Metrics()

    def check_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            raise Forbidden("the bearer token is not valid for predictions")

    def check_model(name: str) -> None:
        if name != predictor.name:
            raise ModelNotFound(f"model {name!r} is unknown; this server serves "
                                f"[{predictor.name!r}]")

    async def read_json(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise UnsupportedMediaType(f"content-type {ctype or '(none)'!r} is not supported; "
                                       "send application/json")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of "
                                  f"{max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise PayloadTooLarge(f"body exceeds the limit of {max_body_bytes} bytes")
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInput(f"body is not valid JSON: {err}") from err
        except RecursionError as err:
            raise InvalidInput("body is nested too deeply") from err

    def route(name: str, handler, methods=("GET",), guarded=False):
        async def endpoint(request: Request):
            start = time.perf_counter()
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            try:
                if guarded:
                    check_token(request)
                response = await handler(request)
            except ServingError as err:
                response = JSONResponse({"error": str(err)}, status_code=err.status)
            except Exception:  # a fault of ours, not of the input: logged, counted, JSON
                log.exception("request %s on %s failed", request_id, name)
                response = JSONResponse({"error": f"internal error (request id {request_id})"},
                                        status_code=500)
            response.headers["x-request-id"] = request_id
            elapsed = time.perf_counter() - start
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(elapsed)
            log.info(json.dumps({"request_id": request_id, "route": name,
                                 "status": response.status_code,
                                 "ms": round(elapsed * 1000, 3)}))
            return response
        return endpoint

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        return JSONResponse({"ready": predictor.ready}, status_code=200 if predictor.ready else 503)

    async def model_meta(request):
        check_model(request.path_params["name"])
        model = predictor.model
        width = len(model.feature_names) if model else -1
        return JSONResponse({
            "name": predictor.name, "versions": [predictor.version] if predictor.version else [],
            "platform": "kmeans-platform",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, width]},
                       {"name": "customer_id", "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": t, "shape": [-1]} for n, t in OUTPUTS],
            "parameters": {"feature_names": model.feature_names if model else [],
                           "k": model.k if model else None}})

    async def model_ready(request):
        check_model(request.path_params["name"])
        return JSONResponse({"name": predictor.name, "ready": predictor.ready},
                            status_code=200 if predictor.ready else 503)

    async def infer_v2(request):
        check_model(request.path_params["name"])
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) \
                or len(body["inputs"]) != 1:
            raise InvalidInput("body must be an object with 'inputs': a list holding one tensor, "
                               "named 'features' (FP32/FP64, shape [n, d]) or 'customer_id' "
                               "(INT64, shape [n])")
        # Off the event loop: an online-store lookup must not stall health probes.
        pred = await run_in_threadpool(_predict_v2, predictor, body["inputs"][0])
        metrics.observe(pred)
        outputs = [{"name": "cluster", "datatype": "INT64", "shape": [len(pred.cluster)],
                    "data": pred.cluster},
                   {"name": "distance", "datatype": "FP64", "shape": [len(pred.cluster)],
                    "data": pred.distance},
                   {"name": "runner_up", "datatype": "INT64", "shape": [len(pred.cluster)],
                    "data": pred.runner_up},
                   {"name": "margin", "datatype": "FP64", "shape": [len(pred.cluster)],
                    "data": pred.margin},
                   {"name": "ood", "datatype": "BOOL", "shape": [len(pred.cluster)],
                    "data": pred.ood}]
        if any(pred.error):
            outputs.append({"name": "error", "datatype": "BYTES", "shape": [len(pred.error)],
                            "data": pred.error})
        reply = {"model_name": predictor.name, "model_version": pred.version, "outputs": outputs}
        if isinstance(body.get("id"), str):
            reply["id"] = body["id"]
        return JSONResponse(reply)

    async def predict_v1(request):
        name = request.path_params["name_verb"]
        if not name.endswith(":predict"):
            raise ModelNotFound(f"unknown route {request.url.path!r}; use "
                                f"/v1/models/{predictor.name}:predict")
        check_model(name.removesuffix(":predict"))
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise InvalidInput("body must be an object with 'instances': a list of feature "
                               "vectors, of {feature: value} objects, or of {'customer_id': id}")
        pred = await run_in_threadpool(_predict_v1, predictor, body["instances"])
        metrics.observe(pred)
        return JSONResponse({"predictions": pred.rows()})

    async def prometheus(request):
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", route("live", live)),
        Route("/v2/health/ready", route("ready", ready)),
        Route("/v2/models/{name}", route("model_metadata", model_meta)),
        Route("/v2/models/{name}/ready", route("model_ready", model_ready)),
        Route("/v2/models/{name}/infer", route("infer", infer_v2, guarded=True),
              methods=["POST"]),
        Route("/v1/models/{name_verb}", route("predict", predict_v1, guarded=True),
              methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    app = Starlette(routes=routes)
    app.state.predictor = predictor
    app.state.metrics = metrics
    return app


OUTPUTS = [("cluster", "INT64"), ("distance", "FP64"), ("runner_up", "INT64"),
           ("margin", "FP64"), ("ood", "BOOL")]


def _predict_v2(predictor: SegmentPredictor, tensor) -> Prediction:
    if not isinstance(tensor, dict):
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    name, dtype, shape, data = (tensor.get(k) for k in ("name", "datatype", "shape", "data"))
    if name not in ("features", "customer_id"):
        raise InvalidInput(f"input name {name!r} is not known; use 'features' or 'customer_id'")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise InvalidInput(f"shape {shape!r} must be a list of non-negative integers")
    if not isinstance(data, list):
        raise InvalidInput("data must be a (flat or nested) list of values")
    if name == "customer_id":
        if dtype not in ("INT64", "INT32"):
            raise InvalidInput(f"customer_id has datatype {dtype!r}; allowed: INT64, INT32")
        ids = _int_list(np.ravel(np.asarray(data, dtype=object)).tolist())
        if [len(ids)] != shape:
            raise InvalidInput(f"shape {shape} does not match {len(ids)} customer ids")
        return predictor.predict_entities(ids)
    if dtype not in ("FP32", "FP64"):
        raise InvalidInput(f"features have datatype {dtype!r}; allowed: FP32, FP64")
    x = _float_array(data)
    if x.ndim != 1 and list(x.shape) != shape:
        raise InvalidInput(f"shape {shape} does not match data of shape {list(x.shape)}")
    if x.ndim == 1:
        if len(shape) != 2 or shape[0] * shape[1] != x.size:
            raise InvalidInput(f"shape {shape} does not match {x.size} values")
        x = x.reshape(shape)
    return predictor.predict_vectors(x)


def _predict_v1(predictor: SegmentPredictor, instances: list) -> Prediction:
    if not instances:
        raise InvalidInput("instances is empty; send at least 1 row")
    if all(isinstance(r, dict) and set(r) == {"customer_id"} for r in instances):
        return predictor.predict_entities(_int_list([r["customer_id"] for r in instances]))
    model = predictor.model
    if model is not None and all(isinstance(r, dict) for r in instances):
        names = model.feature_names
        for i, row in enumerate(instances):
            unknown = sorted(set(row) - set(names))
            if unknown:
                raise InvalidInput(f"instance {i} has unknown features {unknown}; allowed: {names}")
        instances = [[row.get(n) for n in names] for row in instances]
    return predictor.predict_vectors(_float_array(instances))


def _float_array(data) -> np.ndarray:
    """Feature rows (numbers, null for missing) as float64, NaN where null."""
    try:
        arr = np.asarray(data, dtype=object)
    except ValueError:
        arr = None
    flat = None if arr is None else np.ravel(arr).tolist()
    if flat is None or any(isinstance(v, list) for v in flat):
        raise InvalidInput("feature rows must all have the same length")
    wrong = [v for v in flat
             if isinstance(v, bool) or not (v is None or isinstance(v, (int, float)))]
    if wrong:
        raise InvalidInput(f"feature values must be numbers or null, got {wrong[0]!r} "
                           f"({type(wrong[0]).__name__})")
    try:
        return np.where(arr == None, np.nan, arr).astype(np.float64)  # noqa: E711
    except OverflowError as err:
        raise InvalidInput("a feature value is too large for a 64-bit float") from err


def _int_list(values) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidInput(f"customer_id must be an integer, got {v!r} ({type(v).__name__})")
        if not -(2**63) <= v < 2**63:
            raise InvalidInput(f"customer_id {v} is outside the 64-bit integer range")
        out.append(v)
    return out
