"""One browser session's messages on its node, with no I/O: one handler at a time, in
order, at most ``limit`` waiting.

Everything that decides when a session's next message is handled lives in this file;
``gateway/socket_hub.py`` runs the handlers and does what the answers say. A message is
whatever the caller handles (the node side passes its frames), anything but ``None``:
the inbox never looks inside one.

Theory of operation. A session is *idle* (none of its handlers runs) or *running* (one
does). A message that arrives at an idle session runs at once; one that arrives while a
handler runs waits its turn. When a handler is done the caller says so, and gets the next
message to run, until none waits and the session is idle again. When the session ends,
what waits is dropped, unless a last message is given (its close hook): then what waits
is still handled, and that last one after it, whatever the limit.

The transitions (``limit`` messages may wait; "full" means that many do)::

    state            arrived(m)                 finished()         close(last)
    idle             running; RUN               (not allowed)      closed; running, last runs
    running          m waits; QUEUED            next, or idle      closed; last waits
    running, full    nothing waits; OVERFLOW    next, or idle      closed; last waits
    closed           DROPPED                    next, or idle      (nothing)

``close()`` without a last message drops what waits instead.

    >>> inbox = SessionInbox(limit=1)
    >>> [inbox.arrived(m).name for m in ("a", "b", "c")]
    ['RUN', 'QUEUED', 'OVERFLOW']
    >>> inbox.finished() is None   # "b" was dropped with "c": the session must end
    True
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Generic, TypeVar

__all__ = ["DROPPED", "OVERFLOW", "QUEUED", "RUN", "Arrival", "SessionInbox"]

M = TypeVar("M")


class Arrival(enum.Enum):
    """What the caller does with a message that arrived (see :meth:`SessionInbox.arrived`)."""

    #: nothing was running: run it now, and call :meth:`SessionInbox.finished` when done
    RUN = "run"
    #: a handler runs: the message waits its turn, nothing to do
    QUEUED = "queued"
    #: ``limit`` messages already wait: the handler cannot keep up. The message and all
    #: that waited are dropped; end the session (:meth:`SessionInbox.close`)
    OVERFLOW = "overflow"
    #: the session has ended: the message is dropped, nothing to do
    DROPPED = "dropped"


# the members as names of their own: the node side compares one per browser message
RUN, QUEUED, OVERFLOW, DROPPED = Arrival.RUN, Arrival.QUEUED, Arrival.OVERFLOW, Arrival.DROPPED


class SessionInbox(Generic[M]):
    """The turns of one session's messages. ``limit``: how many may wait while a handler
    runs (at least 1)."""

    __slots__ = ("_waiting", "closed", "limit", "running")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a session's inbox holds at least 1 message, not {limit}")
        self.limit = limit
        self._waiting: deque[M] = deque()
        # plain attributes rather than properties: the node side reads ``closed`` on every
        # message a handler sends. Read them; only the events below change them.
        #: a handler of the session runs (the caller has not said it finished)
        self.running = False
        #: the session has ended: it takes no new message
        self.closed = False

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        closed = ", closed" if self.closed else ""
        return f"<SessionInbox {state}{closed}, {len(self._waiting)} waiting>"

    def __len__(self) -> int:
        """How many messages wait (the one that runs is not counted)."""
        return len(self._waiting)

    def arrived(self, message: M) -> Arrival:
        """A message of the session arrived: :data:`RUN` (run it now, then call
        :meth:`finished`), :data:`QUEUED`, :data:`OVERFLOW` (end the session) or
        :data:`DROPPED` (the session has ended)."""
        if self.closed:
            return DROPPED
        if not self.running:
            self.running = True
            return RUN
        waiting = self._waiting
        if len(waiting) >= self.limit:
            # what waits would be handled after the session ended, by nobody's wish
            waiting.clear()
            return OVERFLOW
        waiting.append(message)
        return QUEUED

    def finished(self) -> M | None:
        """The running handler is done: the next message to run (run it, then call this
        again), or ``None`` when none waits (the session is idle again)."""
        if not self.running:
            raise RuntimeError("finished() without a handler running")
        waiting = self._waiting
        if waiting:
            return waiting.popleft()
        self.running = False
        return None

    def close(self, last: M | None = None) -> M | None:
        """The session ended. With ``last`` (the close hook's message), what waits is still
        handled and ``last`` after it, past the limit: returned when nothing runs (run it
        now, then call :meth:`finished`), else it waits. Without one, what waits is
        dropped, and ``None`` is returned. A session ends once: closing it again does
        nothing."""
        if self.closed:
            return None
        self.closed = True
        if last is None:
            self._waiting.clear()
            return None
        if not self.running:
            self.running = True
            return last
        self._waiting.append(last)
        return None
