"""The body's deadline in AsgiCore._read_body: a receive() that answers at once takes no timer;
one that waits is bounded by body_timeout_seconds (408), and a cancellation from elsewhere (the
client went, shutdown) still cancels, never turned into a 408."""

import asyncio

import pytest

from pipeline.serving.errors import RequestTimeout
from tests.helpers.serving import make_app, tiny_model


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tiny_model(tmp_path_factory.mktemp("m") / "m"), body_timeout_seconds=0.3)


def _messages(*parts, delay=0.0):
    """receive(): the parts in order, each after ``delay`` seconds (0: at once)."""
    queue = list(parts)

    async def receive():
        if delay:
            await asyncio.sleep(delay)
        body, more = queue.pop(0)
        return {"type": "http.request", "body": body, "more_body": more}
    return receive


def test_a_body_there_at_once_and_one_in_pieces_that_come_in_time(app):
    headers = {b"content-type": b"application/json"}
    assert asyncio.run(app._read_body(headers, _messages((b"{}", False)))) == b"{}"
    pieces = _messages((b"ab", True), (b"cd", True), (b"ef", False), delay=0.05)
    assert asyncio.run(app._read_body(headers, pieces)) == b"abcdef"


def test_a_body_that_does_not_come_in_time_is_a_408_naming_what_came(app):
    headers = {b"content-type": b"application/json", b"content-length": b"10"}
    slow = _messages((b"abc", True), (b"def", False), delay=0.2)  # 0.4 s in all, over 0.3
    with pytest.raises(RequestTimeout, match=r"within 0.3 s .*: 3 of 10 bytes received"):
        asyncio.run(app._read_body(headers, slow))


def test_a_cancellation_from_elsewhere_is_not_a_timeout(app):
    async def main():
        task = asyncio.create_task(app._read_body({}, _messages((b"x", False), delay=5)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # and a cancellation that races the deadline: still a cancellation
        task = asyncio.create_task(app._read_body({}, _messages((b"x", False), delay=5)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises((asyncio.CancelledError, RequestTimeout)):
            await task
    asyncio.run(main())


def test_a_client_gone_in_the_tick_of_the_deadline_is_still_a_client_gone(app):
    """The deadline's cancel and the transport's (client gone) in one tick: the task sees one
    CancelledError without the transport's message (asyncio keeps the first), so the app would
    count a 503 for a client that had gone (seen once in the soak). The transport's mark says
    why."""
    from pipeline.serving.transport import CLIENT_GONE, GONE, client_went

    async def main():
        seen = []

        async def request():
            try:
                await app._read_body({}, _messages((b"x", False), delay=5))
            except asyncio.CancelledError as err:
                seen.append((err.args, client_went(err)))
                raise

        task = asyncio.create_task(request())
        await asyncio.sleep(0.05)
        task.cancel()  # as the deadline's timer does
        GONE.add(task)  # as the transport does when the connection is lost
        task.cancel(msg=CLIENT_GONE)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [((), True)]
    asyncio.run(main())
