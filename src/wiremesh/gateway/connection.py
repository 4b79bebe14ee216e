"""One browser WebSocket at the gateway: the adapter between its socket and its rules.

What a session may do is decided by its :class:`~wiremesh.core.socket_session.SessionRules`
(no I/O): a :class:`Connection` feeds them every event and performs the action they return
(forward, queue, close with their code, answer a refresh, ping). Kept small
(``__slots__``, no task of its own, and on wiremesh's own WebSocket protocol no task of
the server's either: the session's end is a callback, see
:meth:`~wiremesh.gateway.socket_protocol.SocketProtocol.detach`); everything is driven
from outside:

- **From the browser** (:meth:`Connection.on_message`, called by the protocol in
  ``data_received``): the rules judge the message (rate, size, text messages as the
  control channel), then it joins the node's stream. When the stream is full, the
  connection stops reading until it has room (backpressure reaches the browser's TCP
  window, never other sessions).
- **To the browser** (:meth:`Connection.deliver`): messages are framed at once and
  written together at the end of the batch that brought them (one system call per
  connection and batch). When the transport pauses (the browser does not read fast
  enough) messages queue while the rules take them (``max_queued`` messages,
  ``max_queued_bytes`` bytes); past that the connection closes with 4008 (slow consumer).
  The node's stream never waits for a browser.
- **Timers.** The gateway's one shared timer calls :meth:`Connection.tick`: token expiry,
  idle timeout, the expiry warning and the keepalive ping.

What a connection needs of the gateway that holds it is :class:`ConnectionHost`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from wiremesh.core.bucket import TokenBucket
from wiremesh.core.socket_session import (
    ACCEPT,
    NO_PONG,
    PING,
    REFRESH_FORBIDDEN,
    ChannelCommand,
    Close,
    Expiring,
    SessionLimits,
    SessionRules,
)
from wiremesh.errors import PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import TokenVerifier, check_access
from wiremesh.gateway.frame_stream import DATA, Frame, FrameStream
from wiremesh.gateway.meter import GatewayMeter
from wiremesh.gateway.settings import SocketServiceSettings
from wiremesh.gateway.socket_protocol import SocketProtocol
from wiremesh.observability import tracing
from wiremesh.transport.eager import Resume

__all__ = ["Connection", "ConnectionHost"]

log = logging.getLogger("wiremesh.gateway")

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]
_clock = time.monotonic


class ConnectionHost(Protocol):
    """What a :class:`Connection` needs of the gateway that holds it."""

    @property
    def meter(self) -> GatewayMeter:
        """Where the messages and bytes in and out are counted."""

    @property
    def session_limits(self) -> SessionLimits:
        """The limits every session shares (queue, timeouts, keepalive)."""

    @property
    def verifier(self) -> TokenVerifier:
        """Checks the token of a refresh."""

    def access_rules(self, service: str) -> SocketServiceSettings | None:
        """The access rules a refreshed token must meet for ``service`` (None: any)."""

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in a task the host keeps until it ends (rare paths only)."""

    def channel_command(self, connection: Connection, command: dict[str, Any]) -> None:
        """A channel's control message from ``connection``'s browser (subscribe,
        unsubscribe, publish, presence)."""


class Connection:
    """A session's WebSocket, as the gateway holds it: the I/O around its :attr:`rules`.

    ``bucket``, ``expires_at`` (wall seconds), ``max_bytes`` and ``text`` (whether its
    service takes text messages) are the session's own limits; the rest come from
    ``host``'s :attr:`~ConnectionHost.session_limits`."""

    __slots__ = (
        "_asgi_send",
        "backlog",
        "channels",
        "claims",
        "close_code",
        "close_reason",
        "closed",
        "dirty",
        "host",
        "ip",
        "node_id",
        "number",
        "principal",
        "rules",
        "service",
        "session_id",
        "socket",
        "stream",
        "tell_node",
    )

    def __init__(
        self,
        host: ConnectionHost,
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
        claims: str = "",
    ) -> None:
        self.host = host
        #: the token's claims, as the JSON the node was given (channels ask with them)
        self.claims = claims
        #: the channels the session is subscribed to, or is subscribing to (None: none)
        self.channels: set[str] | None = None
        self.number = number
        self.session_id = session_id
        self.principal = principal
        self.ip = ip
        self.node_id = node_id
        self.service = service
        self.stream = stream
        self.socket = socket
        self._asgi_send = asgi_send
        #: what the session may do, and the state that decides it
        self.rules = SessionRules(
            host.session_limits,
            principal=principal,
            expires_at=expires_at,
            max_bytes=max_bytes,
            text=text,
            bucket=bucket,
            now=_clock(),
        )
        self.dirty = False
        #: messages waiting for the browser while its transport is paused (the rules
        #: count them)
        self.backlog: deque[bytes | str] | None = None
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
        if isinstance(data, str):
            payload = data.encode()
            text = True
            verdict = self.rules.received_text(data, len(payload), _clock())
            if verdict is not ACCEPT:
                if isinstance(verdict, Close):
                    self._close_for(verdict)
                elif isinstance(verdict, ChannelCommand):
                    self.host.channel_command(self, verdict.command)
                else:
                    self._refresh(verdict.token)
                return
        else:
            payload = data
            text = False
            verdict = self.rules.received(len(data), _clock())
            if verdict is not ACCEPT:
                self._close_for(verdict)
                return
        meter = self.host.meter
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
            self.host.spawn(self._release_when_room())

    async def _release_when_room(self) -> None:
        await self.stream.wait_for_room()
        if self.socket is not None:
            self.socket.release()

    def _refresh(self, token: str) -> None:
        """``{"wm": "refresh", "token": ...}``: a new token, for the same principal."""
        rules = self.rules
        try:
            identity = self.host.verifier.verify(token)
        except Unauthenticated as exc:
            self._close_for(rules.token_refused(), exc.message)
            return
        denied: PermissionDenied | None = None
        try:
            check_access(identity.claims, self.host.access_rules(self.service))
        except PermissionDenied as exc:
            denied = exc
        verdict = rules.token_refreshed(
            identity.principal, identity.expires_at, allowed=denied is None
        )
        if verdict is not ACCEPT:
            why = denied.message if denied is not None and verdict is REFRESH_FORBIDDEN else ""
            self._close_for(verdict, why)
            return
        self.deliver(json.dumps({"wm": "refreshed", "exp": int(rules.expires_at)}))

    # ------------------------------------------------------------------ to the browser

    def deliver(self, data: bytes | str, *, now: bool = True) -> None:
        """Send one message to the browser: written at once (``now``), or framed for the
        next :meth:`flush`; queued while the transport is paused, and a full queue closes
        the connection with 4008 (slow consumer)."""
        if self.closed:
            return
        meter = self.host.meter
        meter.messages_out += 1
        meter.bytes_out += len(data)
        backlog = self.backlog
        if backlog is not None:
            rules = self.rules
            verdict = rules.queued(len(data))
            if verdict is not ACCEPT:
                detail = (
                    f"the browser does not read ({rules.queued_messages} messages, "
                    f"{rules.queued_bytes} bytes queued)"
                )
                self._close_for(verdict, detail)
                return
            backlog.append(data)
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
        rules = self.rules
        while backlog:
            data = backlog.popleft()
            rules.dequeued(len(data))
            socket.queue_message(data)
            if len(backlog) % 64 == 0 and not socket.flush():
                return
        self.backlog = None
        rules.drained()
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
                    self.rules.dequeued(len(data))
                    await self._asgi_send(_send_event(data))
            except Exception:
                self.closed = True
            finally:
                self.backlog = None
                self.rules.drained()

        self.host.spawn(finish(Resume(coro, waits_on)))

    # ------------------------------------------------------------------ the timer

    def tick(self, now: float, wall: float) -> None:
        """One run of the gateway's shared timer, at ``now`` (the loop's time) and
        ``wall`` (epoch seconds): token expiry, idle timeout, the warning that the token
        expires soon, and the keepalive ping."""
        if self.closed:
            return
        rules = self.rules
        verdict = rules.due(now, wall)
        if verdict is not ACCEPT:
            if isinstance(verdict, Expiring):
                self.deliver(json.dumps({"wm": "expiring", "exp": int(verdict.expires_at)}))
            else:
                self._close_for(verdict)
                return
        socket = self.socket
        if not isinstance(socket, SocketProtocol):
            return
        ping = rules.keepalive(now, socket.ping_pending_since, socket.last_ping_sent)
        if ping is PING:
            socket.last_ping_sent = now
            socket.ping(now)
        elif ping is NO_PONG:
            # the peer is gone: no close handshake to wait for, the connection is dropped
            log.info("session %s: no pong in time", self.session_id)
            self.closed = True
            socket.keepalive_failed()

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
        self.rules.drained()
        socket = self.socket
        if socket is not None:
            socket.on_writable = None
            socket.receiver = None
            socket.close_now(code, reason)
            return
        self.host.spawn(
            self._asgi_send({"type": "websocket.close", "code": code, "reason": reason})
        )

    def _close_for(self, verdict: Close, detail: str = "") -> None:
        """Close as a rule decided, with one log line (``detail``: why, if more than the
        close's reason says)."""
        log.info(
            "session %s: %s; closing it (%d)",
            self.session_id,
            detail or verdict.reason,
            verdict.code,
        )
        self.close(verdict.code, verdict.reason)


def _send_event(data: bytes | str) -> dict[str, Any]:
    if isinstance(data, str):
        return {"type": "websocket.send", "text": data}
    return {"type": "websocket.send", "bytes": data}
