"""Running a coroutine's first step at once, and the rest later in a task.

Mesh links and gateway streams begin a write (or a handler) inline, where it usually
finishes without waiting; only when it must wait does a task take over, awaiting a
:class:`Resume` of the same coroutine. :func:`yield_now` is one trip through the event
loop.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["Resume", "yield_now"]


@types.coroutine
def yield_now() -> Any:
    """One trip through the event loop (``asyncio.sleep(0)`` without its checks)."""
    yield


class Resume:
    """Awaits what is left of a coroutine already run up to its first wait (``first`` is
    what it yielded there): work begun in one place and finished in a task."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Any, first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Any:
        coro = self._coro
        value = self._first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # thrown in: the awaiting task is cancelled
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
