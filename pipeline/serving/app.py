"""The inference server as a lean ASGI app.

Open Inference Protocol v2 REST (health, server and model metadata, infer, with the binary
tensor extension for inputs), KServe v1 (list, ready, predict), Prometheus ``/metrics``, an
OpenAPI document, and the admin API the rollout controller drives (load, traffic, promote,
drop, analysis window).

Why not Starlette or the kserve SDK: the single-row request is ~60 µs of work, so per-request
framework cost decides the throughput (benchmarks/serving/RESULTS.md). This app routes with
dict lookups (:class:`~pipeline.serving.routes.Router`, compiled once from the route table that
the OpenAPI document derives from too), parses with orjson, scores on the event loop when the
batch is small, and moves only lookups and big batches to a thread.

Every error is a typed :class:`ServingError` turned into JSON ``{"error": ...}`` with its
status; bad input never becomes a 500.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from pipeline.core.settings import token_problem
from pipeline.model.artifact import ArtifactError
from pipeline.serving.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    TooBusy,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    brief,
)
from pipeline.serving.model import MODES, Prediction, SegmentService
from pipeline.serving.openapi import document
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.protocol import BINARY_DTYPES, OUTPUTS
from pipeline.serving.routes import ROUTES, Route, Router
from pipeline.serving.transport import CLIENT_GONE, QueueBudget

log = logging.getLogger("pipeline.serving")

JSON_TYPES = (b"application/json",)
INLINE_ROWS = 256  # bigger batches, their answers and every lookup by id run in a worker thread
INLINE_BODY = 64 * 1024  # bigger bodies are parsed in a worker thread: probes go on meanwhile
#: Aliases and versions the admin API loads: MLflow's alias characters, a positive version.
ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
VERSION = re.compile(r"[1-9][0-9]{0,17}")
REQUEST_ID = re.compile(rb"[!-~]{1,64}")

# loader(version=None, alias=None) -> (SegmentModel, version); blocking (MLflow download)
Loader = Callable[..., tuple]


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kmeans_requests_total", "Requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("kmeans_request_latency_seconds", "Request latency", ["route"],
                                 registry=r, buckets=(.0002, .0005, .001, .002, .005, .01, .025,
                                                      .05, .1, .25, 1))
        self.assignments = Counter("kmeans_assignments_total", "Assignments per cluster",
                                   ["model_version", "cluster"], registry=r)
        self.distance = Histogram("kmeans_distance", "Distance to the assigned centroid",
                                  ["model_version"], registry=r,
                                  buckets=(.25, .5, 1, 1.5, 2, 3, 4, 6, 8, 12))
        self.ood = Counter("kmeans_ood_total", "Out-of-distribution assignments",
                           ["model_version"], registry=r)
        self.stale = Counter("kmeans_stale_features_total",
                             "Rows whose online features are older than the feature view's TTL",
                             registry=r)
        self.unknown = Counter("kmeans_unknown_entities_total",
                               "Ids without online features", registry=r)
        self.inflight = Gauge("kmeans_inflight_requests", "Requests in flight", registry=r)
        self.limited = Counter("kmeans_rejected_busy_total",
                               "Requests refused at the concurrency limit", registry=r)
        self.closed = Counter("kmeans_connections_closed_total",
                              "Connections the server closed, by reason (write_timeout: the "
                              "client read none of its answers in time)", ["reason"],
                              registry=r)
        self.lookup_ids = Counter("kmeans_lookup_ids_total",
                                  "Customer ids read from the online store (a lookup whose "
                                  "client went stops reading)", registry=r)
        self.slot = Gauge("kmeans_model_version", "Version loaded in each slot (-1: empty)",
                          ["slot"], registry=r)
        self.weight = Gauge("kmeans_canary_weight_percent", "Share of keys sent to the canary",
                            ["mode"], registry=r)
        self._children: dict = {}

    def child(self, metric, *labels):
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def observe(self, pred: Prediction) -> None:
        if len(pred) == 1 and pred.error is None:  # the common case, kept cheap
            version = pred.model_version[0]
            self.child(self.assignments, version, str(int(pred.cluster[0]))).inc()
            distance = float(pred.distance[0])
            if math.isfinite(distance):  # a non-finite figure would poison the sum for good
                self.child(self.distance, version).observe(distance)
            if pred.ood[0]:
                self.child(self.ood, version).inc()
            if pred.stale is not None and pred.stale[0]:
                self.stale.inc()
            return
        ok = pred.ok()
        if pred.error is not None:
            self.unknown.inc(int((~ok).sum()))
        if pred.stale is not None and pred.stale.any():
            self.stale.inc(int(pred.stale.sum()))
        versions = pred.model_version
        single = len(pred.versions_used) == 1
        for v in pred.versions_used:
            mine = ok if single else ok & (np.asarray(versions) == v)
            clusters, dist, ood = pred.cluster[mine], pred.distance[mine], pred.ood[mine]
            if len(clusters) == 1:
                self.child(self.assignments, v, str(int(clusters[0]))).inc()
            else:
                for c, n in zip(*np.unique(clusters, return_counts=True), strict=True):
                    self.child(self.assignments, v, str(int(c))).inc(int(n))
            hist = self.child(self.distance, v)
            sample = dist[:256]  # a sample per request keeps big batches cheap
            for d in sample[np.isfinite(sample)].tolist():
                hist.observe(d)
            n_ood = int(ood.sum())
            if n_ood:
                self.child(self.ood, v).inc(n_ood)

    def routing(self, describe: dict) -> None:
        for slot in ("stable", "canary"):
            version = describe[slot] or ""
            self.slot.labels(slot).set(int(version) if version.isdigit() else -1)
        for mode in MODES:
            self.weight.labels(mode).set(describe["weight"] if describe["canary"]
                                         and mode == describe["mode"] else 0)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    params: Mapping[str, str]  # path parameters; shared between requests, read-only
    body: bytes = b""
    id: str = ""  # the request id (X-Request-Id, or the server's own)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A :class:`Route` bound to the app's handler: what the router hands each request."""

    name: str
    handler: Callable[[Request], Awaitable[tuple]]
    methods: tuple[str, ...]
    guard: str | None
    limited: bool


class InferenceApp:
    """ASGI callable. ``loader`` fetches a version from the registry for the admin API."""

    def __init__(self, service: SegmentService, *, token: str | None = None,
                 admin_token: str | None = None, max_body_bytes: int = 4 * 1024 * 1024,
                 max_concurrency: int = 256, loader: Loader | None = None,
                 access_log: BinaryIO | None = None, tune_gc: bool = False,
                 server_version: str = "0.1.0", body_timeout: float = 30.0,
                 max_admin_concurrency: int = 4, max_header_bytes: int = 32 * 1024,
                 header_timeout: float = 10.0, prediction_log: PredictionLog | None = None,
                 max_pipelined: int = 16, max_queued: int = 1024,
                 max_write_buffer: int = 256 * 1024, write_timeout: float = 30.0):
        for what, value in (("token", token), ("admin_token", admin_token)):
            problem = None if value is None else token_problem(value)
            if problem:  # an empty token must not read as "no token": that opens the route
                raise ValueError(f"{what} {problem}")
        if token is not None and token == admin_token:
            raise ValueError("admin_token equals token: every prediction client could drive "
                             "the admin API; use two different tokens")
        self.service = service
        self.token = token.encode() if token is not None else None
        self.admin_token = admin_token.encode() if admin_token is not None else None
        for what, seconds in (("body_timeout", body_timeout),
                              ("header_timeout", header_timeout),
                              ("write_timeout", write_timeout)):
            if not 0 < seconds < math.inf:
                raise ValueError(f"{what}={seconds!r} should be a number of seconds > 0")
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.max_admin_concurrency = max_admin_concurrency
        self.body_timeout = body_timeout
        # Enforced by the HTTP protocol, before this app sees a request (server.running/serve).
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.max_pipelined = max_pipelined  # requests one connection may read ahead
        self.max_queued = max_queued  # requests read ahead, waiting, server-wide
        self.max_write_buffer = max_write_buffer  # unread answer bytes per connection
        self.write_timeout = write_timeout
        self.queue_budget: QueueBudget | None = None  # the protocol's (limited_protocol)
        self.loader = loader
        # One JSON line per request, written straight to a binary stream (no logging module:
        # a LogRecord per request costs more than scoring the row); flushed twice a second.
        self.access_log = access_log
        self.tune_gc = tune_gc  # for a server process of its own (see _tune_gc)
        self.server_version = server_version
        self.metrics = Metrics()
        # Sampled predictions, queued here and written to the lake by a thread of its own.
        self.prediction_log = prediction_log
        if prediction_log is not None:
            for collector in prediction_log.collectors:
                self.metrics.registry.register(collector)
        self.inflight = 0
        self.admin_inflight = 0
        self._ids = itertools.count(1)
        self._boot = os.urandom(4).hex()
        self._load_lock = asyncio.Lock()
        self.router = Router(ROUTES, self._bind)
        self._openapi = orjson.dumps(document(service.name))  # built once, served as is
        self.metrics.routing(service.routing.describe())
        self.metrics.inflight.set_function(lambda: self.inflight)
        service.ids_read = self.metrics.lookup_ids.inc

    def _bind(self, route: Route) -> Endpoint:
        return Endpoint(route.name, getattr(self, route.handler), route.methods, route.guard,
                        route.limited)

    # ---- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            flusher = None
            stream = self.access_log
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if self.tune_gc:
                        _tune_gc()
                    if stream is not None:
                        flusher = asyncio.create_task(_flush_every(stream, 0.5))
                    if self.prediction_log is not None:
                        self.prediction_log.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if flusher is not None and stream is not None:
                        flusher.cancel()
                        stream.flush()
                    if self.prediction_log is not None:  # what is queued is written
                        await asyncio.to_thread(self.prediction_log.close)
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope, receive, send):
        start = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id")
        # Echoed in a response header and the access log: printable ASCII only, or our own.
        request_id = (given.decode() if given is not None and REQUEST_ID.fullmatch(given)
                      else f"{self._boot}-{next(self._ids)}")
        method, path = scope["method"], scope["path"]
        route_name, budget = "unknown", ""
        versions: tuple[str, ...] = ()
        extra: tuple[tuple[bytes, bytes], ...] = ()
        try:
            route, params = self.router.resolve(path)
            route_name = route.name
            if method not in route.methods and not (method == "HEAD" and "GET" in route.methods):
                raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: "
                                       f"{', '.join(route.methods)}")
            if route.guard:
                self._check_token(headers, route.guard)
            request = Request(method, path, headers, params, id=request_id)
            if method == "POST":
                # Before a slot is taken: a client that stalls its body holds no slot, and
                # gets a 408 after body_timeout.
                request.body = await self._read_body(headers, receive)
            if route.limited:
                # The admin API has a budget of its own: a flood of predictions cannot refuse
                # the rollout controller's rollback, nor the other way round.
                budget = "admin" if route.guard == "admin" else "predict"
                self._take_slot(budget)
            status, body, ctype, versions = await route.handler(request)
        except ServingError as err:
            status, body, ctype = err.status, orjson.dumps({"error": str(err)}), JSON_TYPES[0]
            extra = tuple((k.encode(), v.encode()) for k, v in err.headers.items())
        except asyncio.CancelledError as err:
            # The client went before its answer (the protocol cancels the task: 499, nothing
            # to send), or the shutdown's grace period ran out (503, the client may retry).
            status, ctype = (499 if CLIENT_GONE in err.args else 503), JSON_TYPES[0]
            body = orjson.dumps({"error": "the server is shutting down; retry on another "
                                          "replica"})
            extra = ((b"connection", b"close"),)
        except Exception:  # a fault of ours, not of the input: logged, counted, JSON
            log.exception("request %s on %s failed", request_id, path)
            status, ctype, extra = 500, JSON_TYPES[0], ()
            body = orjson.dumps({"error": f"internal error (request id {request_id})"})
        finally:
            if budget == "predict":
                self.inflight -= 1
            elif budget == "admin":
                self.admin_inflight -= 1
        if status != 499:
            try:
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", ctype),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"x-request-id", request_id.encode()), *extra]})
                await send({"type": "http.response.body",
                            "body": b"" if method == "HEAD" else body})
            except asyncio.CancelledError:  # gone while its answer waited to be written
                status = 499
        elapsed = time.perf_counter() - start
        m = self.metrics
        m.child(m.requests, route_name, str(status)).inc()
        m.child(m.latency, route_name).observe(elapsed)
        for v in versions:
            w = self.service.stats.get(v)
            w.requests += 1
            w.errors += status >= 500
            w.latency_ms.append(elapsed * 1000)
        if self.access_log is not None:
            self.access_log.write(orjson.dumps(
                {"ts": time.time(), "request_id": request_id, "method": method, "path": path,
                 "route": route_name, "status": status, "ms": round(elapsed * 1000, 3),
                 "versions": versions}, option=orjson.OPT_APPEND_NEWLINE))

    def _take_slot(self, budget: str) -> None:
        if budget == "admin":
            if self.admin_inflight >= self.max_admin_concurrency:
                self.metrics.limited.inc()
                raise TooBusy(f"the admin API is at its limit of {self.max_admin_concurrency} "
                              "concurrent requests; retry after a moment")
            self.admin_inflight += 1
            return
        if self.inflight >= self.max_concurrency:
            self.metrics.limited.inc()
            raise TooBusy(f"the server is at its limit of {self.max_concurrency} "
                          "concurrent requests; retry after a moment")
        self.inflight += 1

    def transport_refused(self, status: int, reason: str) -> None:
        """A request the HTTP protocol refused before this app saw it (its head too big or
        too slow, :mod:`pipeline.serving.transport`): counted and access-logged."""
        m = self.metrics
        m.child(m.requests, "unknown", str(status)).inc()
        if self.access_log is not None:
            self.access_log.write(orjson.dumps(
                {"ts": time.time(), "request_id": f"{self._boot}-{next(self._ids)}",
                 "method": None, "path": None, "route": "unknown", "status": status, "ms": None,
                 "versions": [], "error": reason}, option=orjson.OPT_APPEND_NEWLINE))

    def connection_closed(self, reason: str) -> None:
        """A connection the HTTP protocol closed (its client read no answer in time)."""
        self.metrics.child(self.metrics.closed, reason).inc()

    def _check_token(self, headers: dict, guard: str) -> None:
        expected = self.token if guard == "predict" else self.admin_token
        if expected is None:
            if guard == "predict":
                return
            raise Forbidden("the admin API is disabled: start the server with KMEANS_ADMIN_TOKEN")
        header = headers.get(b"authorization", b"")
        if header[:7].lower() != b"bearer ":
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(header[7:].strip(), expected):
            raise Forbidden(f"the bearer token is not valid for "
                            f"{'predictions' if guard == 'predict' else 'the admin API'}")

    async def _read_body(self, headers: dict, receive) -> bytes:
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        # No content-type is accepted: standard v2 clients (tritonclient) send none.
        binary = b"inference-header-content-length" in headers
        if ctype and ctype not in JSON_TYPES and not (
                binary and ctype == b"application/octet-stream"):
            raise UnsupportedMediaType(
                f"content-type {brief(ctype.decode('latin-1'))} is not supported; send "
                "application/json (or application/octet-stream with "
                "Inference-Header-Content-Length for binary tensors)")
        length = headers.get(b"content-length", b"")
        if length.isdigit() and (len(length) > 18 or int(length) > self.max_body_bytes):
            declared = length.decode() if len(length) <= 18 else f"{length[:18].decode()}…"
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of "
                                  f"{self.max_body_bytes} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):  # no task: a timer on this one
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise InvalidInput("the client disconnected before sending the whole "
                                           "body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise PayloadTooLarge(f"body exceeds the limit of {self.max_body_bytes} "
                                              "bytes")
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            promised = f" of {length.decode()}" if length.isdigit() else ""
            raise RequestTimeout(f"the body did not arrive within {self.body_timeout:g} s "
                                 f"(KMEANS_BODY_TIMEOUT_SECONDS): {size}{promised} bytes "
                                 "received") from None

    # ---- health and metadata -------------------------------------------------------------
    async def live(self, request):
        return _json({"live": True})

    async def live_v1(self, request):
        return _json({"status": "alive"})

    async def ready(self, request):
        ready = self.service.ready
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request):
        return _json({"name": "kmeans-platform", "version": self.server_version,
                      "extensions": ["binary_tensor_data_input", "model_versions"]})

    def _check_model(self, params: Mapping[str, str]) -> None:
        if params["name"] != self.service.name:
            raise ModelNotFound(f"model {brief(params['name'])} is unknown; this server serves "
                                f"[{self.service.name!r}]")
        version = params.get("version")
        if version is not None and version not in self._loaded():
            raise ModelNotFound(f"version {brief(version)} of {self.service.name!r} is not "
                                f"loaded; loaded: {self._loaded()}")

    def _loaded(self) -> list[str]:
        r = self.service.routing
        return [s.version for s in (r.stable, r.canary) if s is not None]

    async def model_metadata(self, request):
        self._check_model(request.params)
        r = self.service.routing
        slot = r.stable
        if request.params.get("version") and r.canary and \
                r.canary.version == request.params["version"]:
            slot = r.canary
        model = slot.model if slot else None
        width = len(model.feature_names) if model else -1
        return _json({
            "name": self.service.name, "versions": self._loaded(), "platform": "kmeans-platform",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, width]},
                       {"name": "customer_id", "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": n, "datatype": t, "shape": [-1]} for n, t in OUTPUTS.items()],
            "parameters": {"feature_names": model.feature_names if model else [],
                           "k": model.k if model else None,
                           "cluster_ids": model.cluster_ids.tolist() if model else [],
                           "routing": r.describe()}})

    async def model_ready(self, request):
        self._check_model(request.params)
        ready = self.service.ready
        return _json({"name": self.service.name, "ready": ready}, 200 if ready else 503)

    async def list_models(self, request):
        return _json({"models": [self.service.name]})

    async def prometheus(self, request):
        return 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode(), ()

    async def openapi(self, request):
        return 200, self._openapi, JSON_TYPES[0], ()

    # ---- predictions ---------------------------------------------------------------------
    async def infer(self, request):
        self._check_model(request.params)
        if len(request.body) > INLINE_BODY:
            body, tensors = await asyncio.to_thread(_parse_v2, request, self.service)
        else:
            body, tensors = _parse_v2(request, self.service)
        wanted = _requested(body.get("outputs"))  # refused before any scoring
        pred = await self._score(*tensors, version=request.params.get("version"),
                                 request_id=request.id)
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
            return await asyncio.to_thread(_json, reply, 200, pred.versions_used)
        return _json(reply, versions=pred.versions_used)

    async def predict_v1(self, request):
        self._check_model(request.params)
        if len(request.body) > INLINE_BODY:
            kind, data = await asyncio.to_thread(self._parse_v1, request.body)
        else:
            kind, data = self._parse_v1(request.body)
        pred = await self._score(kind, data, request_id=request.id)
        if len(pred) > INLINE_ROWS:  # one dict per row: built and serialised off the loop
            return await asyncio.to_thread(
                lambda: _json({"predictions": pred.rows()}, versions=pred.versions_used))
        return _json({"predictions": pred.rows()}, versions=pred.versions_used)

    def _parse_v1(self, raw: bytes) -> tuple[str, object]:
        """The v1 body's instances as (kind, data): customer ids, or a float feature matrix."""
        body = _loads(raw, constants=True)
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            raise InvalidInput("body must be an object with 'instances': a list of feature "
                               "vectors, of {feature: value} objects, or of {'customer_id': id}")
        instances = body["instances"]
        if not instances:
            raise InvalidInput("instances is empty; send at least 1 row")
        self.service.check_rows(len(instances))
        if all(isinstance(r, dict) and set(r) == {"customer_id"} for r in instances):
            self.service.check_ids(len(instances))
            return "customer_id", [r["customer_id"] for r in instances]
        if all(isinstance(r, dict) for r in instances):
            instances = self._rows_from_objects(instances)
        return "features", _float_matrix(instances, None)

    def _rows_from_objects(self, instances: list[dict]) -> list[list]:
        names = self.service.feature_names
        allowed = set(names)
        for i, row in enumerate(instances):
            unknown = sorted(set(row) - allowed)
            if unknown:
                raise InvalidInput(f"instance {i} has unknown features {brief(unknown, 200)}; "
                                   f"allowed: {names}")
        return [[row.get(n) for n in names] for row in instances]

    async def _score(self, kind: str, data, version: str | None = None,
                     request_id: str = "") -> Prediction:
        service = self.service
        ids = None
        if kind == "customer_id":
            service.check_ids(len(data))  # before a look at each id
            ids = _int_list(data)
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

    # ---- admin (the rollout controller's API) -------------------------------------------
    async def admin_state(self, request):
        s = self.service
        return _json({"routing": s.routing.describe(), "loaded": self._loaded(),
                      "inflight": self.inflight, "max_concurrency": self.max_concurrency,
                      "admin_inflight": self.admin_inflight,
                      "max_admin_concurrency": self.max_admin_concurrency,
                      "queued": None if self.queue_budget is None else self.queue_budget.queued,
                      "max_queued": self.max_queued,
                      "window": {v: w.summary() for v, w in s.stats.windows.items()}})

    async def admin_load(self, request):
        body = _object(request.body, "load", "{'version': '3'} or {'alias': 'challenger'}, "
                                             "optional 'slot': 'canary' (default) or 'stable'")
        unknown = sorted(set(body) - {"version", "alias", "slot"})
        if unknown:
            raise InvalidInput(f"the load body has unknown keys {brief(unknown)}; allowed: "
                               "'version' or 'alias', and 'slot'")
        version, alias = body.get("version"), body.get("alias")
        if (version is None) == (alias is None):
            raise InvalidInput("send exactly one of 'version' and 'alias'")
        if version is not None:
            if type(version) is int and version > 0:
                version = str(version)
            if not isinstance(version, str) or not VERSION.fullmatch(version):
                raise InvalidInput(f"version {brief(version)} is not a registry version; "
                                   "allowed: a positive integer like 3 or '3'")
        if alias is not None and (not isinstance(alias, str) or not ALIAS.fullmatch(alias)):
            raise InvalidInput(f"alias {brief(alias)} is not a model alias; allowed: a letter "
                               "then up to 62 letters, digits, '_' or '-' (like 'challenger')")
        slot = body.get("slot", "canary")
        if slot not in ("canary", "stable"):
            raise InvalidInput(f"slot {brief(slot)} is not known; use 'canary' or 'stable'")
        if self.loader is None:
            raise Conflict("this server has no model registry to load from")

        async with self._load_lock:  # one download at a time; serving goes on meanwhile
            try:
                model, got = await asyncio.to_thread(self.loader, version=version, alias=alias)
            except LookupError as err:
                raise ModelNotFound(str(err)) from err
            except ArtifactError as err:
                raise Unprocessable(f"version {version or alias} was not loaded: {err}") from err
            except RecursionError as err:  # a JSON file nested deeper than Python reads
                raise Unprocessable(f"version {version or alias} was not loaded: its "
                                    "model.json or checksums.json is nested too deeply to "
                                    "read") from err
            routing = self.service.load(model, got, slot)
        return self._routing_reply(routing)

    async def admin_traffic(self, request):
        body = _object(request.body, "traffic", "{'weight': 10, 'mode': 'canary' or 'shadow'}")
        weight = body.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidInput(f"weight must be a number in [0, 100], got {brief(weight)}")
        mode = body.get("mode")
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"mode {brief(mode)} is not known; use one of {list(MODES)}")
        return self._routing_reply(self.service.set_traffic(float(weight), mode))

    async def admin_promote(self, request):
        body = _object(request.body or b"{}", "promote", "{'version': '3'}")
        return self._routing_reply(self.service.promote(_opt_str(body, "version")))

    async def admin_drop(self, request):
        body = _object(request.body or b"{}", "drop", "{'version': '3'}")
        return self._routing_reply(self.service.drop(_opt_str(body, "version")))

    async def admin_window(self, request):
        return _json({"routing": self.service.routing.describe(),
                      "versions": self.service.open_window()})

    def _routing_reply(self, routing):
        describe = routing.describe()
        self.metrics.routing(describe)
        log.info("routing: %s", describe)
        return _json({"routing": describe})


async def _flush_every(stream: BinaryIO, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        stream.flush()


def _tune_gc() -> None:
    """Garbage collection for a serving process, measured at 8,000 req/s open loop on one
    core: p99 9.9 ms with the defaults, 3.6 ms with this. Everything loaded at startup (models,
    Feast, MLflow modules) lives as long as the process, so it is frozen out of the collector's
    sight; and the young generation is collected every 100,000 allocations instead of 700
    (each request allocates a few hundred short-lived objects, nearly all freed by reference
    counting)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


# ---- parsing helpers ---------------------------------------------------------------------

def _json(payload, status: int = 200, versions=()) -> tuple:
    return (status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
            JSON_TYPES[0], versions)


#: The bare tokens Python's ``json`` and Triton's JSON write for non-finite floats.
_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _loads(raw: bytes, *, constants: bool = False):
    """The JSON body. With ``constants`` (the inference bodies), also what stock v2 clients
    send for non-finite floats (``mlserver infer``, tritonclient in JSON mode: Python's
    ``json.dumps``): the bare token ``NaN`` is a missing value, like null; ``Infinity``,
    ``-Infinity`` and a number beyond float64 parse as infinite and the row check refuses them
    naming the row and the feature. orjson parses every body; only a body it refuses that holds
    such a token goes through Python's ``json`` (so valid JSON pays nothing)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if constants and (b"NaN" in raw or b"Infinity" in raw or "infinity" in str(err)):
            return _loads_with_constants(raw)
        raise InvalidInput(f"body is not valid JSON: {err}") from err


def _parse_int(text: str) -> int | float:
    """An integer as orjson reads it: beyond 64 bits, a float (infinite beyond float64)."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def _loads_with_constants(raw: bytes):
    """Python's JSON with ``NaN``/``Infinity``/``-Infinity``, as strict as orjson otherwise:
    UTF-8 only, and nothing orjson could not write back (a lone surrogate in a string)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_CONSTANTS.__getitem__,
                          parse_int=_parse_int)
        orjson.dumps(body)  # refuses what orjson refuses to write: lone surrogates, huge ints
    except (ValueError, TypeError, RecursionError) as err:  # orjson's errors are TypeErrors
        raise InvalidInput(f"body is not valid JSON (bare NaN and Infinity are accepted as "
                           f"numbers): {err}") from err
    return body


def _object(raw: bytes, what: str, example: str) -> dict:
    body = _loads(raw)
    if not isinstance(body, dict):
        raise InvalidInput(f"the {what} body must be a JSON object like {example}")
    return body


def _opt_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{key} must be a string, got {brief(value)}")
    return str(value)


def _requested(wanted) -> list[str] | None:
    """The outputs a v2 request asks for, each once, in the order asked; None: all. More
    entries than there are outputs, or a name that is not an output, is refused: an answer
    never grows with the number of entries."""
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise InvalidInput("outputs must be a list of objects like {'name': 'cluster'}")
    if len(wanted) > len(OUTPUTS):
        raise InvalidInput(f"outputs lists {len(wanted)} entries; at most {len(OUTPUTS)} "
                           f"allowed, each output at most once: {list(OUTPUTS)}")
    names: list[str] = []
    unknown: list[str] = []
    for o in wanted:
        name = o.get("name")
        if isinstance(name, str) and name in OUTPUTS:
            if name not in names:  # asked twice, answered once
                names.append(name)
        else:
            unknown.append(brief(name, 40))
    if unknown:
        raise InvalidInput(f"requested outputs [{', '.join(unknown)}] are not produced; "
                           f"available: {list(OUTPUTS)}")
    return names


def _parse_v2(request: Request, service: SegmentService) -> tuple[dict, tuple[str, object]]:
    """The v2 body and its one input as (kind, data): JSON, or the binary tensor extension.
    The declared shape is checked against the model and the batch limit first, in Python
    integers, so no array is ever sized from what a client declares."""
    raw = request.body
    header_len = request.headers.get(b"inference-header-content-length")
    blob = b""
    if header_len is not None:
        # At most 18 digits: int() of thousands of digits raises, and no body is that long.
        if not (header_len.isdigit() and len(header_len) <= 18) or int(header_len) > len(raw):
            raise InvalidInput(f"Inference-Header-Content-Length "
                               f"{brief(header_len.decode('latin-1'))} must be an integer no "
                               f"larger than the body ({len(raw)} bytes)")
        raw, blob = raw[:int(header_len)], raw[int(header_len):]
    body = _loads(raw, constants=True)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) \
            or len(body["inputs"]) != 1:
        raise InvalidInput("body must be an object with 'inputs': a list holding one tensor, "
                           "named 'features' (FP32/FP64, shape [n, d]) or 'customer_id' "
                           "(INT64, shape [n])")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    name, dtype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name not in ("features", "customer_id"):
        raise InvalidInput(f"input name {brief(name)} is not known; use 'features' or "
                           "'customer_id'")
    if not isinstance(shape, list) or not all(
            type(s) is int and s >= 0 for s in shape):
        raise InvalidInput(f"shape {brief(shape)} must be a list of non-negative integers")
    allowed = ("INT64", "INT32") if name == "customer_id" else ("FP32", "FP64")
    if dtype not in allowed:
        raise InvalidInput(f"{name} has datatype {brief(dtype)}; allowed: "
                           f"{', '.join(allowed)}")
    if name == "features":
        service.check_shape(shape)
    else:
        if len(shape) not in (1, 2) or shape[1:] not in ([], [1]):
            raise InvalidInput(f"customer_id has shape {brief(shape)}; allowed: [n] or [n, 1]")
        service.check_ids(shape[0], shape)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    data: list | np.ndarray | None
    if size is not None:
        data = _binary_tensor(blob, size, dtype, shape)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidInput("data must be a (flat or nested) list of values")
    if name == "customer_id":
        ids = _int_list(data if isinstance(data, list) else data.tolist(), nested_ok=True)
        if shape not in ([len(ids)], [len(ids), 1]):
            raise InvalidInput(f"shape {shape} does not match {len(ids)} customer ids")
        return body, ("customer_id", ids)
    return body, ("features", _float_matrix(data, shape))


def _binary_tensor(blob: bytes, size, dtype: str, shape: list[int]) -> np.ndarray:
    if type(size) is not int or size != len(blob):
        raise InvalidInput(f"binary_data_size {brief(size)} does not match the {len(blob)} bytes "
                           "after the JSON header (one binary input is supported)")
    item = np.dtype(BINARY_DTYPES[dtype]).itemsize
    if size != math.prod(shape) * item:  # Python integers: a declared shape cannot overflow
        raise InvalidInput(f"binary_data_size {size} does not match shape {shape} of {dtype} "
                           f"({item} bytes each)")
    arr = np.frombuffer(blob, dtype=BINARY_DTYPES[dtype]).reshape(shape)
    return arr.astype(np.float64) if dtype.startswith("FP") else arr


def _float_matrix(data, shape: list[int] | None) -> np.ndarray:
    """Feature rows (numbers, null for missing) as a float64 [n, d] array, NaN where null."""
    if isinstance(data, np.ndarray):
        x = data
    else:
        flat = data
        if data and type(data[0]) is list:
            width = len(data[0])
            if any(type(r) is not list or len(r) != width for r in data):
                raise InvalidInput("feature rows must all be lists of the same length")
            flat = [v for r in data for v in r]
        for v in flat:
            t = type(v)
            if t is not float and t is not int and v is not None:
                raise InvalidInput(f"feature values must be numbers or null, got {brief(v)} "
                                   f"({t.__name__})")
        try:
            x = np.array(data, dtype=np.float64)  # None becomes NaN
        except (OverflowError, ValueError, TypeError) as err:
            raise InvalidInput(f"feature values do not fit a 64-bit float: {err}") from err
    if shape is None:
        if x.ndim != 2:
            raise InvalidInput("instances must be a list of feature rows")
        return x
    if x.ndim == 1:
        if len(shape) != 2 or shape[0] * shape[1] != x.size:
            raise InvalidInput(f"shape {shape} does not match {x.size} values")
        return x.reshape(shape)
    if list(x.shape) != shape:
        raise InvalidInput(f"shape {shape} does not match data of shape {list(x.shape)}")
    return x


def _int_list(values, nested_ok: bool = False) -> list[int]:
    if nested_ok and values and all(type(v) is list and len(v) == 1 for v in values):
        values = [v[0] for v in values]
    out = []
    for v in values:
        if type(v) is not int:
            raise InvalidInput(f"customer_id must be an integer, got {brief(v)} "
                               f"({type(v).__name__})")
        if not -(2**63) <= v < 2**63:
            raise InvalidInput(f"customer_id {v} is outside the 64-bit integer range")
        out.append(v)
    return out
