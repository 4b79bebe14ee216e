"""The gateway's WebSocket connections: websockets' sans-I/O ``ServerProtocol`` under an
asyncio protocol of our own, which speaks ASGI to the application.

uvicorn hands a connection over once its HTTP protocol has read an upgrade request: it
builds the class given as ``Config(ws=...)`` with the keywords ``config``,
``server_state`` and ``app_state``, calls its ``connection_made`` with the transport,
makes it the transport's protocol and feeds it the request head with ``data_received``.
:class:`SocketProtocol` relies on that and on asyncio's and websockets' public interfaces
only (websockets' guide "Integrate the Sans-I/O layer": bytes in with ``receive_data``,
events out with ``events_received``, bytes out with ``data_to_send``).

To the application it is an ASGI WebSocket server (``websocket.connect``, ``accept``,
``send``, ``receive``, ``close``, ``disconnect``, and the ``websocket.http.response``
extension for a refusal with a body). ASGI has no way to write a message without
awaiting, to close a connection whose peer does not read, or to hand over a message
without a queue, so the gateway also gets the protocol itself under the
``wiremesh.socket`` scope extension (:data:`EXTENSION`):

- :attr:`SocketProtocol.receiver`: when set, each message the browser sends is handed to
  it directly, in ``data_received`` (no queue, no task switch); ``receive()`` then only
  reports the end of the connection. :meth:`~SocketProtocol.hold` and
  :meth:`~SocketProtocol.release` pause and resume reading (backpressure).
- :meth:`SocketProtocol.detach`: the end of the connection goes to a callback instead, and
  the application returns while the connection stays open. A detached connection holds
  no task, no coroutine, no future and no scope while it is idle: the gateway's sessions
  live in callbacks only.
- :meth:`SocketProtocol.write_message`: write one message now (no await, no task); it
  says whether the transport still takes more (else the caller queues until
  :attr:`~SocketProtocol.on_writable` is called). :meth:`~SocketProtocol.queue_message`
  and :meth:`~SocketProtocol.flush` write many messages in one system call.
- :meth:`SocketProtocol.close_now`: send a close frame even to a peer that does not
  read, and abort the connection if the closing handshake does not end in
  :data:`CLOSE_TIMEOUT` seconds.
- keepalive pings driven by the gateway's one shared timer (:meth:`SocketProtocol.ping`,
  :meth:`~SocketProtocol.keepalive_failed`) instead of a timer per connection.

A connection holds little (``benchmarks/connections.py`` measures the gateway's memory per
idle connection):

- slots instead of a ``__dict__``; no list until a message waits for ``receive()``, and
  ``receive()`` hands out a future (no coroutine of its own waits in it);
- once detached (:meth:`~SocketProtocol.detach`), not even that: the application's task
  and its coroutines are gone, and so is the scope;
- the application's task runs the application's coroutine itself (no wrapper coroutine),
  and one done callback ends it;
- the handshake's request headers go as soon as the scope is made (websockets' parser
  keeps the request for the connection's life), its response once it is sent;
- what is the same for many connections is shared: the scope's ``asgi`` dict and its
  extension's options, the server's address, the client's host, the path;
  websockets' connection id is kept as the integer it is made of
  (:class:`_ServerProtocol`).
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import http
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast
from urllib.parse import unquote

from uvicorn import Config
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import BytesLike

from wiremesh.gateway.codes import CloseCode

__all__ = ["CLOSE_TIMEOUT", "EXTENSION", "Disconnected", "SocketProtocol"]

log = logging.getLogger("wiremesh.gateway")


class _WarningsOnly(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger websockets gets: its warnings and errors only. At DEBUG it logs every
    request line (whose query string may hold a token) and every frame (with its
    payload), at INFO each connection's opening and closing; the gateway logs what
    matters itself, without payloads or tokens."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_websockets_log = _WarningsOnly(logging.getLogger("wiremesh.gateway.websockets"))

#: the scope extension that carries the :class:`SocketProtocol`
EXTENSION = "wiremesh.socket"
#: seconds a closing handshake may take before the connection is aborted
CLOSE_TIMEOUT = 5.0

Message = dict[str, Any]

# Where a connection is, as the application sees it. Messages from the browser reach the
# application up to OPEN; from CLOSING on, the connection only waits for its end.
CONNECTING = 0  # the upgrade request is in; the application has not answered it yet
OPEN = 1  # accepted: messages flow both ways
REFUSING = 2  # the application answers with an HTTP response (websocket.http.response)
CLOSING = 3  # a close frame or a response went out: waiting for the peer to close
CLOSED = 4  # the transport is gone

_BINARY, _TEXT, _CONT = Opcode.BINARY, Opcode.TEXT, Opcode.CONT
_PONG, _CLOSE = Opcode.PONG, Opcode.CLOSE

#: the answer to an upgrade request websockets could not read (uvicorn's HTTP parser
#: took it, so this is rare: a line or a header count over websockets' limits that it
#: does not answer itself)
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 56\r\n"
    b"\r\n"
    b"Failed to open a WebSocket connection: invalid request.\n"
)


class Disconnected(OSError):
    """The application's ``send`` on a connection that is gone (ASGI asks for an
    ``OSError``); the protocol ends the application's task quietly when it raises it."""


def _address(info: object) -> tuple[str, int] | None:
    """``(host, port)`` of a socket address (None for a Unix socket); the host's string
    is shared by every connection that has the same (``sys.intern``)."""
    if isinstance(info, tuple) and len(info) >= 2:
        return sys.intern(str(info[0])), int(info[1])
    return None


def _shared(cache: dict[Any, Any], value: Any) -> Any:
    """``value``, or the equal one ``cache`` holds already (a scope's server address, its
    path: the same for most connections); at most 256 kept."""
    found = cache.get(value)
    if found is not None:
        return found
    if len(cache) >= 256:
        cache.clear()
    cache[value] = value
    return value


_SERVERS: dict[tuple[str, int] | None, tuple[str, int] | None] = {}
_RAW_PATHS: dict[bytes, bytes] = {}


class SocketProtocol(asyncio.Protocol):
    """One WebSocket connection: websockets' ``ServerProtocol`` between the transport
    and an ASGI application, with direct writes, forced closes and pings that the
    gateway drives (see the module's docstring)."""

    __slots__ = (
        "_app",
        "_app_state",
        "_body",
        "_close_timer",
        "_config",
        "_drain_waiters",
        "_end",
        "_fragments",
        "_fragments_text",
        "_inbox",
        "_inbox_full",
        "_ping_payload",
        "_response",
        "_server_state",
        "_told",
        "_waiter",
        "_writable",
        "burst",
        "conn",
        "held",
        "last_ping_sent",
        "on_writable",
        "phase",
        "ping_pending_since",
        "receiver",
        "scope",
        "transport",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        #: the application as uvicorn wraps it (proxy headers and the like)
        self._app: Callable[..., Awaitable[None]] = config.loaded_app
        self._server_state = server_state
        self._app_state = app_state
        #: websockets' sans-I/O protocol: bytes in, events and bytes out
        self.conn: ServerProtocol = _ServerProtocol(
            extensions=_DEFLATE if config.ws_per_message_deflate else None,
            max_size=config.ws_max_size,
            logger=_websockets_log,
        )
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        #: the ASGI scope, once the upgrade request is in
        self.scope: dict[str, Any] | None = None
        #: where the connection is: CONNECTING, OPEN, REFUSING, CLOSING or CLOSED
        self.phase = CONNECTING
        #: takes each message the browser sends (bytes or str), instead of ``receive()``
        self.receiver: Callable[[bytes | str], None] | None = None
        #: called when the transport takes writes again after a pause
        self.on_writable: Callable[[], None] | None = None
        #: reading is paused by :meth:`hold`
        self.held = False
        #: the messages being handed to ``receiver`` came in one read (more follow at once)
        self.burst = False
        #: loop time of the last ping still unanswered (0: none), and of the last ping sent
        self.ping_pending_since = 0.0
        self.last_ping_sent = 0.0
        self._ping_payload: bytes | None = None
        # the 101 response until the application accepts; its refusal while it sends one
        self._response: Response | None = None
        self._body: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        # what receive() returns next (None: nothing), and the application's wait for it
        self._inbox: list[Message] | None = None
        self._waiter: asyncio.Future[Message] | None = None
        # reading is paused until the application takes the messages in the inbox
        self._inbox_full = False
        # the application has been told the connection ended (with this code and reason)
        self._told: tuple[int, str] | None = None
        # a detached connection's end goes here (see detach)
        self._end: Callable[[int, str], None] | None = None
        self._writable = True
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # a fragmented message being read, and whether it is text
        self._fragments: list[BytesLike] | None = None
        self._fragments_text = False

    # ------------------------------------------------------------------ asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # counted as uvicorn's own protocols are: its graceful shutdown waits for the
        # connections it holds and calls their shutdown()
        # (uvicorn's annotation of the set names its own protocol classes only)
        self._server_state.connections.add(self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn.state is State.CLOSED:
            return  # the connection was failed: what the peer still sends is dropped
        conn.receive_data(data)
        events = conn.events_received()
        if events:
            self.burst = len(events) > 1
            try:
                for event in events:
                    if isinstance(event, Frame):
                        opcode = event.opcode
                        if opcode is _BINARY or opcode is _TEXT:
                            if event.fin:
                                self._message(event.data, opcode is _TEXT)
                            else:
                                self._fragments = [event.data]
                                self._fragments_text = opcode is _TEXT
                        elif opcode is _CONT:
                            fragments = self._fragments
                            if fragments is not None:
                                fragments.append(event.data)
                                if event.fin:
                                    self._fragments = None
                                    self._message(b"".join(fragments), self._fragments_text)
                        elif opcode is _PONG:
                            self._pong(event.data)
                        elif opcode is _CLOSE:
                            self._closed_by_peer(event.data)
                        # a ping: websockets has queued the pong (sent below)
                    elif isinstance(event, Request):
                        self._connect(event)
            finally:
                self.burst = False
        elif self.phase == CONNECTING and self.scope is None and conn.handshake_exc is not None:
            # websockets could not read the upgrade request
            self.phase = CLOSING
            output = conn.data_to_send()
            self._write(output if any(output) else [_BAD_REQUEST, b""])
            return
        output = conn.data_to_send()
        if output:
            self._write(output)

    def eof_received(self) -> bool | None:
        conn = self.conn
        if conn.state is not State.CLOSED:
            conn.receive_eof()
            output = conn.data_to_send()
            if any(output):
                self.transport.write(b"".join(output))
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self._server_state.connections.discard(self)
        timer = self._close_timer
        if timer is not None:
            timer.cancel()
            self._close_timer = None
        if self._told is None:
            self._tell(*self._end_code())
        # a send() waiting for the transport to drain would wait forever otherwise
        self._writable = True
        self._wake_senders()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake_senders()
        callback = self.on_writable
        if callback is not None:
            callback()

    # ------------------------------------------------------------------ from the browser

    def _connect(self, request: Request) -> None:
        """The upgrade request: websockets checks it, then the application decides."""
        response = self.conn.accept(request)
        if response.status_code != 101:
            # not a valid WebSocket handshake: websockets' own answer, no application
            self.phase = CLOSING
            self.conn.send_response(response)
            return
        transport = self.transport
        config = self._config
        headers = [
            (k.lower().encode("ascii"), v.encode("latin-1")) for k, v in request.headers.raw_items()
        ]
        subprotocols = [
            p.strip()
            for v in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in v.split(",")
        ]
        raw_path, _, query = request.path.partition("?")
        root = config.root_path
        self.scope = {
            "type": "websocket",
            "asgi": _asgi(config.asgi_version),
            "http_version": "1.1",
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
            "server": _shared(_SERVERS, _address(transport.get_extra_info("sockname"))),
            "client": _address(transport.get_extra_info("peername")),
            "root_path": root,
            "path": sys.intern(root + unquote(raw_path)),
            "raw_path": _shared(_RAW_PATHS, root.encode("ascii") + raw_path.encode("ascii")),
            "query_string": query.encode("ascii"),
            "headers": headers,
            "subprotocols": [p for p in subprotocols if p],
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": _NO_OPTIONS, EXTENSION: self},
        }
        # websockets' parser keeps the request alive for the connection's life: its
        # headers (a browser's are a kilobyte or two) go now that the scope has a copy
        request.headers.clear()
        self._response = response
        self._put({"type": "websocket.connect"})
        app = self._app(self.scope, self.receive, self.send)
        task = asyncio.get_running_loop().create_task(
            app if asyncio.iscoroutine(app) else _awaited(app)
        )
        self._server_state.tasks.add(task)
        task.add_done_callback(self._app_ended, context=_CALLBACKS)

    def _message(self, data: BytesLike, text: bool) -> None:
        """One whole message from the browser."""
        if self.phase > OPEN:
            return  # closing: what still arrives is not read
        if text:
            try:
                message: bytes | str = str(data, "utf-8")
            except UnicodeDecodeError:
                # 8.1: a text message must be UTF-8; websockets leaves it to us
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                return
        else:
            message = data if isinstance(data, bytes) else bytes(data)  # bytes, in practice
        receiver = self.receiver
        if receiver is None:
            self._put(
                {"type": "websocket.receive", "text": message}
                if text
                else {"type": "websocket.receive", "bytes": message}
            )
            if self._inbox and not self._inbox_full:
                # one message at a time waits for the application (as uvicorn's do): the
                # one its receive() took already, and this one
                self._inbox_full = True
                self.transport.pause_reading()
            return
        try:
            receiver(message)
        except Exception:
            # a failure of the gateway's own: the browser gets a close frame (1011), not a
            # reset connection, and the rest of its messages are not read
            log.exception("a browser's message could not be handled; closing with 1011")
            self.close_now(CloseCode.INTERNAL_ERROR, "internal error")

    def _pong(self, payload: BytesLike) -> None:
        expected = self._ping_payload
        if expected is not None and bytes(payload) == expected:
            self._ping_payload = None
            self.ping_pending_since = 0.0

    def _closed_by_peer(self, payload: BytesLike) -> None:
        """The peer's close frame: websockets has queued the echo and the end of the
        stream (5.5.1); the application hears the peer's code, unless it closed first."""
        if self.phase < CLOSING:
            close = Close.parse(payload)
            self._tell(close.code, close.reason)
            self.phase = CLOSING

    def _fail(self, code: int, reason: str) -> None:
        """7.1.7. Fail the WebSocket Connection (websockets sends the close frame and
        ends the stream)."""
        self._tell(code, reason)
        self.phase = CLOSING
        self.conn.fail(code, reason)
        self._write(self.conn.data_to_send())

    # ------------------------------------------------------------------ to the browser

    def _write(self, output: list[bytes]) -> None:
        """Write what websockets has to send; an empty bytestring at its end ends the
        stream (websockets' ``SEND_EOF``)."""
        if output[-1]:
            self.transport.write(b"".join(output))
            return
        data = b"".join(output)
        if data:
            self.transport.write(data)
        self._end_stream()

    def _end_stream(self) -> None:
        """websockets ended the data stream: half-close the connection and expect the
        peer to close its side soon ("Close TCP connection" in websockets' guide)."""
        conn = self.conn
        if self.phase < CLOSING:
            # websockets failed the connection itself (a protocol error, a message over
            # the size limit): nothing more is read, and the application hears the code
            # it sent
            self.phase = CLOSING
            conn.receive_eof()
            self._tell(*self._end_code())
        transport = self.transport
        if not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()  # TLS: no half-close
        self._expect_close()

    def _expect_close(self) -> None:
        """The peer is to close the connection: read what it sends (its close frame,
        its end of stream) and abort if it has not closed within ``CLOSE_TIMEOUT``."""
        if self.held or self._inbox_full:
            self.held = self._inbox_full = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
        if self._close_timer is None and self.phase != CLOSED:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    @property
    def open(self) -> bool:
        """Accepted, and no close frame sent or received yet."""
        return self.phase == OPEN and not self.transport.is_closing()

    @property
    def can_write(self) -> bool:
        return self._writable

    def hold(self) -> None:
        """Stop reading from the browser (its messages wait in the kernel)."""
        if not self.held and self.phase <= OPEN:
            self.held = True
            self.transport.pause_reading()

    def release(self) -> None:
        if self.held:
            self.held = False
            if not self._inbox_full and not self.transport.is_closing():
                self.transport.resume_reading()

    def write_message(self, data: bytes | str) -> bool:
        """Write one message now. True: the transport takes more; False: it is paused (or
        the connection is closing): queue until ``on_writable``."""
        if self.phase != OPEN or self.transport.is_closing():
            return False
        conn = self.conn
        try:
            if isinstance(data, str):
                conn.send_text(data.encode())
            else:
                conn.send_binary(data)
        except InvalidState:
            return False
        # websockets took the frame, so it is open: no end of stream in what it sends
        self.transport.write(b"".join(conn.data_to_send()))
        return self._writable

    def queue_message(self, data: bytes | str) -> None:
        """Frame one message for the next :meth:`flush` (nothing is written yet)."""
        if self.phase != OPEN:
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
        if self.phase != OPEN or self.transport.is_closing():
            return False
        output = self.conn.data_to_send()
        if output:
            # websockets' answer to the peer may be in it, and the end of the stream
            self._write(output)
        return self._writable

    # ------------------------------------------------------------------ closing

    def close_now(self, code: int, reason: str = "") -> None:
        """Send a close frame now, even if the peer does not read, and end the ASGI
        application's wait; abort the connection if the peer has not answered within
        ``CLOSE_TIMEOUT`` seconds. Before the application accepted, abort at once."""
        phase = self.phase
        if phase >= CLOSING or self.transport.is_closing():
            return
        self._tell(code, reason)
        self.phase = CLOSING
        if phase != OPEN:
            self.transport.abort()
            return
        conn = self.conn
        # websockets may be closing already: a read brought this message and, after it,
        # the peer's close frame or a frame it failed the connection for (its answer goes
        # out at the end of that read)
        if conn.state is State.OPEN:
            # 7.1.2. Start the WebSocket Closing Handshake
            conn.send_close(code, reason)
            self._write(conn.data_to_send())
        self._expect_close()

    def ping(self, now: float) -> None:
        """Send a keepalive ping (the shared timer calls this)."""
        if not self.open or self.ping_pending_since:
            return
        payload = os.urandom(4)
        self._ping_payload = payload
        self.ping_pending_since = now
        self.conn.send_ping(payload)
        self._write(self.conn.data_to_send())

    def keepalive_failed(self) -> None:
        """No pong in time: the connection is dead; close it (1011) and abort."""
        if not self.open:
            return
        self._tell(CloseCode.INTERNAL_ERROR, "")
        self.phase = CLOSING
        self.conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        data = b"".join(self.conn.data_to_send())
        if data:
            self.transport.write(data)
        self.transport.abort()

    def shutdown(self) -> None:
        """The server stops (uvicorn's graceful shutdown): an open connection gets 1001,
        a pending upgrade a 500; then the transport closes."""
        phase = self.phase
        if phase == CLOSED:
            return
        if phase == OPEN:
            self.close_now(CloseCode.GOING_AWAY, "the gateway is going away")
        elif phase == CONNECTING and self.scope is not None:
            self._answer(self.conn.reject(500, "Internal Server Error"))
        self.transport.close()

    # ------------------------------------------------------------------ the application

    def detach(self, on_end: Callable[[int, str], None]) -> None:
        """The application leaves the open connection to its callbacks: ``on_end(code,
        reason)`` is called once, in a later loop turn, when the connection ends (at once if
        it has ended already), and the application may then return without the connection
        closing. Its messages go to :attr:`receiver`, its writes through
        :meth:`write_message` and the like. The scope goes, as the application's task and
        coroutines will."""
        told = self._told
        if told is not None:
            asyncio.get_running_loop().call_soon(on_end, *told)
            return
        self._end = on_end
        self.scope = None

    def _app_ended(self, task: asyncio.Task[None]) -> None:
        """The application's task on this connection ended (uvicorn counts the task
        while it runs)."""
        self._server_state.tasks.discard(task)
        if task.cancelled():
            self.transport.abort()  # uvicorn's shutdown gave up waiting
            return
        exc = task.exception()
        if exc is None:
            if self._end is not None and self.phase == OPEN:
                return  # detached: the connection lives on
            self._ended(CloseCode.NORMAL)
        elif isinstance(exc, Exception) and not isinstance(exc, Disconnected):
            log.error("the WebSocket application failed", exc_info=exc)
            self._ended(CloseCode.INTERNAL_ERROR)

    def _ended(self, code: int) -> None:
        """The application returned (or failed): answer what it left unanswered."""
        phase = self.phase
        if phase == CONNECTING:
            log.error("the WebSocket application ended without answering the upgrade")
            self._answer(self.conn.reject(500, "Internal Server Error"))
        elif phase == REFUSING:
            self.phase = CLOSING
            self.transport.close()
        elif phase == OPEN:
            self.close_now(code, "")

    def receive(self) -> asyncio.Future[Message]:
        """ASGI ``receive``: ``websocket.connect``, then the messages (without a
        ``receiver``), then ``websocket.disconnect`` (again at every later call). A
        future, not a coroutine: what waits in an idle connection is that future only."""
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if self._inbox:
            waiter.set_result(self._take(self._inbox))
        else:
            self._waiter = waiter
        return waiter

    def _take(self, inbox: list[Message]) -> Message:
        """The message ``receive()`` gives next (the end stays: it is given every time)."""
        message = inbox[0]
        if message["type"] != "websocket.disconnect":
            del inbox[0]
            if not inbox:
                self._inbox = None
                if self._inbox_full:
                    self._inbox_full = False
                    if not self.held and not self.transport.is_closing():
                        self.transport.resume_reading()
        return message

    async def send(self, message: Mapping[str, Any]) -> None:
        """ASGI ``send``."""
        if not self._writable and self.phase != CLOSED:
            await self._drained()
        kind = message["type"]
        phase = self.phase
        if phase == OPEN:
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                if data is not None and not self.write_message(data) and not self.open:
                    raise Disconnected
            elif kind == "websocket.close":
                self.close_now(
                    int(message.get("code") or CloseCode.NORMAL), message.get("reason") or ""
                )
            else:
                raise RuntimeError(f"expected 'websocket.send' or 'websocket.close', got {kind!r}")
        elif phase == CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                # a refusal without a body (ASGI: 403)
                self._answer(self.conn.reject(http.HTTPStatus.FORBIDDEN, ""))
            elif kind == "websocket.http.response.start":
                status = int(message["status"])
                if not 100 <= status < 600:
                    raise RuntimeError(f"invalid HTTP status code {status} in a response")
                self._body = (status, list(message.get("headers") or ()), b"")
                self.phase = REFUSING
            else:
                raise RuntimeError(
                    "expected 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {kind!r}"
                )
        elif phase == REFUSING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"expected 'websocket.http.response.body', got {kind!r}")
            assert self._body is not None
            status, headers, body = self._body
            body += message.get("body", b"")
            self._body = (status, headers, body)
            if not message.get("more_body", False):
                self._body = None
                fields = Headers()
                _add_headers(fields, [*self._server_state.default_headers, *headers])
                self._answer(_response(status, fields, body))
        else:
            raise Disconnected

    def _accept(self, message: Mapping[str, Any]) -> None:
        """``websocket.accept``: the 101 response with the application's headers."""
        response = self._response
        assert response is not None and self.scope is not None
        self._response = None
        self.phase = OPEN
        if self.transport.is_closing():
            return
        _add_headers(
            response.headers, [*self._server_state.default_headers, *(message.get("headers") or ())]
        )
        subprotocol = message.get("subprotocol")
        if subprotocol:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        # the handshake is over: what only it needed goes
        self.scope["headers"] = []
        self.scope["subprotocols"] = []

    def _answer(self, response: Response) -> None:
        """An HTTP answer instead of the upgrade; the application hears the end (1006,
        as the connection never opened) and the connection closes."""
        self._response = None
        self._tell(CloseCode.ABNORMAL, "")
        self.phase = CLOSING
        if self.transport.is_closing():
            return
        self.conn.send_response(response)
        self._write(self.conn.data_to_send())

    # ------------------------------------------------------------------ small parts

    def _put(self, message: Message) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = []
        inbox.append(message)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # (not cancelled)
                waiter.set_result(self._take(inbox))

    def _tell(self, code: int, reason: str) -> None:
        """The application hears that the connection ended, once."""
        if self._told is None:
            self._told = told = (int(code), reason)
            end = self._end
            if end is not None:
                self._end = None
                asyncio.get_running_loop().call_soon(end, *told)
            self._put({"type": "websocket.disconnect", "code": told[0], "reason": reason})

    def _end_code(self) -> tuple[int, str]:
        """The code and reason of a connection that ended without a close of the
        application's or the peer's: the code websockets sent when it failed the
        connection, else 1006 (no close frame)."""
        conn = self.conn
        if conn.state is not State.CLOSED:
            conn.receive_eof()
        if conn.state is State.CLOSED:
            sent = conn.close_exc.sent
            if sent is not None:
                return int(sent.code), sent.reason
        return CloseCode.ABNORMAL, ""

    async def _drained(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_senders(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)


def _add_headers(headers: Headers, extra: list[tuple[bytes, bytes]]) -> None:
    """Add ASGI headers (uvicorn's default ones first: the date it keeps and its
    ``Server``); a ``Date`` among them replaces websockets' own."""
    if any(name.lower() == b"date" for name, _ in extra) and "Date" in headers:
        del headers["Date"]
    for name, value in extra:
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")


def _response(status: int, fields: Headers, body: bytes) -> Response:
    """The HTTP response of a ``websocket.http.response`` refusal."""
    fields.setdefault("Date", email.utils.formatdate(usegmt=True))
    fields.setdefault("Connection", "close")
    fields.setdefault("Content-Length", str(len(body)))
    fields.setdefault("Content-Type", "text/plain; charset=utf-8")
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return Response(status, phrase, fields, body)


_DEFLATE = [
    # permessage-deflate, bounded: a 4 KiB window each way (as uvicorn configures it)
    ServerPerMessageDeflateFactory(
        server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
    )
]

#: the context ``_app_ended`` runs in (it sets no variable): one for every connection,
#: where a done callback gets a copy of the current one by default
_CALLBACKS = contextvars.Context()
#: the options of the ``websocket.http.response`` extension (none), shared by every scope
_NO_OPTIONS: dict[str, Any] = {}
_ASGI: dict[str, dict[str, str]] = {}


def _asgi(version: str) -> dict[str, str]:
    """The scope's ``asgi`` entry, one dict for every connection."""
    found = _ASGI.get(version)
    if found is None:
        found = _ASGI[version] = {"version": version, "spec_version": "2.4"}
    return found


async def _awaited(app: Awaitable[None]) -> None:
    """An application that returns an awaitable other than a coroutine, as a coroutine."""
    await app


class _ServerProtocol(ServerProtocol):
    """websockets' ``ServerProtocol``, whose ``id`` (a UUID, for logs) is kept as the
    integer it is made of: a ``UUID`` object is three times that, per connection."""

    _id: int

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(int=self._id)

    @id.setter
    def id(self, value: uuid.UUID) -> None:
        self._id = value.int
