"""What the WebSocket benchmarks (``connections.py``, ``push.py``, ``channels.py``) share.

- the client side: :func:`upgrade_request` (the opening handshake, a token in
  ``Sec-WebSocket-Protocol``), :class:`WebSocketClient` (a minimal client on an asyncio
  ``Protocol``: cheap enough for one process to hold thousands), :func:`open_client` and
  :func:`grow` (many of them, over loopback source addresses);
- the two servers a broadcast is measured on: :func:`serve_token_gateway` (a gateway that
  hands out tokens) and :func:`serve_broadcast` (raw ``websockets`` and its
  ``broadcast``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from _common import raise_nofile, serve_gateway, serve_until_stopped

__all__ = [
    "WebSocketClient",
    "grow",
    "open_client",
    "serve_broadcast",
    "serve_token_gateway",
    "upgrade_request",
]

#: gives up on growing after this many connections failed
MOST_FAILED = 100
#: seconds a connection has to become ready
READY_TIMEOUT = 30.0


# ---------------------------------------------------------------------------- the client


def upgrade_request(port: int, path: str, token: str) -> bytes:
    """The opening handshake's request for ``path``, with ``token`` (if any) as a
    ``bearer.`` subprotocol beside ``wiremesh.v1``."""
    key = base64.b64encode(os.urandom(16)).decode()
    protocols = f"wiremesh.v1, bearer.{token}" if token else "wiremesh.v1"
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    ).encode()


class WebSocketClient(asyncio.Protocol):
    """A minimal WebSocket client: writes ``request`` (the opening handshake) once
    connected, answers pings, and calls ``on_message(opcode, payload, now)`` for each text
    or binary message (``now``: ``time.monotonic_ns()`` as the read that brought it
    returned). Messages are unfragmented and a client sends only small frames.

    ``opened`` is set to whether the server switched protocols (``False`` if the
    connection closed first); ``ready`` is the future :func:`open_client` waits on:
    ``opened`` unless a subclass has more to do before it is ready.
    """

    __slots__ = ("buffer", "on_message", "opened", "ready", "request", "transport")

    def __init__(self, request: bytes, on_message: Callable[[int, bytes, int], None]) -> None:
        self.request = request
        self.on_message = on_message
        self.buffer = b""
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.ready = self.opened
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def handshake_done(self, ok: bool) -> None:
        """Called as the answer to the opening handshake arrives (``ok``: the server
        switched protocols), before any message that came with it."""

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self.buffer + data if self.buffer else data
        if not self.opened.done():
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buffer
                return
            ok = head.startswith(b"HTTP/1.1 101")
            self.opened.set_result(ok)
            self.handshake_done(ok)
            buffer = rest
        # RFC 6455 5.2: a server's frames are not masked
        while len(buffer) >= 2:
            first, length = buffer[0], buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < offset + length:
                break
            payload = buffer[offset : offset + length]
            buffer = buffer[offset + length :]
            opcode = first & 0x0F
            if opcode in (0x1, 0x2):
                self.on_message(opcode, payload, now)
            elif opcode == 0x9:  # ping: pong with the same payload
                self.send(0xA, payload)
        self.buffer = buffer

    def send(self, opcode: int, payload: bytes) -> None:
        """One masked frame (RFC 6455 5.3), ``payload`` under 126 bytes."""
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)


Client = TypeVar("Client", bound=WebSocketClient)


async def open_client(
    factory: Callable[[], Client], port: int, source: str, window: asyncio.Semaphore
) -> Client | None:
    """Connect a client made by ``factory`` to ``127.0.0.1:port`` from address ``source``
    (a handshake in flight per slot of ``window``): the client once it is ready, or
    ``None`` if it failed (its connection closed) or was not ready in 30 s."""
    loop = asyncio.get_running_loop()
    async with window:
        try:
            _, client = await loop.create_connection(
                factory, "127.0.0.1", port, local_addr=(source, 0)
            )
            if await asyncio.wait_for(client.ready, READY_TIMEOUT):
                return client
            if client.transport is not None:
                client.transport.close()
        except (OSError, TimeoutError):
            pass
    return None


async def grow(
    clients: list[Client], count: int, connect: Callable[[int], Awaitable[Client | None]]
) -> int:
    """Add ``await connect(i)`` (``i``: the new client's index) to ``clients`` until it
    holds ``count`` or 100 have failed; how many failed."""
    failed = 0
    while len(clients) < count and failed < MOST_FAILED:
        got = await asyncio.gather(*(connect(i) for i in range(len(clients), count)))
        clients += [c for c in got if c is not None]
        failed += sum(c is None for c in got)
    return failed


# ---------------------------------------------------------------------------- servers


async def serve_token_gateway(
    registry: str, subject: str, limits: dict[str, Any], *, nofile: int
) -> None:
    """Server side: a gateway for the mesh at ``registry`` with ``[gateway.limits]``
    ``limits`` and ``nofile`` descriptors, until stopped. READY carries its ``port``, a
    ``token`` of ``subject`` and a ``control_token`` of ``control``, once its streams to
    the nodes are up."""
    from wiremesh.gateway.auth import mint_token

    async def ready(gateway: Any) -> dict[str, Any]:
        await gateway.wait_for_streams()
        assert gateway.dev_secret is not None
        return {
            "port": gateway.port,
            "token": mint_token(gateway.dev_secret, subject=subject, ttl=3600),
            "control_token": mint_token(gateway.dev_secret, subject="control", ttl=3600),
        }

    raise_nofile(nofile)
    await serve_gateway(registry, {"limits": limits}, ready)


async def serve_broadcast(
    publish: bytes,
    message: Callable[[int], str | bytes],
    *,
    nofile: int,
    info: dict[str, Any] | None = None,
    **options: Any,
) -> None:
    """Server side: a raw ``websockets`` server (the asyncio implementation) that keeps
    its connections in a set, with ``nofile`` descriptors, until stopped. A connection to
    ``/control`` asks with binary frames: ``publish`` + a 4-byte number calls
    ``broadcast(audience, message(number))``; ``n`` is answered ``count:<connections
    held>``. ``options`` go to ``serve`` (beside ``compression=None, backlog=4096``);
    READY carries ``port``, ``info`` and ``pid``."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    raise_nofile(nofile)
    audience: set[ServerConnection] = set()
    state: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/control":
            try:
                async for frame in ws:
                    assert isinstance(frame, bytes)
                    command, number = frame[:1], int.from_bytes(frame[1:5], "big")
                    if command == publish:
                        broadcast(audience, message(number))
                    elif command == b"n":
                        await ws.send(b"count:%d" % len(audience))
            except ConnectionClosed:
                pass
            return
        audience.add(ws)
        try:
            await ws.wait_closed()
        finally:
            audience.discard(ws)

    async def start() -> dict[str, Any]:
        server = await serve(handler, "127.0.0.1", 0, compression=None, backlog=4096, **options)
        state["server"] = server
        port = next(iter(server.sockets)).getsockname()[1]
        return {"port": port, **(info or {}), "pid": os.getpid()}

    async def stop() -> None:
        state["server"].close()
        await state["server"].wait_closed()

    await serve_until_stopped(start, stop)
