"""The gateway's HTTP protocol under a real uvicorn server: which connections wait for a
request head (and so are closed by :meth:`Handshakes.expire` when it is late), and that
uvicorn's HTTP and its upgrades work through it unchanged, with either parser (h11 and
httptools)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
import websockets

from wiremesh.gateway.http_protocol import Handshakes, protocol_classes
from wiremesh.runtime import loop as event_loop

#: the parsers the gateway drives (``WIREMESH_HTTP_PARSER``)
PARSERS = ("h11", "httptools")

HEAD = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes an HTTP request's body; accepts a WebSocket and waits for its end."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    length = str(len(body)).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Running:
    handshakes: Handshakes
    port: int
    parser: str

    @property
    def waiting(self) -> int:
        """How many connections wait for a head."""
        return len(self.handshakes.pending)

    def expire_all(self) -> int:
        """Close every connection waiting for a head (as if the timeout passed)."""
        return self.handshakes.expire(asyncio.get_running_loop().time() + 60.0, 10.0)


@pytest_asyncio.fixture(params=PARSERS)
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    async with serving(request.param) as running:
        yield running


@contextlib.asynccontextmanager
async def serving(parser: str) -> AsyncIterator[Running]:
    handshakes = Handshakes()
    http, ws = protocol_classes(handshakes, parser)
    config = uvicorn.Config(
        app, http=http, ws=ws, lifespan="off", log_config=None, timeout_keep_alive=30
    )
    config.load()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # as the gateway starts it
    await server.startup(sockets=[listener])
    try:
        yield Running(handshakes, listener.getsockname()[1], parser)
    finally:
        await server.shutdown()


async def settle() -> None:
    """Let the server read what was sent."""
    await asyncio.sleep(0.05)


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One answer's body (its head says how long it is)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if b"content-length" in line
    )
    return await reader.readexactly(length)


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionError:
        return True


async def test_a_connection_waits_for_its_head_from_its_start_and_is_closed_when_late(
    served: Running,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    await settle()
    assert served.waiting == 1
    writer.write(HEAD[:20])  # half a head does not count
    await settle()
    assert served.expire_all() == 1
    assert await closed(reader)


async def test_a_head_split_over_reads_arrives_and_the_next_ones_clock_starts_with_its_first_byte(
    served: Running,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    for part in (HEAD[:-3], HEAD[-3:-1], HEAD[-1:]):  # the empty line straddles reads
        writer.write(part)
        await settle()
    assert served.waiting == 0
    writer.write(b"hello")
    assert await answer(reader) == b"hello"
    await asyncio.sleep(0.1)  # between requests: keep-alive's time, not a head's
    assert served.waiting == 0
    writer.write(HEAD)  # a whole head at once never waits
    writer.write(b"again")
    assert await answer(reader) == b"again"
    assert served.waiting == 0
    writer.write(HEAD[:10])
    await settle()
    assert served.waiting == 1
    assert served.expire_all() == 1
    assert await closed(reader)


async def test_a_body_still_coming_after_its_answer_is_timed_as_a_head(served: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: test\r\n\r\n")
    assert await answer(reader) == b""
    writer.write(b"xxxx")  # no head ever ends here
    await settle()
    if served.parser == "h11":  # h11 waits for the rest of a request line: on the clock
        assert served.waiting == 1
    else:  # llhttp refuses "xxxx" as a method at once: 400, and the connection closes
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest.startswith(b"HTTP/1.1 400 ")
        assert served.waiting == 0


async def test_a_body_after_100_continue_is_not_a_head(served: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(HEAD[:-2] + b"Expect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(b"he")
    await settle()
    assert served.waiting == 0
    writer.write(b"llo")
    assert await answer(reader) == b"hello"


async def test_an_upgraded_connection_waits_for_no_head(served: Running) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{served.port}/ws") as ws:
        await settle()
        assert served.waiting == 0
        await ws.ping()
    await settle()
    assert served.waiting == 0


@pytest.mark.parametrize("parser", PARSERS)
def test_on_uvloop_it_answers_times_heads_and_upgrades(
    parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway's processes run on when ``wiremesh[speed]`` is installed: uvloop's
    transports, which are not subclasses of asyncio's."""
    monkeypatch.setenv(event_loop.ENV, "uvloop")

    async def scenario() -> None:
        assert event_loop.running() == "uvloop"
        async with serving(parser) as served:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(HEAD + b"hello")
            assert await answer(reader) == b"hello"
            writer.write(HEAD[:20])  # the next head, late
            await settle()
            assert served.waiting == 1
            assert served.expire_all() == 1
            assert await closed(reader)
            async with websockets.connect(f"ws://127.0.0.1:{served.port}/ws") as ws:
                await ws.ping()
                assert served.waiting == 0

    event_loop.run(scenario())
