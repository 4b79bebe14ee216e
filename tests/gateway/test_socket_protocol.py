"""The gateway's WebSocket protocol under a real uvicorn server, with real clients: the
ASGI side (connect, accept, refuse, receive, send, close, disconnect codes) and what the
gateway gets besides ASGI (a receiver, direct writes, holding, forced closes, pings).

The application here is a small ASGI one of the test's own, not the gateway's, so that
each case reaches the protocol alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from wiremesh.gateway import socket_protocol
from wiremesh.gateway.http_protocol import Handshakes, protocol_classes
from wiremesh.gateway.socket_protocol import EXTENSION, SocketProtocol

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Session:
    """What the application saw of one WebSocket connection."""

    path: str
    socket: SocketProtocol | None = None
    received: list[bytes | str] = field(default_factory=list)
    ended: asyncio.Future[tuple[int, str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class App:
    """An ASGI application whose behaviour each path names."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.opened = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        session = Session(scope["path"])
        self.sessions.append(session)
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"]
        if path == "/refuse":
            body = b'{"title":"Forbidden"}'
            headers = [(b"content-type", b"application/problem+json"), (b"retry-after", b"5")]
            await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            session.ended.set_result(_code(await receive()))
            return
        if path == "/close-first":
            await send({"type": "websocket.close"})
            return
        if path == "/fail":
            raise RuntimeError("the application failed")
        socket = scope["extensions"][EXTENSION]
        session.socket = socket
        if path in ("/detached", "/detach-after-end"):
            return await self.detached(session, socket, receive, send)
        if path == "/direct":  # the gateway's way: messages to a receiver, direct writes

            def echo(data: bytes | str) -> None:
                session.received.append(data)
                socket.write_message(data)

            socket.receiver = echo
        await send({"type": "websocket.accept", "subprotocol": "wiremesh.v1"})
        assert scope["headers"] == []  # dropped once accepted
        self.opened.set()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                session.ended.set_result(_code(message))
                return
            data = message.get("bytes")
            data = data if data is not None else message["text"]
            session.received.append(data)
            if path == "/asgi":
                key = "bytes" if isinstance(data, bytes) else "text"
                await send({"type": "websocket.send", key: data})

    async def detached(
        self, session: Session, socket: SocketProtocol, receive: Receive, send: Send
    ) -> None:
        """The gateway's way since sessions hold no task: accept, hand the connection to
        callbacks, return."""

        def echo(data: bytes | str) -> None:
            session.received.append(data)
            socket.write_message(data)

        def on_end(code: int, reason: str) -> None:
            session.ended.set_result((code, reason))

        socket.receiver = echo
        await send({"type": "websocket.accept"})
        self.opened.set()
        if session.path == "/detach-after-end":
            _code(await receive())  # the connection has ended before it detaches
        socket.detach(on_end)


def _code(message: dict[str, Any]) -> tuple[int, str]:
    assert message["type"] == "websocket.disconnect"
    return message["code"], message.get("reason") or ""


@dataclass
class Running:
    app: App
    server: uvicorn.Server
    handshakes: Handshakes
    port: int

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def session(self) -> Session:
        await asyncio.wait_for(self.app.opened.wait(), 5)
        self.app.opened.clear()
        return self.app.sessions[-1]


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Running]:
    """uvicorn serving the test's application with the gateway's protocol classes."""
    app = App()
    handshakes = Handshakes()
    http, ws = protocol_classes(handshakes)
    config = uvicorn.Config(
        app,
        http=http,
        ws=ws,
        ws_max_size=1024,
        ws_ping_interval=None,
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=1,
    )
    config.load()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # as the gateway starts it
    await server.startup(sockets=[listener])
    try:
        yield Running(app, server, handshakes, listener.getsockname()[1])
    finally:
        await server.shutdown()


def connect(running: Running, path: str, **options: Any) -> ws_connect:
    return ws_connect(
        running.url(path),
        subprotocols=["wiremesh.v1"],  # type: ignore[list-item]
        compression=None,
        **options,
    )


async def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed:
        pass
    frame = ws.protocol.close_rcvd
    return (frame.code, frame.reason) if frame is not None else (None, "")


async def raw_upgrade(port: int, path: str) -> socket.socket:
    """A WebSocket opened by hand: a socket past its 101 that answers nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await loop.sock_recv(sock, 4096)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    return sock


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sent until it closed the connection."""
    loop = asyncio.get_running_loop()
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


# ------------------------------------------------------------------ the ASGI side


async def test_messages_travel_through_asgi_receive_and_send(served: Running) -> None:
    async with connect(served, "/asgi") as ws:
        assert ws.subprotocol == "wiremesh.v1"
        await ws.send(b"binary")
        assert await ws.recv() == b"binary"
        await ws.send("text ✓")
        assert await ws.recv() == "text ✓"
        await ws.send([b"frag", b"mented"])  # one message in three frames
        assert await ws.recv() == b"fragmented"
        session = await served.session()
        await ws.close(4321, "bye")
    assert await session.ended == (4321, "bye")
    assert session.received == [b"binary", "text ✓", b"fragmented"]


async def test_a_refusal_answers_with_the_applications_status_headers_and_body(
    served: Running,
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(served, "/refuse"):
            pass
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert response.body == b'{"title":"Forbidden"}'
    # the connection never opened
    assert await served.app.sessions[-1].ended == (1006, "")


async def test_a_close_before_accepting_is_a_403_and_a_failure_a_500(served: Running) -> None:
    for path, status in [("/close-first", 403), ("/fail", 500)]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(served, path):
                pass
        assert refused.value.response.status_code == status


async def test_an_invalid_handshake_gets_websockets_answer_and_what_follows_is_dropped(
    served: Running, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.setblocking(False)
    head = (
        b"GET /direct HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: not-a-key\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, head)
    await asyncio.sleep(0.1)
    with contextlib.suppress(ConnectionError):
        await loop.sock_sendall(sock, b"more bytes from a confused client")
    await asyncio.sleep(0.1)  # the server reads them
    received = await until_closed(sock)
    assert received.startswith(b"HTTP/1.1 400 "), received
    assert not served.app.sessions  # the application never saw it
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_peers_close_code_and_reason_reach_the_application(served: Running) -> None:
    async with connect(served, "/direct") as ws:
        session = await served.session()
        await ws.close(4000, "leaving")
    assert await session.ended == (4000, "leaving")


async def test_a_dropped_connection_ends_with_1006(served: Running) -> None:
    sock = await raw_upgrade(served.port, "/direct")
    session = await served.session()
    sock.close()
    assert await asyncio.wait_for(session.ended, 5) == (1006, "")


# ------------------------------------------------------------------ beside ASGI


async def test_a_receiver_gets_each_message_and_write_message_answers_at_once(
    served: Running,
) -> None:
    async with connect(served, "/direct") as ws:
        messages: list[bytes | str] = [b"one", "two", b"three"]
        for message in messages:
            await ws.send(message)
            assert await ws.recv() == message
        session = await served.session()
    assert session.received == [b"one", "two", b"three"]
    assert await session.ended == (1000, "")


async def test_queued_messages_go_out_together_at_flush(served: Running) -> None:
    async with connect(served, "/direct") as ws:
        socket = (await served.session()).socket
        assert socket is not None
        for i in range(3):
            socket.queue_message(b"%d" % i)
        assert socket.flush() is True
        assert [await ws.recv() for _ in range(3)] == [b"0", b"1", b"2"]


async def test_held_messages_wait_until_released(served: Running) -> None:
    async with connect(served, "/direct") as ws:
        session = await served.session()
        assert session.socket is not None
        session.socket.hold()
        await ws.send(b"waits")
        await asyncio.sleep(0.1)
        assert session.received == []
        session.socket.release()
        assert await ws.recv() == b"waits"


async def test_close_now_sends_its_code_and_the_application_hears_it(served: Running) -> None:
    async with connect(served, "/direct") as ws:
        session = await served.session()
        assert session.socket is not None
        session.socket.close_now(4008, "slow consumer")
        assert session.socket.write_message(b"after") is False
        assert await closed_with(ws) == (4008, "slow consumer")
    assert await session.ended == (4008, "slow consumer")


async def test_a_peer_that_never_answers_a_close_is_aborted(
    served: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket_protocol, "CLOSE_TIMEOUT", 0.2)
    sock = await raw_upgrade(served.port, "/direct")
    session = await served.session()
    assert session.socket is not None
    session.socket.close_now(1000)
    received = await until_closed(sock, timeout=3)
    assert received[:2] == b"\x88\x02"  # a close frame, then the connection ended


async def test_a_ping_is_pending_until_its_pong(served: Running) -> None:
    async with connect(served, "/direct") as ws:
        socket = (await served.session()).socket
        assert socket is not None
        socket.ping(123.0)
        assert socket.ping_pending_since == 123.0
        socket.ping(124.0)  # one at a time
        assert socket.ping_pending_since == 123.0
        await ws.send(b"x")  # the client answers the ping before this is echoed
        assert await ws.recv() == b"x"
        assert socket.ping_pending_since == 0.0


async def test_a_failed_keepalive_drops_the_connection_with_1011(served: Running) -> None:
    sock = await raw_upgrade(served.port, "/direct")
    session = await served.session()
    assert session.socket is not None
    session.socket.ping(1.0)
    session.socket.keepalive_failed()
    await until_closed(sock)
    assert (await session.ended)[0] == 1011


async def test_a_browser_that_does_not_read_pauses_writes_until_it_drains(
    served: Running,
) -> None:
    loop = asyncio.get_running_loop()
    sock = await raw_upgrade(served.port, "/direct")
    session = await served.session()
    socket = session.socket
    assert socket is not None
    woken = asyncio.Event()
    socket.on_writable = woken.set
    chunk = b"x" * 65536
    while socket.write_message(chunk):  # the kernel's buffers fill, then asyncio's
        pass
    assert not socket.can_write
    # reading it all lets the transport drain
    while not woken.is_set():
        await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
    assert socket.can_write
    sock.close()


async def test_invalid_utf8_in_a_text_message_closes_with_1007(served: Running) -> None:
    sock = await raw_upgrade(served.port, "/direct")
    session = await served.session()
    await asyncio.get_running_loop().sock_sendall(sock, masked_frame(0x1, b"\xff\xfe"))
    received = await until_closed(sock)
    assert received[0] == 0x88 and struct.unpack("!H", received[2:4])[0] == 1007
    assert (await session.ended)[0] == 1007


async def test_a_message_over_the_size_limit_closes_with_1009(served: Running) -> None:
    async with connect(served, "/direct", max_size=None) as ws:
        session = await served.session()
        await ws.send(b"x" * 1025)
        assert (await closed_with(ws))[0] == 1009
    assert (await session.ended)[0] == 1009


async def test_websockets_own_lines_never_reach_the_logs(
    served: Running, caplog: pytest.LogCaptureFixture
) -> None:
    # at DEBUG websockets logs request lines (a token may be in the query) and payloads
    caplog.set_level(logging.DEBUG)
    async with connect(served, "/direct?token=secret-token") as ws:
        await ws.send(b"secret payload")
        assert await ws.recv() == b"secret payload"
    await served.app.sessions[-1].ended
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("wiremesh"))
    assert "secret" not in logged


async def test_a_detached_connection_lives_on_in_callbacks_without_a_task(
    served: Running,
) -> None:
    async with connect(served, "/detached") as ws:
        session = await served.session()
        await ws.send(b"one")
        assert await ws.recv() == b"one"
        # the application returned: no task, no scope, and the connection is open
        assert not served.server.server_state.tasks
        assert session.socket is not None and session.socket.scope is None
        assert session.socket.open
        await ws.send("two")
        assert await ws.recv() == "two"
        assert not session.ended.done()
        await ws.close(4000, "leaving")
    assert await asyncio.wait_for(session.ended, 5) == (4000, "leaving")
    assert session.received == [b"one", "two"]


async def test_a_detached_connection_reports_each_way_it_ends(served: Running) -> None:
    # closed by the server
    async with connect(served, "/detached") as ws:
        session = await served.session()
        assert session.socket is not None
        session.socket.close_now(4008, "slow")
        assert await closed_with(ws) == (4008, "slow")
    assert await asyncio.wait_for(session.ended, 5) == (4008, "slow")
    # dropped
    sock = await raw_upgrade(served.port, "/detached")
    session = await served.session()
    sock.close()
    assert await asyncio.wait_for(session.ended, 5) == (1006, "")
    # a message over the limit: websockets fails the connection
    async with connect(served, "/detached", max_size=None) as ws:
        session = await served.session()
        await ws.send(b"x" * 2000)
        assert (await closed_with(ws))[0] == 1009
    assert (await asyncio.wait_for(session.ended, 5))[0] == 1009
    # the server shutting down
    async with connect(served, "/detached") as ws:
        session = await served.session()
        await served.server.shutdown()
        assert (await closed_with(ws))[0] == 1001
    assert (await asyncio.wait_for(session.ended, 5))[0] == 1001
    assert not served.server.server_state.connections


async def test_detaching_a_connection_that_has_ended_reports_its_end_at_once(
    served: Running,
) -> None:
    async with connect(served, "/detach-after-end") as ws:
        session = await served.session()
        await ws.close(4001, "gone before")
    assert await asyncio.wait_for(session.ended, 5) == (4001, "gone before")


async def test_a_shutting_down_server_closes_open_connections_with_1001(
    served: Running,
) -> None:
    async with connect(served, "/direct") as ws:
        session = await served.session()
        await served.server.shutdown()  # uvicorn's graceful shutdown
        assert (await closed_with(ws))[0] == 1001
    assert (await session.ended)[0] == 1001
    assert not served.server.server_state.connections


async def test_an_open_connection_keeps_its_id_as_an_integer_and_gives_a_uuid(
    served: Running,
) -> None:
    async with ws_connect(served.url("/asgi"), subprotocols=["wiremesh.v1"]) as ws:  # type: ignore[list-item]
        session = await served.session()
        assert session.socket is not None
        conn = session.socket.conn
        # kept as an integer, given as websockets gives it
        assert isinstance(conn.id, uuid.UUID) and conn.id == conn.id
        await ws.send(b"still parsed")
        assert await ws.recv() == b"still parsed"
