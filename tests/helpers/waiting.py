"""Waiting on progress, not on a wall-clock budget.

A loaded CI machine can be several times slower than a quiet one. A wait that gives up after a
fixed time fails there although nothing is wrong; a wait with no limit hangs when something is.
``wait_until`` waits while the thing waited for keeps moving: its ``timeout`` is how long it may
go *without progress*, and every change of ``progress()`` (a task state, a log's size, a count
of rows landed) starts that time again. What it waited for, and the last progress seen, are in
the failure message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

#: Exceptions a probe may raise while the thing it probes is still starting.
_NOT_YET: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)


class WaitTimeout(AssertionError):
    """A wait saw no progress for its whole timeout (an AssertionError: the test fails)."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *,
               progress: Callable[[], Hashable] | None = None,
               alive: Callable[[], str | None] | None = None,
               interval: float = 0.2,
               ignore: tuple[type[BaseException], ...] = _NOT_YET) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Parameters
    ----------
    predicate : callable
        The condition; exceptions in ``ignore`` count as "not yet".
    timeout : float
        Seconds allowed without progress. Without ``progress`` it is a plain deadline.
    what : str
        What is waited for, in words: the failure message starts with it.
    progress : callable, optional
        Returns a token of how far the work has got (e.g. the task states and a log's size);
        each new token restarts the ``timeout``.
    alive : callable, optional
        Returns an error message once the process doing the work has died: the wait fails at
        once with it instead of waiting out the timeout.
    interval : float
        Seconds between probes.

    Examples
    --------
    >>> wait_until(lambda: 42, 1, "the answer")
    42
    """
    last_token: Hashable = object()
    last_change = time.monotonic()
    last_error: BaseException | None = None
    while True:
        if alive is not None and (error := alive()):
            raise WaitTimeout(f"{what}: {error}")
        try:
            if result := predicate():
                return result
        except ignore as err:
            last_error = err
        if progress is not None:
            try:
                token = progress()
            except ignore as err:
                last_error, token = err, last_token
            if token != last_token:
                last_token, last_change = token, time.monotonic()
        if time.monotonic() - last_change > timeout:
            seen = "" if progress is None else f"; last progress: {last_token!r}"
            cause = "" if last_error is None else f"; last error: {last_error!r}"
            raise WaitTimeout(f"{what}: not done after {timeout:.0f} s"
                              f"{' without progress' if progress else ''}{seen}{cause}")
        time.sleep(interval)


def until_quiet(probe: Callable[[], Any], settle: float, timeout: float, what: str) -> Any:
    """Wait until ``probe()`` returns the same value for ``settle`` seconds in a row (e.g. a
    queue that stopped growing); return that value."""
    state: dict[str, Any] = {"value": object(), "since": time.monotonic()}

    def settled():
        value = probe()
        if value != state["value"]:
            state.update(value=value, since=time.monotonic())
            return False
        return time.monotonic() - state["since"] >= settle

    wait_until(settled, timeout, what, progress=lambda: repr(state["value"]))
    return state["value"]
