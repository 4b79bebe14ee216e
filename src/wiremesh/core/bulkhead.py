"""How many calls of one method a node runs at once, and how many may wait their turn.

A bulkhead (``@rpc(max_concurrency=8, max_queue=16)``) keeps one slow or flooded method
from taking every task, connection and megabyte of its node: the node runs at most
``max_concurrency`` calls of the method at once; up to ``max_queue`` more wait, first come
first served, each until its deadline at most; past both, a call is refused at once, unrun,
with :class:`~wiremesh.errors.Overloaded`. The caller then sends it to another node of the
service, idempotent or not (it never ran), and fails with ``Overloaded`` only when every
node it tried was full.

Everything that decides lives here; :mod:`wiremesh.transport.dispatch` holds the waiters
(opaque here: its futures) and wakes the one this hands back. Nothing here waits or reads
a clock::

    >>> gate = Bulkhead(max_concurrency=1, max_queue=1)
    >>> gate.enter(), gate.enter(), gate.wait("second"), gate.wait("third")
    (True, False, True, False)
    >>> gate.leave()  # the first call ends: its slot goes to the waiter
    'second'
    >>> gate.running, gate.waiting, gate.refused
    (1, 0, 1)
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["Bulkhead"]

W = TypeVar("W")


class Bulkhead(Generic[W]):
    """The slots of one method on one node, and the calls waiting for one (each with a
    waiter ``W``). ``refused`` counts the calls turned away, for the metrics."""

    __slots__ = ("_queue", "max_concurrency", "max_queue", "refused", "running")

    def __init__(self, max_concurrency: int, max_queue: int = 0) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, not {max_queue}")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        #: calls running now (a slot handed to a waiter counts from the hand-over)
        self.running = 0
        self.refused = 0
        self._queue: deque[W] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def enter(self) -> bool:
        """Take a slot if one is free and nobody waits for it; False: :meth:`wait`."""
        if self.running < self.max_concurrency and not self._queue:
            self.running += 1
            return True
        return False

    def wait(self, waiter: W) -> bool:
        """Queue ``waiter`` for the next free slot; False (counted as refused) when the
        queue is full: refuse the call, unrun."""
        if len(self._queue) >= self.max_queue:
            self.refused += 1
            return False
        self._queue.append(waiter)
        return True

    def withdraw(self, waiter: W) -> bool:
        """A waiting call gave up (its deadline passed, its caller cancelled): True when it
        was still queued. False means a slot was handed to it already: it must
        :meth:`leave` to pass the slot on."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            return False
        return True

    def leave(self) -> W | None:
        """A call that held a slot ended: the waiter its slot goes to (wake it), or None."""
        if self._queue:
            return self._queue.popleft()
        self.running -= 1
        return None
