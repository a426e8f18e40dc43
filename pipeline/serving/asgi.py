"""The server's HTTP plumbing as a lean ASGI core, apart from what it serves.

:class:`AsgiCore` reads the request (its body against a size and a time limit), checks the
bearer token a route asks for, takes a slot of the predict or the admin budget, calls the
route's handler, maps a typed :class:`ServingError` to its status with a JSON ``{"error":
...}`` body (bad input never becomes a 500), answers, and counts the request in the metrics
and the access log. It runs the lifespan too (GC tuning, the access log's flusher, the
prediction log's thread). The handlers (:mod:`pipeline.serving.dataplane`,
:mod:`pipeline.serving.admin`) get a parsed :class:`Request` and return ``(status, body,
content type, versions)``; the route table (:data:`~pipeline.serving.routes.ROUTES`) binds
them, and :class:`~pipeline.serving.app.InferenceApp` puts the two together.

Why not Starlette or the kserve SDK: the single-row request is ~60 µs of work, so per-request
framework cost decides the throughput (benchmarks/serving/RESULTS.md). This core routes with
dict lookups (:class:`~pipeline.serving.routes.Router`, compiled once from the route table that
the OpenAPI document derives from too) and parses with orjson.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import io
import itertools
import logging
import math
import os
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import orjson
from pydantic import SecretStr

from pipeline.core.settings import ServingSettings, token_problem
from pipeline.serving.errors import (
    Forbidden,
    InvalidInput,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    TooBusy,
    Unauthorized,
    UnsupportedMediaType,
    brief,
)
from pipeline.serving.metrics import Metrics
from pipeline.serving.model import SegmentService
from pipeline.serving.predlog import PredictionLog
from pipeline.serving.routes import ROUTES, Router
from pipeline.serving.transport import QueueBudget, client_went

log = logging.getLogger("pipeline.serving")

JSON_TYPES = (b"application/json",)
REQUEST_ID = re.compile(rb"[!-~]{1,64}")


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


#: A route's handler: the parsed request in, ``(status, body, content type, versions)`` out.
Handler = Callable[[Request], Awaitable[tuple]]


class AsgiCore:
    """ASGI callable: the HTTP plumbing of the server, with no handler of its own.

    A subclass binds the route table to its handlers with :meth:`serve_routes`.
    """

    router: Router[Endpoint]

    def __init__(self, service: SegmentService, serving: ServingSettings, *,
                 access_log: BinaryIO | None = None, tune_gc: bool = False,
                 prediction_log: PredictionLog | None = None):
        token = _secret(serving.serving_token)
        admin_token = _secret(serving.admin_token)
        # Checked again here, though the section validates them: a section built with
        # model_construct, or changed after it was built, is not validated.
        for what, value in (("token", token), ("admin_token", admin_token)):
            problem = None if value is None else token_problem(value)
            if problem:  # an empty token must not read as "no token": that opens the route
                raise ValueError(f"{what} {problem}")
        if token is not None and token == admin_token:
            raise ValueError("admin_token equals token: every prediction client could drive "
                             "the admin API; use two different tokens")
        self.service = service
        self.serving = serving
        self.token = token.encode() if token is not None else None
        self.admin_token = admin_token.encode() if admin_token is not None else None
        for what, seconds in (("body_timeout_seconds", serving.body_timeout_seconds),
                              ("header_timeout_seconds", serving.header_timeout_seconds),
                              ("write_timeout_seconds", serving.write_timeout_seconds)):
            if not 0 < seconds < math.inf:
                raise ValueError(f"{what}={seconds!r} should be a number of seconds > 0")
        self.max_body_bytes = serving.max_body_bytes
        self.max_concurrency = serving.max_concurrency
        self.max_admin_concurrency = serving.admin_max_concurrency
        self.body_timeout = serving.body_timeout_seconds
        # Enforced by the HTTP protocol, before this app sees a request (server.running/serve,
        # transport.limited_protocol reads them from the app under these names).
        self.max_header_bytes = serving.max_header_bytes
        self.header_timeout = serving.header_timeout_seconds
        # requests one connection may read ahead
        self.max_pipelined = serving.max_pipelined_requests
        self.max_queued = serving.max_queued_requests  # requests read ahead, waiting, server-wide
        # unread answer bytes per connection
        self.max_write_buffer = serving.max_write_buffer_bytes
        self.write_timeout = serving.write_timeout_seconds
        self.queue_budget: QueueBudget | None = None  # the protocol's (limited_protocol)
        # One JSON line per request, written straight to a binary stream (no logging module:
        # a LogRecord per request costs more than scoring the row); flushed twice a second.
        self.access_log = None if access_log is None else buffered(access_log)
        self.tune_gc = tune_gc  # for a server process of its own (see tune_gc_for_serving)
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
        self.metrics.inflight.set_function(lambda: self.inflight)

    def serve_routes(self, handlers: Mapping[str, Handler]) -> None:
        """Route each entry of the route table to ``handlers[route.handler]``."""
        missing = sorted({r.handler for r in ROUTES} - set(handlers))
        if missing:
            raise ValueError(f"the route table names handlers {missing} that are not given")
        self.router = Router(ROUTES, lambda route: Endpoint(
            route.name, handlers[route.handler], route.methods, route.guard, route.limited))

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
                        tune_gc_for_serving()
                    if stream is not None:
                        flusher = asyncio.create_task(flush_every(stream, 0.5))
                    if self.prediction_log is not None:
                        self.prediction_log.start()
                    try:
                        await self.started()
                    except Exception as err:  # noqa: BLE001 - told to the server, which exits
                        await send({"type": "lifespan.startup.failed", "message": str(err)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.stopping()
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
        # Echoed in a response header and the access log: printable ASCII only, or our own.
        request_id = self.request_id(headers.get(b"x-request-id"))
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
                self.check_token(headers, route.guard)
            request = Request(method, path, headers, params, id=request_id)
            if method == "POST":
                # Before a slot is taken: a client that stalls its body holds no slot, and
                # gets a 408 after body_timeout.
                request.body = await self._read_body(headers, receive)
            if route.limited:
                # The admin API has a budget of its own: a flood of predictions cannot refuse
                # the rollout controller's rollback, nor the other way round.
                wanted = "admin" if route.guard == "admin" else "predict"
                self.take_slot(wanted)
                budget = wanted  # released in `finally` only once taken
            status, body, ctype, versions = await route.handler(request)
        except ServingError as err:
            status, body, ctype = err.status, orjson.dumps({"error": str(err)}), JSON_TYPES[0]
            extra = tuple((k.encode(), v.encode()) for k, v in err.headers.items())
        except asyncio.CancelledError as err:
            # The client went before its answer (the protocol cancels the task: 499, nothing
            # to send), or the shutdown's grace period ran out (503, the client may retry).
            status, ctype = (499 if client_went(err) else 503), JSON_TYPES[0]
            body = orjson.dumps({"error": "the server is shutting down; retry on another "
                                          "replica"})
            extra = ((b"connection", b"close"),)
        except Exception:  # a fault of ours, not of the input: logged, counted, JSON
            log.exception("request %s on %s failed", request_id, path)
            status, ctype, extra = 500, JSON_TYPES[0], ()
            body = orjson.dumps({"error": f"internal error (request id {request_id})"})
        finally:
            self.release_slot(budget)
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
        self.account(route_name, status, time.perf_counter() - start, versions, request_id,
                     method, path)

    def account(self, route_name: str, status: int, elapsed: float, versions: tuple[str, ...],
                request_id: str, method: str, path: str) -> None:
        """One answered request in the metrics, each version's window and the access log
        (REST and gRPC alike; a gRPC answer counts with the HTTP status of its code)."""
        m = self.metrics
        m.requests.inc((route_name, str(status)))
        m.latency.observe((route_name,), elapsed)
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

    def request_id(self, given: bytes | None) -> str:
        """The client's request id when it is printable ASCII (at most 64), else our own."""
        return (given.decode() if given is not None and REQUEST_ID.fullmatch(given)
                else f"{self._boot}-{next(self._ids)}")

    def release_slot(self, budget: str) -> None:
        if budget == "predict":
            self.inflight -= 1
        elif budget == "admin":
            self.admin_inflight -= 1

    async def started(self) -> None:
        """Called once the lifespan has started (a subclass starts what serves beside HTTP)."""

    async def stopping(self) -> None:
        """Called when the lifespan shuts down, after HTTP has drained."""

    def take_slot(self, budget: str) -> None:
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
        self.metrics.requests.inc(("unknown", str(status)))
        if self.access_log is not None:
            self.access_log.write(orjson.dumps(
                {"ts": time.time(), "request_id": f"{self._boot}-{next(self._ids)}",
                 "method": None, "path": None, "route": "unknown", "status": status, "ms": None,
                 "versions": [], "error": reason}, option=orjson.OPT_APPEND_NEWLINE))

    def connection_closed(self, reason: str) -> None:
        """A connection the HTTP protocol closed (its client read no answer in time)."""
        self.metrics.closed.inc((reason,))

    def check_token(self, headers: dict, guard: str) -> None:
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
        # The body's deadline, as asyncio.timeout would keep it but paid for only when the
        # body is not there yet: a receive() that answers at once (a small body, in the
        # packet of its headers) needs no timer. Measured on uvloop, a one-row infer in-process:
        # 53.2 us with asyncio.timeout, 49.0 with a timer per request, 45.4 without one.
        task: asyncio.Task | None = None
        timer: asyncio.TimerHandle | None = None
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            if task is not None:
                task.cancel()

        try:
            while True:
                pending = receive()
                try:
                    step = pending.send(None)
                except StopIteration as done:  # answered without waiting
                    message = done.value
                else:
                    if timer is None:
                        task = asyncio.current_task()
                        timer = asyncio.get_running_loop().call_later(self.body_timeout,
                                                                      expire)
                    message = await _resume(pending, step)
                if message["type"] == "http.disconnect":
                    raise InvalidInput("the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds the limit of {self.max_body_bytes} "
                                          "bytes")
                chunks.append(chunk)
                if not message.get("more_body"):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            # ours (the deadline), unless the task was cancelled for another reason as well
            # (the client went, shutdown): then that cancellation goes on
            if not expired or task is None or task.uncancel() > 0:
                raise
            promised = f" of {length.decode()}" if length.isdigit() else ""
            raise RequestTimeout(f"the body did not arrive within {self.body_timeout:g} s "
                                 f"(KMEANS_BODY_TIMEOUT_SECONDS): {size}{promised} bytes "
                                 "received") from None
        finally:
            if timer is not None:
                timer.cancel()


@types.coroutine
def _resume(coro, step):
    """Await the rest of ``coro``, which has been stepped once and yielded ``step``: what
    the task sends or throws goes on to it, as ``await`` would have passed it."""
    while True:
        try:
            sent = yield step
        except BaseException as exc:  # noqa: BLE001 - cancellation included: passed on
            try:
                step = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                step = coro.send(sent)
            except StopIteration as done:
                return done.value


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def buffered(stream: BinaryIO) -> BinaryIO:
    """``stream``, or a buffered writer on its file when it has no buffer of its own.

    With PYTHONUNBUFFERED set (the images set it, as containers usually do),
    ``sys.stdout.buffer`` is the raw file: every access-log line was a write(2) of its own,
    about 6 us of a one-row request's ~100 us of server CPU (strace: three writes a request,
    the answer's two and the log's). The lines are flushed twice a second (``flush_every``)
    and at shutdown. The file descriptor stays the stream's: closing the buffer leaves it
    open."""
    if isinstance(stream, io.RawIOBase):
        return io.BufferedWriter(io.FileIO(stream.fileno(), "wb", closefd=False),
                                 buffer_size=1 << 16)
    return stream


async def flush_every(stream: BinaryIO, seconds: float) -> None:
    """Flush ``stream`` every ``seconds``, until cancelled."""
    while True:
        await asyncio.sleep(seconds)
        stream.flush()


def tune_gc_for_serving() -> None:
    """Garbage collection for a serving process, measured at 8,000 req/s open loop on one
    core: p99 9.9 ms with the defaults, 3.6 ms with this. Everything loaded at startup (models,
    Feast, MLflow modules) lives as long as the process, so it is frozen out of the collector's
    sight; and the young generation is collected every 100,000 allocations instead of 700
    (each request allocates a few hundred short-lived objects, nearly all freed by reference
    counting)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)



def json_reply(payload, status: int = 200, versions=()) -> tuple:
    """A handler's answer: ``payload`` as JSON (numpy arrays included) with ``status``."""
    return (status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
            JSON_TYPES[0], versions)
