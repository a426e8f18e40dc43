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

The body is the app's concern (``InferenceApp.body_timeout``, ``max_body_bytes``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request this protocol refused."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request's head."""

    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    owner: Any = None  # the app (unwrapped); told of each refusal when it has transport_refused

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refused = False
        self._head_bytes = 0
        self._in_head = True  # the bytes that come next belong to a request's head
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, plus the head's byte count, and quiet about the
        # requests this protocol refused itself.
        counting = self._in_head
        if counting:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if not self._refused:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        # An unfinished head: refused once its bytes so far pass the limit, so memory stays
        # bounded (a finished one is measured exactly in on_headers_complete).
        if counting and self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._stop_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:  # a whole head that came in one read
            self._refuse_too_large()
            raise _Refused  # stops the parser: the app never sees the request
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # a pipelined request may follow

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
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
        self._stop_head_timer()
        # Write an answer only between responses: never into the middle of another one.
        if self.cycle is None or self.cycle.response_complete:
            body = orjson.dumps({"error": message})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body))
        self.transport.close()
        refused = getattr(self.owner, "transport_refused", None)
        if refused is not None:
            refused(status, message)


def limited_protocol(app: Any) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``app``: its ``max_header_bytes`` and ``header_timeout`` (the
    defaults above when it has none)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "owner": app,
        "max_header_bytes": getattr(app, "max_header_bytes",
                                    LimitedHttpToolsProtocol.max_header_bytes),
        "header_timeout": getattr(app, "header_timeout", LimitedHttpToolsProtocol.header_timeout),
    })
