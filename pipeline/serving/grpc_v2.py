"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on a port of its
own beside REST, as KServe's and Triton's gRPC clients speak it.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer (and gRPC's
standard health check, for Kubernetes' ``grpc`` probes), with inputs
in ``contents`` or ``raw_input_contents`` and outputs in ``raw_output_contents`` (Triton's
layout: numbers little-endian, BYTES as a 4-byte length before each element). Every call goes
through what REST requests go through, so neither path is a copy of the other:

- the same bearer tokens, read from the ``authorization`` metadata (ModelInfer needs the
  prediction token when one is set; a missing one is UNAUTHENTICATED, a wrong one
  PERMISSION_DENIED);
- the same concurrency budget (``max_concurrency``; probes exempt), batch limits, input checks
  (:func:`pipeline.serving.codec.check_input`) and range checks;
- the same scoring, canary routing, metrics, per-version windows, prediction log and access
  log (:meth:`DataPlane.score`, :meth:`AsgiCore.account`: a call counts with the HTTP status
  of its code, under routes named ``grpc_*``);
- the same limits on what a client sends: a message over ``max_body_bytes`` is refused by gRPC
  itself (RESOURCE_EXHAUSTED), bytes that are not a message are INVALID_ARGUMENT, and a
  connection lives at most ``grpc_max_connection_age_seconds`` plus ``body_timeout_seconds``
  of grace, so a stream that stalls mid-message is cut then while the others go on.

Every refusal carries the same message as its REST twin, with the gRPC code of its status.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from pipeline.serving import v2proto
from pipeline.serving.asgi import AsgiCore
from pipeline.serving.codec import binary_tensor, check_input, input_data, requested_outputs
from pipeline.serving.dataplane import INLINE_BODY, INLINE_ROWS, DataPlane, output_names
from pipeline.serving.errors import InvalidInput, ServingError
from pipeline.serving.protocol import BINARY_DTYPES, OUTPUTS

log = logging.getLogger("pipeline.serving.grpc")

#: HTTP status of a ServingError -> the gRPC code it is answered with.
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
         405: grpc.StatusCode.UNIMPLEMENTED, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
         409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
         499: grpc.StatusCode.CANCELLED, 500: grpc.StatusCode.INTERNAL,
         503: grpc.StatusCode.UNAVAILABLE}

#: Where each input datatype's values are in ``InferTensorContents``.
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
            "INT32": "int_contents"}
#: Output datatype -> the NumPy type of its raw little-endian bytes.
RAW_TYPES = {"INT64": "<i8", "INT32": "<i4", "FP64": "<f8", "FP32": "<f4", "BOOL": "?"}

Call = Callable[[bytes, dict], Awaitable[tuple[bytes, tuple[str, ...]]]]


def infer_input(msg, service) -> tuple[str, object]:
    """A ModelInferRequest's one input as (kind, data), checked as REST checks its JSON."""
    if len(msg.inputs) != 1:
        raise InvalidInput(f"the request has {len(msg.inputs)} inputs; send one tensor, named "
                           "'features' (FP32/FP64, shape [n, d]) or 'customer_id' (INT64, "
                           "shape [n])")
    tensor = msg.inputs[0]
    _, _, shape = check_input(tensor.name, tensor.datatype, list(tensor.shape), service)
    if msg.raw_input_contents:
        if len(msg.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidInput(f"raw_input_contents holds {len(msg.raw_input_contents)} "
                               "tensors and contents is "
                               f"{'set' if tensor.HasField('contents') else 'empty'}; send the "
                               "one input in exactly one of them")
        data = binary_tensor(msg.raw_input_contents[0], tensor.datatype, shape,
                             "raw_input_contents[0] size")
    else:
        field = CONTENTS[tensor.datatype]
        values = getattr(tensor.contents, field)
        if len(values) != math.prod(shape):
            raise InvalidInput(f"{tensor.name} has {len(values)} values in contents.{field}; "
                               f"shape {shape} needs {math.prod(shape)}")
        data = np.array(values, dtype=BINARY_DTYPES[tensor.datatype]).reshape(shape)
        if tensor.datatype.startswith("FP"):
            data = data.astype(np.float64)
    return input_data(tensor.name, data, shape)


def raw_output(values, datatype: str) -> bytes:
    """An output's values as ``raw_output_contents`` bytes (BYTES: each element's UTF-8 with
    its length before it, as a 4-byte little-endian integer; a missing value is empty)."""
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = b"" if value is None else str(value).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.asarray(values, dtype=RAW_TYPES[datatype]).tobytes()


class GrpcServer:
    """``dataplane`` over gRPC, with the tokens, budget, metrics and access log of ``app`` (the
    :class:`~pipeline.serving.app.InferenceApp` that starts and stops it with its lifespan),
    on ``host:port`` (0: a free port, :attr:`port` after :meth:`start`)."""

    def __init__(self, app: AsgiCore, dataplane: DataPlane, host: str, port: int):
        self.app = app
        self.host, self.requested_port = host, port
        self.port: int | None = None
        self.server: grpc.aio.Server | None = None
        serving = app.serving
        self.options = [
            ("grpc.max_receive_message_length", serving.max_body_bytes),
            ("grpc.max_concurrent_streams", serving.max_pipelined_requests * 8),
            ("grpc.max_connection_age_ms", int(serving.grpc_max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(serving.body_timeout_seconds * 1000)),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server
        ]
        #: method -> (route name, guard, limited, call)
        self.methods: dict[str, tuple[str, str | None, bool, Call]] = {
            "ServerLive": ("grpc_live", None, False, self._live),
            "ServerReady": ("grpc_ready", None, False, self._ready),
            "ModelReady": ("grpc_model_ready", None, True, self._model_ready),
            "ServerMetadata": ("grpc_server_metadata", None, True, self._server_metadata),
            "ModelMetadata": ("grpc_model_metadata", None, True, self._model_metadata),
            "ModelInfer": ("grpc_infer", "predict", True, self._infer),
        }
        self.dataplane = dataplane

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> int:
        server = grpc.aio.server(options=self.options)
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._wrap(name, *spec))
                    for name, spec in self.methods.items()}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(v2proto.SERVICE, handlers),
             grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                 "Check": grpc.unary_unary_rpc_method_handler(
                     self._health, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                     response_serializer=health_pb2.HealthCheckResponse.SerializeToString)})))
        try:
            self.port = server.add_insecure_port(f"{self.host}:{self.requested_port}")
        except RuntimeError as err:
            raise OSError(f"gRPC cannot listen on {self.host}:{self.requested_port} ({err}); "
                          "is the port in use? (KMEANS_GRPC_PORT)") from err
        await server.start()
        self.server = server
        log.info("gRPC (Open Inference Protocol v2) on %s:%s", self.host, self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    # ---- one call -------------------------------------------------------------------------
    def _wrap(self, method: str, route: str, guard: str | None, limited: bool, call: Call):
        app = self.app
        path = f"/{v2proto.SERVICE}/{method}"

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            start = time.perf_counter()
            headers = {k.encode(): v if isinstance(v, bytes) else v.encode()
                       for k, v in context.invocation_metadata() or ()}
            request_id = app.request_id(headers.get(b"x-request-id"))
            budget, status = "", 200
            versions: tuple[str, ...] = ()
            problem: ServingError | None = None
            try:
                if guard:
                    app.check_token(headers, guard)
                if limited:
                    app.take_slot("predict")
                    budget = "predict"
                reply, versions = await call(raw, {"request_id": request_id})
            except ServingError as err:
                problem, status = err, err.status
            except asyncio.CancelledError:
                status = 499
                raise
            except Exception:  # a fault of ours, not of the input: logged, counted
                log.exception("gRPC call %s (%s) failed", method, request_id)
                problem, status = ServingError(f"internal error (request id {request_id})"), 500
            finally:
                app.release_slot(budget)
                app.account(route, status, time.perf_counter() - start, versions, request_id,
                            "GRPC", path)
            if problem is not None:
                await context.abort(CODES.get(status, grpc.StatusCode.UNKNOWN), str(problem))
            context.set_trailing_metadata((("x-request-id", request_id),))
            return reply

        return handle

    async def _health(self, request, context: grpc.aio.ServicerContext):
        """gRPC's standard health check (``grpc.health.v1.Health/Check``), which Kubernetes'
        ``grpc`` probes call: SERVING once a model is loaded, for the server ("") and for the
        inference service; unknown services are NOT_FOUND."""
        if request.service not in ("", v2proto.SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service[:80]!r}; this server has "
                                f"'' and {v2proto.SERVICE!r}")
        status = (health_pb2.HealthCheckResponse.SERVING if self.app.service.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=status)

    # ---- the methods ----------------------------------------------------------------------
    async def _live(self, raw: bytes, meta: dict):
        return v2proto.ServerLiveResponse(live=True).SerializeToString(), ()

    async def _ready(self, raw: bytes, meta: dict):
        ready = self.app.service.ready
        return v2proto.ServerReadyResponse(ready=ready).SerializeToString(), ()

    async def _model_ready(self, raw: bytes, meta: dict):
        msg = _parse(v2proto.ModelReadyRequest, raw)
        self.dataplane.check_model(_params(msg.name, msg.version))
        ready = self.app.service.ready
        return v2proto.ModelReadyResponse(ready=ready).SerializeToString(), ()

    async def _server_metadata(self, raw: bytes, meta: dict):
        info = self.dataplane.server_info()
        return v2proto.ServerMetadataResponse(**info).SerializeToString(), ()

    async def _model_metadata(self, raw: bytes, meta: dict):
        msg = _parse(v2proto.ModelMetadataRequest, raw)
        info = self.dataplane.metadata(_params(msg.name, msg.version))
        reply = v2proto.ModelMetadataResponse(name=info["name"], versions=info["versions"],
                                              platform=info["platform"])
        for key in ("inputs", "outputs"):
            for tensor in info[key]:
                getattr(reply, key).add(**tensor)
        return reply.SerializeToString(), ()

    async def _infer(self, raw: bytes, meta: dict):
        service = self.app.service
        if len(raw) > INLINE_BODY:  # big messages are read off the event loop
            msg, (kind, data) = await asyncio.to_thread(self._read_infer, raw)
        else:
            msg, (kind, data) = self._read_infer(raw)
        wanted = requested_outputs([{"name": o.name} for o in msg.outputs] or None)
        pred = await self.dataplane.score(kind, data, version=msg.model_version or None,
                                          request_id=meta["request_id"])
        names = output_names(pred, wanted)

        def build() -> bytes:
            reply = v2proto.ModelInferResponse(model_name=service.name, id=msg.id,
                                               model_version=",".join(pred.versions_used))
            n = len(pred)
            for name in names:
                reply.outputs.add(name=name, datatype=OUTPUTS[name], shape=[n])
                reply.raw_output_contents.append(raw_output(getattr(pred, name), OUTPUTS[name]))
            return reply.SerializeToString()

        body = await asyncio.to_thread(build) if len(pred) > INLINE_ROWS else build()
        return body, pred.versions_used

    def _read_infer(self, raw: bytes):
        msg = _parse(v2proto.ModelInferRequest, raw)
        self.dataplane.check_model(_params(msg.model_name, msg.model_version))
        return msg, infer_input(msg, self.app.service)


def _parse(cls, raw: bytes):
    try:
        return cls.FromString(raw)
    except DecodeError as err:
        raise InvalidInput(f"the message is not a valid {cls.DESCRIPTOR.name} ({err}); "
                           f"{len(raw)} bytes received") from None


def _params(name: str, version: str) -> dict[str, str]:
    """A request's model name and version as the REST path parameters (an empty version:
    any loaded one)."""
    return {"name": name, "version": version} if version else {"name": name}
