"""uvicorn's HTTP and WebSocket protocols, with what the gateway needs beside ASGI.

ASGI has no way to write a message without awaiting, to close a connection whose peer
does not read, or to bound how long a client may take to send its request. The gateway
serves with uvicorn's ``websockets-sansio`` implementation (chosen by measurement: see
``docs/gateway.md``) and adds, through the ``wiremesh.socket`` scope extension:

- ``receiver``: when set, each message the browser sends is handed to it directly, in
  ``data_received`` (no queue, no task switch); the ASGI ``receive()`` then only reports
  the end of the connection. :meth:`SocketProtocol.hold` and :meth:`release` pause and
  resume reading (backpressure).
- :meth:`SocketProtocol.write_message`: write one message now (no await, no task); it
  says whether the transport still takes more (else the caller queues until
  ``on_writable`` is called). :meth:`queue_message` and :meth:`flush` write many messages
  in one system call.
- :meth:`SocketProtocol.close_now`: send a close frame even to a peer that does not
  read, and abort the connection if the closing handshake does not end in time.
- keepalive pings driven by the gateway's one shared timer (:meth:`SocketProtocol.ping`)
  instead of a timer per connection.

:class:`HttpProtocol` counts connections that have not sent a whole request head yet (the
first request's, or the next one's on a keep-alive connection), so the gateway's timer can
close a connection whose head does not arrive within the handshake timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

from wiremesh.gateway.codes import CloseCode

__all__ = ["EXTENSION", "HttpProtocol", "SocketProtocol", "protocol_classes"]

log = logging.getLogger("wiremesh.gateway")

#: the scope extension that carries the :class:`SocketProtocol`
EXTENSION = "wiremesh.socket"
#: seconds a closing handshake may take before the connection is aborted
CLOSE_TIMEOUT = 5.0


class Handshakes:
    """Connections waiting for a request head: since when, and the request they had
    then (``None`` before the first one). A head has arrived once the protocol's request
    is another one."""

    def __init__(self) -> None:
        self.pending: dict[HttpProtocol, tuple[float, object]] = {}

    def expire(self, now: float, timeout: float) -> int:
        """Close every connection whose head has been awaited for more than ``timeout``
        seconds."""
        closed = 0
        for protocol, (since, previous) in list(self.pending.items()):
            if protocol.cycle is not previous or protocol.transport.is_closing():
                del self.pending[protocol]
            elif now - since > timeout:
                del self.pending[protocol]
                protocol.transport.abort()
                closed += 1
        return closed


class HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol, counted while it waits for a request head: from the
    connection's start, and on a keep-alive connection from the first byte of each next
    request (the time between requests is uvicorn's keep-alive timeout)."""

    handshakes: Handshakes
    #: an answer is complete and no next request has begun: its first byte starts a clock
    between_requests: bool = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.handshakes.pending[self] = (self.loop.time(), None)

    def data_received(self, data: bytes) -> None:
        if self.between_requests:
            # the next request begins: its head must arrive in time, as the first one's
            self.between_requests = False
            self.handshakes.pending[self] = (self.loop.time(), self.cycle)
        super().data_received(data)

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()
        # unless a pipelined request began at once, or the connection closes
        if self.cycle is answered and not self.transport.is_closing():
            self.between_requests = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.handshakes.pending.pop(self, None)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: Any) -> None:
        self.handshakes.pending.pop(self, None)
        super().handle_websocket_upgrade(event)


class _Inbox:
    """What uvicorn's protocol uses of an ``asyncio.Queue`` (``put_nowait``, ``get``,
    ``empty``) for a queue that holds a message or two: a list and one waiter, where a
    Queue holds three deques (the memory a connection takes in all is what
    ``benchmarks/connections.py`` measures)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        return self._items.pop(0)


class _Flag:
    """What uvicorn's protocol uses of an ``asyncio.Event`` (``set``, ``clear``,
    ``is_set``, ``wait``), with no deque until someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        return True


class SocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sansio WebSocket protocol with direct writes, forced closes and pings
    that the gateway drives, and less memory per connection: a small queue and flag in
    place of an ``asyncio.Queue`` and ``Event``, and the handshake's request, response
    and headers dropped once the WebSocket is open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    #: called when the transport takes writes again after a pause
    on_writable: Callable[[], None] | None = None
    #: takes each message the browser sends (bytes or str), instead of the ASGI queue
    receiver: Callable[[bytes | str], None] | None = None
    #: reading is paused by :meth:`hold`
    held: bool = False
    #: the messages being handed to ``receiver`` came in one read (more may follow at once)
    burst: bool = False
    #: loop time of the last ping still unanswered (0: none), and of the last ping sent
    ping_pending_since: float = 0.0
    last_ping_sent: float = 0.0

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    async def send(self, message: Any) -> None:
        await super().send(message)
        kind = message["type"]
        if kind == "websocket.accept":
            # the handshake is over: what only it needed goes (websockets' parser keeps
            # the request object itself alive, so its headers are emptied in place)
            self.request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
            self.scope["headers"] = []
            self.scope["subprotocols"] = []
        elif kind == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True  # a refusal is a complete answer

    def start_keepalive(self) -> None:
        """Pings come from the gateway's shared timer (see :meth:`ping`)."""

    def resume_writing(self) -> None:
        super().resume_writing()
        callback = self.on_writable
        if callback is not None:
            callback()

    def handle_events(self) -> None:
        events = self.conn.events_received()
        self.burst = len(events) > 1
        try:
            for event in events:
                if isinstance(event, Request):
                    self.handle_connect(event)
                elif isinstance(event, Frame):
                    opcode = event.opcode
                    if opcode == Opcode.BINARY:
                        self.handle_bytes(event)
                    elif opcode == Opcode.TEXT:
                        self.handle_text(event)
                    elif opcode == Opcode.CONT:
                        self.handle_cont(event)
                    elif opcode == Opcode.PING:
                        self.handle_ping()
                    elif opcode == Opcode.PONG:
                        self.handle_pong(event)
                    elif opcode == Opcode.CLOSE:
                        self.handle_close(event)
        finally:
            self.burst = False

    def send_receive_event_to_app(self) -> None:
        receiver = self.receiver
        if receiver is None:
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if self.close_sent:
            return
        try:
            if self.curr_msg_data_type == "text":
                try:
                    text = bytes(data).decode()
                except UnicodeDecodeError:  # websockets checks first: not expected
                    self.conn.send_close(CloseCode.INVALID_DATA)
                    self.handle_parser_exception()
                    return
                receiver(text)
            else:
                receiver(data)
        except Exception:
            # a failure of the gateway's own: the browser gets a close frame (1011), not
            # a reset connection, and the rest of its messages are not read
            log.exception("a browser's message could not be handled; closing with 1011")
            self.close_now(CloseCode.INTERNAL_ERROR, "internal error")

    def hold(self) -> None:
        """Stop reading from the browser (its messages wait in the kernel)."""
        if not self.held:
            self.held = True
            self.transport.pause_reading()

    def release(self) -> None:
        if self.held:
            self.held = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def open(self) -> bool:
        return not (self.close_sent or self.disconnected or self.transport.is_closing())

    @property
    def can_write(self) -> bool:
        return self.writable.is_set()

    def write_message(self, data: bytes | str) -> bool:
        """Write one message now. True: the transport takes more; False: it is paused (or
        the connection is closing): queue until ``on_writable``."""
        if not self.open:
            return False
        try:
            if isinstance(data, str):
                self.conn.send_text(data.encode())
            else:
                self.conn.send_binary(data)
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return self.writable.is_set()

    def queue_message(self, data: bytes | str) -> None:
        """Frame one message for the next :meth:`flush` (nothing is written yet)."""
        if not self.open:
            return
        try:
            if isinstance(data, str):
                self.conn.send_text(data.encode())
            else:
                self.conn.send_binary(data)
        except InvalidState:
            pass

    def flush(self) -> bool:
        """Write every message framed so far in one write; as :meth:`write_message`."""
        if not self.open:
            return False
        output = self.conn.data_to_send()
        if output:
            self.transport.write(b"".join(output))
        return self.writable.is_set()

    def close_now(self, code: int, reason: str = "") -> None:
        """Send a close frame now, even if the peer does not read, and end the ASGI
        application's wait; abort the connection if the peer has not answered within
        ``CLOSE_TIMEOUT`` seconds."""
        if not self.open:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            self.transport.abort()
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused or self.held:  # read the peer's answering close frame
            self.read_paused = self.held = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def ping(self, now: float) -> None:
        """Send a keepalive ping (the shared timer calls this)."""
        if not self.open or self.ping_pending_since:
            return
        payload = os.urandom(4)
        self.pending_ping_payload = payload
        self.ping_pending_since = now
        self.conn.send_ping(payload)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def handle_pong(self, event: Frame) -> None:
        if self.pending_ping_payload is not None and bytes(event.data) == (
            self.pending_ping_payload
        ):
            self.pending_ping_payload = None
            self.ping_pending_since = 0.0

    def keepalive_failed(self) -> None:
        """No pong in time: the connection is dead; close it (1011) and abort."""
        if not self.open:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.INTERNAL_ERROR})
        self.conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.abort()

    def shutdown(self) -> None:
        """The server stops: a connection the gateway did not close yet gets 1001."""
        if self.handshake_complete and not self.close_sent and not self.disconnected:
            self.close_now(CloseCode.GOING_AWAY, "the gateway is going away")
            self.transport.close()
            return
        super().shutdown()


def protocol_classes(handshakes: Handshakes) -> tuple[type[HttpProtocol], type[SocketProtocol]]:
    """The protocol classes of one server, sharing its ``handshakes``."""
    http = type("GatewayHttpProtocol", (HttpProtocol,), {"handshakes": handshakes})
    return http, SocketProtocol
