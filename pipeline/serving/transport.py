"""HTTP/1.1 on httptools, with the limits on a request's head that uvicorn leaves out.

uvicorn 0.54 bounds an incomplete request head only with h11 (``h11_max_incomplete_event_size``);
with httptools, the parser the server runs for its speed, a client may send a header of any
size (held in memory until it ends) or send it one byte at a time (a connection held for as long
as it likes, before the app ever sees a request). This protocol adds both limits:

- **size**: the bytes of a request's head (request line and headers) are counted as they
  arrive; past ``max_header_bytes`` the request is answered 431 and the connection closed, so
  memory per connection stays near that size (plus one read, 256 KiB at most);
- **time**: the head must arrive within ``header_timeout`` seconds of its first byte, or of the
  connection's opening; otherwise 408 (or a silent close when nothing came at all), so idle and
  slow connections do not pile up. Between requests uvicorn's keep-alive timeout applies.

It also bounds what one connection, and all of them, may make the server hold (issue 23):

- **pipelining**: uvicorn queues every pipelined request it parses and resumes reading after
  each answer, so a client sending requests without reading answers grew memory without bound.
  Here a connection may have ``max_pipelined`` requests read ahead of their answers (and 64 KiB
  of their bodies), and all connections together ``max_queued`` such requests (read while
  another of their connection runs; the one running is not counted, so stalled bodies cannot
  use the budget up); beyond either the server stops reading (``transport.pause_reading``) from
  a connection with a request running until answers went out. httptools cannot stop in the
  middle of a buffer, so a read is parsed in slices of :data:`SLICE` bytes and the rest kept
  (one read, 256 KiB at most) until reading resumes;
- **slow readers**: while a connection's unread answer bytes are above ``max_write_buffer``
  the server reads no further request from it and starts no further answer, and when its
  client has read none of them for ``write_timeout`` seconds the connection is closed (its
  answers dropped);
- **abandoned work**: when a client goes before its answer, the request's task is cancelled
  (with :data:`CLIENT_GONE`): the app stops waiting, frees its slot and stops its lookup;
- **shutdown**: requests read ahead and not started are dropped (the connection closes after
  the answer in flight, so the client retries them), and no further request is read.

Every answer this layer writes itself (400 for a request that is not HTTP, 408, 431, and a 500
when the app fails without answering) is JSON ``{"error": ...}``, like the app's.
The body is the app's concern (``InferenceApp.body_timeout``, ``max_body_bytes``).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import weakref
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           500: b"Internal Server Error"}
#: Bytes parsed at a time when more requests may follow in the same read: how far one read may
#: run past the pipelining limit (a request is at least 18 bytes: some 56 requests).
SLICE = 1024
#: A wait's timer that fires this close to its deadline acts (libuv's timers have 1 ms steps).
TIMER_SLACK = 0.001
#: What a connection waits for: a request's head (from its first byte, or from the
#: connection's opening), or the next request (uvicorn's keep-alive timeout).
HEAD, KEEP_ALIVE = "head", "keep-alive"
#: The message a request's task is cancelled with when its client has gone.
CLIENT_GONE = "client disconnected"
#: The app tasks whose client went. A cancellation's message is lost when another lands in the
#: same tick (the body's deadline, say): the task then sees a CancelledError without
#: CLIENT_GONE, and only this set still says why (:func:`client_went`).
GONE: weakref.WeakSet = weakref.WeakSet()


def client_went(err: BaseException) -> bool:
    """Whether a cancellation of the running app task is its client having gone."""
    return CLIENT_GONE in getattr(err, "args", ()) or asyncio.current_task() in GONE


class QueueBudget:
    """Requests read ahead (queued behind another request of their connection), over all the
    connections of one server; the connections that wait for room, woken as it frees."""

    def __init__(self, limit: int):
        self.limit = limit
        self.queued = 0
        self.waiting: collections.deque[LimitedHttpToolsProtocol] = collections.deque()

    def release(self, n: int) -> None:
        self.queued -= n
        while self.waiting and self.queued < self.limit:
            self.waiting.popleft()._wake()


class _Flow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while the protocol holds it
    (uvicorn resumes reading after every answer and on every ``receive``)."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedHttpToolsProtocol):
        super().__init__(transport)
        self.protocol = protocol

    def resume_reading(self) -> None:
        # What was read and kept is parsed first: no more bytes may come to trigger it.
        if self.read_paused or self.protocol._stash:
            self.protocol._pump()


class _HeadFirst:
    """The connection's transport as one answer's cycle sees it: what uvicorn writes on
    ``http.response.start`` (the status line and headers) is held, and goes out with the
    body's first bytes in one ``writelines``: one send(2) for a small answer instead of two.
    strace showed two writes per answer; the second cost ~5 us of a one-row request's ~100 us
    of server CPU (py-spy). Anything else is the transport's own."""

    __slots__ = ("transport", "head", "holding")

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self.head: list[bytes] = []
        self.holding = True  # while the head is being written

    def write(self, data: bytes) -> None:
        if self.holding:
            self.head.append(data)
        elif self.head:
            head, self.head = self.head, []
            self.transport.writelines([*head, data])
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.head:  # a head without a body (HEAD, or the app failed after starting)
            head, self.head = self.head, []
            self.transport.writelines(head)
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _JsonCycle(RequestResponseCycle):
    """A request-response cycle whose fallback 500 (the app failed before answering) is JSON,
    and whose answer's head and body go out in one write (:class:`_HeadFirst`)."""

    async def send(self, message) -> None:
        transport: Any = self.transport
        if (message["type"] == "http.response.start" and not self.response_started
                and self.scope["method"] != "HEAD"):  # a HEAD answer has no body to wait for
            held = _HeadFirst(transport)
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                held.holding = False
            if not held.head:  # nothing was written (the client went): as it was
                self.transport = transport
            return
        await super().send(message)
        if isinstance(transport, _HeadFirst) and not transport.head:  # the head went out
            self.transport = transport.transport

    async def send_500_response(self) -> None:
        body = orjson.dumps({"error": "internal error: the server failed to answer"})
        await self.send({"type": "http.response.start", "status": 500,
                         "headers": [(b"content-type", b"application/json"),
                                     (b"content-length", str(len(body)).encode()),
                                     (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request this protocol refused."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on each request's head, on the requests and
    answer bytes a connection may make the server hold, and with abandoned requests cancelled."""

    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    max_pipelined = 16
    max_write_buffer = 256 * 1024
    write_timeout = 30.0
    budget = QueueBudget(1024)  # replaced per app by limited_protocol
    owner: Any = None  # the app (unwrapped); told of each refusal when it has transport_refused

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        transport.set_write_buffer_limits(high=self.max_write_buffer)
        self._refused = False
        self._closing = False  # shutting down: no further request is read
        self._head_bytes = 0
        self._in_head = True  # the bytes that come next belong to a request's head
        self._body_left = 0  # body bytes still to come of the request being parsed
        self._stash = b""  # bytes read and not parsed while reading is held
        self._feeding = False
        self._waiting = False  # in the budget's queue
        self._deferred = False  # the next pipelined request waits for the client to read
        self._active: tuple[RequestResponseCycle, asyncio.Task] | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._unread = 0  # answer bytes waiting when the write timer was armed
        # The connection's one wait (the head's, from its opening; or the keep-alive between
        # requests): see _wait.
        self._deadline: float | None = None
        self._waiting_for = HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._wait(self.header_timeout, HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self._stop_write_timer()
        active = self._active
        if active is not None and not active[0].response_complete:
            # The client has gone before its answer: the app stops working on it.
            active[0].disconnected = True
            active[0].message_event.set()
            GONE.add(active[1])
            active[1].cancel(msg=CLIENT_GONE)
        self._dequeued(len(self.pipeline))
        self.pipeline.clear()
        self._stash = b""
        self._leave_queue()
        super().connection_lost(exc)

    # ---- reading, in slices, held while the connection may not take more -----------------
    def data_received(self, data: bytes) -> None:
        if self._stash:
            data, self._stash = self._stash + data, b""
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if len(data) <= SLICE and not self._holding():  # one small read: the common case
            self._feeding = True
            try:
                if self._parse(data) and self._holding():
                    self._hold()
            finally:
                self._feeding = False
            return
        self._feeding = True
        try:
            at, end = 0, len(data)
            while at < end:
                if self._holding():
                    self._stash = data[at:]
                    self._hold()
                    return
                if self.transport.is_closing() or self.parser is None:
                    return
                # Body bytes cannot start a request: the rest of a known body of the request
                # running goes in at once (a queued one's in slices: 64 KiB of it is held).
                step = SLICE + (0 if self._in_head or self.pipeline else self._body_left)
                if at == 0 and end <= step:
                    piece = data
                else:
                    piece = data[at:at + step]
                at += len(piece)
                if not self._parse(piece):
                    return
            if self._holding():
                self._hold()
        finally:
            self._feeding = False

    def _parse(self, data: bytes) -> bool:
        """Feed ``data`` to the parser (uvicorn's data_received, plus the head's byte count);
        False once the connection is done with."""
        counting = self._in_head
        if counting:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as err:
            if not self._refused:
                self.logger.warning("Invalid HTTP request received: %s", err)
                self._refuse(400, f"the request is not valid HTTP/1.1: {_clip(err)}")
            return False
        # An unfinished head: refused once its bytes so far pass the limit, so memory stays
        # bounded (a finished one is measured exactly in on_headers_complete).
        if counting and self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_too_large()
            return False
        return True

    def _holding(self) -> bool:
        """Whether this connection may not have more of its bytes parsed now."""
        if self.flow.write_paused or (self._closing and self._in_head):
            return True
        pipeline = self.pipeline
        budget = self.budget
        if not pipeline and budget.queued < budget.limit:  # the common case
            return False
        if pipeline:
            if len(pipeline) >= self.max_pipelined:
                return True
            if sum(len(cycle.body) for cycle, _ in pipeline) > HIGH_WATER_LIMIT:
                return True
        # The server's budget is checked between requests only (the rest of a request whose
        # head was read is always read: its task may be waiting for its body), and only when
        # the next request would queue behind one running.
        return (self._in_head and self.budget.queued >= self.budget.limit
                and self._running())

    def _running(self) -> bool:
        active = self._active
        return active is not None and not active[0].response_complete

    def _hold(self) -> None:
        FlowControl.pause_reading(self.flow)
        if self._stash:  # what was read waits to be parsed: not an idle connection
            self._unset_keepalive_if_required()
        budget = self.budget
        if not self._waiting and budget.queued >= budget.limit and not self._closing \
                and self._in_head and self._running():
            self._waiting = True
            budget.waiting.append(self)

    def _leave_queue(self) -> None:
        if self._waiting:
            self._waiting = False
            try:
                self.budget.waiting.remove(self)
            except ValueError:
                pass

    def _wake(self) -> None:
        self._waiting = False
        self._pump()

    def _pump(self) -> None:
        """Parse what was kept and read on, once the connection may take more."""
        if self._feeding or self.transport.is_closing():
            return
        if self._holding():
            self._hold()
            return
        if self._stash:
            data, self._stash = self._stash, b""
            self._feed(data)
            if self._stash or self._holding() or self.transport.is_closing():
                return
        FlowControl.resume_reading(self.flow)

    def _dequeued(self, n: int) -> None:
        if n:
            self.budget.release(n)

    # ---- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None or self._waiting_for is not HEAD:
            self._wait(self.header_timeout, HEAD)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._end_wait(HEAD)
        size = len(self.url)
        length = b""
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                length = value
        if size > self.max_header_bytes:  # a whole head that came in one read
            self._refuse_too_large()
            raise _Refused  # stops the parser: the app never sees the request
        self._body_left = int(length) if length.isdigit() and len(length) <= 18 else 0
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a request (not an upgrade)
            self.cycle.__class__ = _JsonCycle
            if self.pipeline and self.pipeline[0][0] is self.cycle:  # queued behind another
                self.budget.queued += 1

    def on_body(self, body: bytes) -> None:
        self._body_left = max(0, self._body_left - len(body))
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # a pipelined request may follow
        self._body_left = 0

    # ---- requests and answers --------------------------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's, keeping the task: cancelled when the client goes before its answer.
        if self.config.reset_contextvars:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._active = (cycle, task)

    def on_response_complete(self) -> None:
        if self.pipeline and self.flow.write_paused and not self.transport.is_closing():
            # The client is not reading: its next answer waits until it did (resume_writing).
            self.server_state.total_requests += 1
            self._unset_keepalive_if_required()
            self._deferred = True
        else:
            queued = len(self.pipeline)
            self._feeding = True  # nothing parsed (its resume_reading) before it started the
            try:  # next pipelined request, if any: a request parsed first would run beside it
                self._response_complete()
            finally:
                self._feeding = False
            # Only then is room given back: a connection it wakes (this one too) parses
            # requests behind the one now running, never beside it.
            self._dequeued(queued - len(self.pipeline))
        self._pump()

    def pause_writing(self) -> None:
        super().pause_writing()
        FlowControl.pause_reading(self.flow)
        if self._write_timer is None:
            self._unread = self.transport.get_write_buffer_size()
            self._write_timer = self.loop.call_later(self.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()
        if self._deferred and not self.transport.is_closing():
            self._deferred = False
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
                self._dequeued(1)
            else:
                self._wait(self.timeout_keep_alive, KEEP_ALIVE)
        self._pump()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        unread = self.transport.get_write_buffer_size()
        if self.flow.write_paused and unread < self._unread:  # read slowly, but read
            self._unread = unread
            self._write_timer = self.loop.call_later(self.write_timeout, self._write_timed_out)
            return
        if self.flow.write_paused:  # closing or not: a close waits for the buffer to drain
            self.logger.info("closing a connection whose client read no answer bytes for "
                             "%g s (KMEANS_WRITE_TIMEOUT_SECONDS)", self.write_timeout)
            closed = getattr(self.owner, "connection_closed", None)
            if closed is not None:
                closed("write_timeout")
            self.transport.abort()  # drops the answers it did not read

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def shutdown(self) -> None:
        """A graceful shutdown: no further request is read, requests read ahead and not started
        are dropped (the connection closes after the answer in flight; the client retries
        them), an idle connection is closed at once."""
        self._closing = True  # the rest of a request being read is still read
        dropped = len(self.pipeline)
        self.pipeline.clear()
        self._dequeued(dropped)
        self._leave_queue()
        FlowControl.pause_reading(self.flow)
        active = self._active
        if active is None or active[0].response_complete:
            self.transport.close()
        else:
            active[0].keep_alive = False

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    # ---- the connection's one wait: a float per request, not a timer ------------------------
    def _wait(self, seconds: float, kind: str) -> None:
        """Wait ``seconds`` for ``kind`` (:data:`HEAD`, :data:`KEEP_ALIVE`), and time it out
        unless :meth:`_end_wait` comes first; a new wait replaces the one before.

        uvicorn arms a timer per request for the keep-alive, and the head's limit took
        another: creating and cancelling the two cost ~2 us of a one-row request's ~80
        (uvloop). Here a connection has one timer; setting or ending a wait only writes the
        deadline, and the timer, when it fires before the deadline (the wait was renewed
        since), sleeps again until it."""
        when = self.loop.time() + seconds
        self._deadline, self._waiting_for = when, kind
        if self._timer is None or self._timer_at > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._tick)

    def _end_wait(self, kind: str) -> None:
        """End the wait if it is for ``kind``."""
        if self._waiting_for is kind:
            self._deadline = None

    def _stop_waiting(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        when = self._deadline
        if when is None or self.transport.is_closing():
            return
        if self.loop.time() + TIMER_SLACK < when:  # renewed since the timer was armed
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._tick)
            return
        self._deadline = None
        if self._waiting_for is HEAD:
            self._head_timed_out()
        else:
            self.timeout_keep_alive_handler()

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn's, for the keep-alive wait (data came; an answer went)
        self._end_wait(KEEP_ALIVE)

    def _response_complete(self) -> None:
        """uvicorn 0.54's ``on_response_complete``, with the keep-alive as a :meth:`_wait`."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._wait(self.timeout_keep_alive, KEEP_ALIVE)

    def _head_timed_out(self) -> None:
        if self.transport.is_closing() or not self._in_head:
            return
        if self._stash:  # the server holds what came (its limits), not the client
            self._wait(self.header_timeout, HEAD)
            return
        if self._head_bytes == 0:  # nothing came: an idle connection, closed without a word
            self.transport.close()
            return
        self._refuse(408, f"the request line and headers did not arrive within "
                          f"{self.header_timeout:g} s (KMEANS_HEADER_TIMEOUT_SECONDS)")

    def _refuse_too_large(self) -> None:
        self._refuse(431, f"the request line and headers exceed {self.max_header_bytes} bytes "
                          "(KMEANS_MAX_HEADER_BYTES)")

    def _refuse(self, status: int, message: str) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._stop_waiting()
        self._stash = b""
        # Write an answer only between responses, never into the middle of another one: after
        # the last answer, or for the request running whose body is broken (its app then sees
        # the client gone, and counts the request itself).
        cycle = self.cycle
        between = cycle is None or cycle.response_complete
        its_body = (cycle is not None and not self._in_head and not self.pipeline
                    and not cycle.response_started)
        if between or its_body:
            body = orjson.dumps({"error": message})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body))
        if its_body:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
        refused = getattr(self.owner, "transport_refused", None)
        if refused is not None and not its_body:
            refused(status, message)


def _clip(err: BaseException, limit: int = 120) -> str:
    text = str(err)
    return text if len(text) <= limit else f"{text[:limit]}…"


def limited_protocol(app: Any) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``app``: its limits (``max_header_bytes``, ``header_timeout``,
    ``max_pipelined``, ``max_queued``, ``max_write_buffer``, ``write_timeout``; the defaults
    above when it has none), with one budget of queued requests for all its connections."""
    base = LimitedHttpToolsProtocol
    limits = {name: getattr(app, name, getattr(base, name))
              for name in ("max_header_bytes", "header_timeout", "max_pipelined",
                           "max_write_buffer", "write_timeout")}
    budget = QueueBudget(getattr(app, "max_queued", base.budget.limit))
    if hasattr(app, "queue_budget"):  # the app reports it (/admin/state)
        app.queue_budget = budget
    return type("LimitedHttpToolsProtocol", (base,), {"owner": app, **limits, "budget": budget})
