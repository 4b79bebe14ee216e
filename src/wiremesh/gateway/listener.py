"""The gateway's listening socket: near its file descriptor limit, it refuses connections.

Every connection a gateway holds costs a file descriptor, and so does every connection of
its own (to the registry, to each node). Without a guard, clients that hold connections
open take every descriptor: the gateway can no longer reach its nodes, fresh clients wait
in the listen backlog until they time out, and asyncio's accept loop logs a traceback for
each connection it fails to accept, thousands a second.

:class:`Listener` is the socket the server accepts from. Its ``accept()``:

- refuses (accepts and closes at once) a connection whose descriptor would be among the
  top :func:`reserve` of the process's limit, which stay for the gateway's own
  connections. Descriptors are numbered lowest first, so a new one that high means every
  lower one is in use;
- when the process has no descriptor left at all (``EMFILE``, ``ENFILE``), gives back a
  spare descriptor it keeps for the purpose, refuses the waiting connections with it,
  and takes it again;
- logs refusals on one line at most every :data:`LOG_INTERVAL` seconds, with their
  count.

A refused client sees its connection closed at once, and can retry; nothing waits in the
backlog for a descriptor.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from typing import Any

__all__ = ["LOG_INTERVAL", "Listener", "reserve"]

log = logging.getLogger("wiremesh.gateway")

#: seconds between two log lines about refused connections
LOG_INTERVAL = 10.0
#: connections refused in one call of ``accept()`` at most (the event loop calls it again)
_BURST = 64
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def reserve(limit: int) -> int:
    """How many of a process's ``limit`` descriptors no browser connection takes: an
    eighth, at least 128, and never more than half.

    >>> reserve(1024), reserve(65536), reserve(200)
    (128, 8192, 100)
    """
    return min(max(128, limit // 8), limit // 2)


def _spare() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


class Listener(socket.socket):
    """A listening TCP socket whose ``accept()`` refuses connections the process has no
    descriptor for (see the module's docstring)."""

    __slots__ = ("_next_log", "_resting_until", "_unlogged", "ceiling", "limit", "refused", "spare")

    def __init__(self, family: int, kind: int, proto: int = 0) -> None:
        super().__init__(family, kind, proto)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = soft if soft != resource.RLIM_INFINITY else 2**31 - 1
        #: a connection whose descriptor is this number or more is refused
        self.ceiling = self.limit - reserve(self.limit)
        #: connections refused so far
        self.refused = 0
        #: the descriptor given back to refuse connections with, when there is none left
        self.spare = _spare()
        self._unlogged = 0
        self._next_log = 0.0
        self._resting_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if self._resting_until and time.monotonic() < self._resting_until:
            raise BlockingIOError(errno.EAGAIN, "accepting again in a moment")
        if self.spare < 0:
            self.spare = _spare()
        refused = 0
        exhausted = False
        try:
            while refused < _BURST:
                try:
                    fd, address = self._accept()  # type: ignore[attr-defined]
                except OSError as exc:
                    if exc.errno not in _EXHAUSTED:
                        raise  # BlockingIOError among them: nothing waits any more
                    if exhausted or self.spare < 0:
                        # not even a descriptor to refuse with: asyncio stops accepting
                        # for a second (once, not once per waiting connection)
                        self._resting_until = time.monotonic() + 1.0
                        raise
                    exhausted = True
                    os.close(self.spare)
                    self.spare = -1
                    continue
                if fd < self.ceiling and not exhausted:
                    return socket.socket(self.family, self.type, self.proto, fileno=fd), address
                os.close(fd)
                refused += 1
            raise BlockingIOError(errno.EAGAIN, "more connections to refuse on the next turn")
        finally:
            if exhausted:
                self.spare = _spare()
            if refused:
                self._count(refused)

    def _count(self, refused: int) -> None:
        self.refused += refused
        self._unlogged += refused
        now = time.monotonic()
        if now >= self._next_log:
            log.warning(
                "refused %d connection(s): too few file descriptors left (the process may "
                "have %d; %d are kept for the gateway's own connections); next report in "
                "%g s at the earliest",
                self._unlogged,
                self.limit,
                self.limit - self.ceiling,
                LOG_INTERVAL,
            )
            self._unlogged = 0
            self._next_log = now + LOG_INTERVAL

    def close(self) -> None:
        if self.spare >= 0:
            os.close(self.spare)
            self.spare = -1
        super().close()
