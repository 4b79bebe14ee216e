"""One browser WebSocket at the gateway: its session, its limits, its outbound queue.

Kept small (``__slots__``, no task of its own): the server's task per connection only
waits for the connection to end; everything else is driven from outside:

- **From the browser** (:meth:`Connection.on_message`, called by the protocol in
  ``data_received``): the rate limit (a token bucket), the size limit, text messages as
  the control channel (token refresh), then the message joins the node's stream. When the
  stream is full, the connection stops reading until it has room (backpressure reaches
  the browser's TCP window, never other sessions).
- **To the browser** (:meth:`Connection.deliver`): messages are framed at once and
  written together at the end of the batch that brought them (one system call per
  connection and batch). When the transport pauses (the browser does not read fast
  enough) messages queue, at most ``max_queued`` of them and ``max_queued_bytes`` bytes
  (a single message always fits); past either the connection closes with 4008 (slow
  consumer). The node's stream never waits for a browser.
- **Timers.** The gateway's one shared timer reads ``last_seen``, ``expires_at`` and the
  protocol's ping state (see :meth:`wiremesh.gateway.server.Gateway.sweep`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from wiremesh.core import control
from wiremesh.core.bucket import TokenBucket
from wiremesh.errors import PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import check_access
from wiremesh.gateway.codes import (
    MESSAGE_TOO_BIG,
    RATE_LIMITED,
    REFUSED,
    SLOW_CONSUMER,
    TOKEN_EXPIRED,
    UNSUPPORTED_DATA,
)
from wiremesh.gateway.protocols import SocketProtocol
from wiremesh.gateway.stream import DATA, Frame, FrameStream
from wiremesh.observability import tracing
from wiremesh.transport.eager import Resume

if TYPE_CHECKING:
    from wiremesh.gateway.server import Gateway

__all__ = ["Connection"]

log = logging.getLogger("wiremesh.gateway")

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]
_clock = time.monotonic


class Connection:
    """A session's WebSocket, as the gateway holds it."""

    __slots__ = (
        "_asgi_send",
        "backlog",
        "bucket",
        "close_code",
        "close_reason",
        "closed",
        "dirty",
        "expires_at",
        "gateway",
        "ip",
        "last_seen",
        "max_bytes",
        "node_id",
        "number",
        "principal",
        "queued_bytes",
        "service",
        "session_id",
        "socket",
        "stream",
        "tell_node",
        "text",
        "warned",
    )

    def __init__(
        self,
        gateway: Gateway,
        *,
        number: int,
        session_id: str,
        principal: str,
        ip: str,
        node_id: str,
        service: str,
        stream: FrameStream,
        socket: SocketProtocol | None,
        asgi_send: AsgiSend,
        bucket: TokenBucket,
        expires_at: float,
        max_bytes: int,
        text: bool,
    ) -> None:
        self.gateway = gateway
        self.number = number
        self.session_id = session_id
        self.principal = principal
        self.ip = ip
        self.node_id = node_id
        self.service = service
        self.stream = stream
        self.socket = socket
        self._asgi_send = asgi_send
        self.bucket = bucket
        self.expires_at = expires_at
        self.last_seen = _clock()
        self.max_bytes = max_bytes
        self.text = text
        self.warned = False
        self.dirty = False
        self.backlog: deque[bytes | str] | None = None
        #: bytes (characters for a text message) waiting in ``backlog``
        self.queued_bytes = 0
        self.closed = False
        #: the code the gateway closed the connection with (None: it did not)
        self.close_code: int | None = None
        self.close_reason = ""
        #: whether the node is to be told when the session ends (not if it ended it)
        self.tell_node = True

    def __repr__(self) -> str:
        return f"<Connection {self.session_id} {self.principal!r} on {self.node_id}>"

    # ------------------------------------------------------------------ from the browser

    def on_message(self, data: bytes | str) -> None:
        """One message from the browser."""
        if self.closed:
            return
        now = _clock()
        self.last_seen = now
        if not self.bucket.take(now):
            log.info("session %s: over its message rate; closing it", self.session_id)
            self.close(RATE_LIMITED, "too many messages")
            return
        if isinstance(data, str):
            if not self._control(data):
                return
            payload = data.encode()
            text = True
        else:
            payload = data
            text = False
        if len(payload) > self.max_bytes:
            log.info(
                "session %s: a message over %d bytes; closing it", self.session_id, self.max_bytes
            )
            self.close(MESSAGE_TOO_BIG, "message too big")
            return
        meter = self.gateway.meter
        meter.messages_in += 1
        meter.bytes_in += len(payload)
        stream = self.stream
        socket = self.socket
        frame = Frame(kind=DATA, session=self.number, payload=payload, text=text)
        if tracing.enabled():
            # a browser message starts a trace; the node's handler continues it
            span = tracing.client_span(
                f"socket {self.service}", node=self.node_id, size=len(payload), kind="producer"
            )
            if span is not None:
                frame.trace.update(span.carrier)
                span.set("wiremesh.session", self.session_id)
                span.end()
        stream.send(frame, alone=socket is None or not socket.burst)
        if stream.full and socket is not None:
            socket.hold()
            self.gateway.spawn(self._release_when_room())

    async def _release_when_room(self) -> None:
        await self.stream.wait_for_room()
        if self.socket is not None:
            self.socket.release()

    def _control(self, text: str) -> bool:
        """A text message: True when it is to be forwarded to the node as text."""
        command = control.parse(text)
        if command is not None:
            if command.get("wm") == "refresh":
                self._refresh(command.get("token"))
            else:
                log.info("session %s: an unknown control message", self.session_id)
                self.close(UNSUPPORTED_DATA, "unknown control message")
            return False
        if self.text:
            return True
        log.info("session %s: a text message, which its service does not take", self.session_id)
        self.close(UNSUPPORTED_DATA, "text messages are not accepted")
        return False

    def _refresh(self, token: object) -> None:
        """``{"wm": "refresh", "token": ...}``: a new token for the same principal."""
        if not isinstance(token, str) or not token:
            self.close(TOKEN_EXPIRED, "refresh without a token")
            return
        try:
            identity = self.gateway.verifier.verify(token)
        except Unauthenticated as exc:
            log.info("session %s: refresh refused: %s", self.session_id, exc.message)
            self.close(TOKEN_EXPIRED, "invalid token")
            return
        if identity.principal != self.principal:
            log.info("session %s: refresh for another principal", self.session_id)
            self.close(TOKEN_EXPIRED, "the token is for another principal")
            return
        try:
            check_access(identity.claims, self.gateway.settings.services.get(self.service))
        except PermissionDenied as exc:
            log.info("session %s: refresh refused: %s", self.session_id, exc.message)
            self.close(REFUSED, "forbidden")
            return
        self.expires_at = identity.expires_at
        self.warned = False
        self.deliver(json.dumps({"wm": "refreshed", "exp": int(identity.expires_at)}))

    # ------------------------------------------------------------------ to the browser

    def deliver(self, data: bytes | str, *, now: bool = True) -> None:
        """Send one message to the browser: written at once (``now``), or framed for the
        next :meth:`flush`; queued while the transport is paused, and a full queue closes
        the connection with 4008 (slow consumer)."""
        if self.closed:
            return
        meter = self.gateway.meter
        meter.messages_out += 1
        meter.bytes_out += len(data)
        backlog = self.backlog
        if backlog is not None:
            limits = self.gateway.settings.limits
            queued = self.queued_bytes + len(data)
            if len(backlog) >= limits.max_queued or (queued > limits.max_queued_bytes and backlog):
                log.info(
                    "session %s: the browser does not read (%d messages, %d bytes queued); "
                    "closing it",
                    self.session_id,
                    len(backlog),
                    self.queued_bytes,
                )
                self.close(SLOW_CONSUMER, "slow consumer")
                return
            backlog.append(data)
            self.queued_bytes = queued
            return
        socket = self.socket
        if socket is None:
            self._deliver_asgi(data)
        elif now:
            if not socket.write_message(data):
                self._paused()
        else:
            socket.queue_message(data)

    def flush(self) -> None:
        """Write what :meth:`deliver` framed with ``now=False``."""
        self.dirty = False
        socket = self.socket
        if socket is not None and not self.closed and not socket.flush():
            self._paused()

    def _paused(self) -> None:
        socket = self.socket
        if socket is not None and socket.open and self.backlog is None:
            self.backlog = deque()
            socket.on_writable = self._drain

    def _drain(self) -> None:
        backlog = self.backlog
        socket = self.socket
        if backlog is None or socket is None:
            return
        while backlog:
            data = backlog.popleft()
            self.queued_bytes -= len(data)
            socket.queue_message(data)
            if len(backlog) % 64 == 0 and not socket.flush():
                return
        self.backlog = None
        self.queued_bytes = 0
        socket.on_writable = None
        socket.flush()

    def _deliver_asgi(self, data: bytes | str) -> None:
        """Without the ``wiremesh.socket`` extension (another ASGI server): run the
        ``send`` coroutine up to its first wait, and finish it in a task only if it waits."""
        coro = self._asgi_send(_send_event(data))
        try:
            waits_on = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return
        except Exception:
            self.closed = True
            return
        self.backlog = deque()

        async def finish(first: Any) -> None:
            try:
                await first
                while self.backlog:
                    data = self.backlog.popleft()
                    self.queued_bytes -= len(data)
                    await self._asgi_send(_send_event(data))
            except Exception:
                self.closed = True
            finally:
                self.backlog = None
                self.queued_bytes = 0

        self.gateway.spawn(finish(Resume(coro, waits_on)))

    # ------------------------------------------------------------------ closing

    def close(self, code: int, reason: str = "") -> None:
        """Close the browser's WebSocket with ``code``; the ASGI handler then ends and the
        gateway forgets the session (telling the node, unless ``tell_node`` is off)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.backlog = None
        self.queued_bytes = 0
        socket = self.socket
        if socket is not None:
            socket.on_writable = None
            socket.receiver = None
            socket.close_now(code, reason)
            return
        self.gateway.spawn(
            self._asgi_send({"type": "websocket.close", "code": code, "reason": reason})
        )


def _send_event(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        return {"type": "websocket.send", "text": data}
    return {"type": "websocket.send", "bytes": data}
