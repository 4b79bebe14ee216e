"""The gateway's WebSocket protocol (gateway/socket_protocol.py) fed what a browser may
send once its WebSocket is open: frames nearly valid (any opcode, FIN bit, payload,
text that is not UTF-8, fragments out of order, close frames with odd codes), mutated,
cut at any point, with or without the end of the stream.

Whatever comes, ``data_received`` never raises, nothing is written after the protocol
ended the stream (asyncio refuses a write after ``write_eof``), the application hears
the end of the connection exactly once, and the application's task ends once the
connection is gone. The network is a fake transport here (the peer is what misbehaves);
the protocol, websockets and the ASGI side are the real ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
from typing import Any

import uvicorn
from hypothesis import example, given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from tests.fuzz.fuzzing import mutated
from wiremesh.gateway.socket_protocol import EXTENSION, SocketProtocol

SCENARIOS = settings.get_profile("wiremesh-fuzz-scenarios")

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nhost: gateway\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


class Wire(asyncio.Transport):
    """The network as the protocol sees it: what it wrote, and how it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.eof = False
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof:
            raise RuntimeError("write() after write_eof()")  # as asyncio's transports
        if not self.closed:
            self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )


def frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """A masked frame, as a browser sends them."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


payloads = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=20).map(str.encode),
    st.sampled_from([b"\xff\xfe", b"\xc3", b"close", b"echo"]),
    st.builds(
        lambda code, reason: struct.pack("!H", code) + reason,
        st.integers(0, 65535),
        st.binary(max_size=8),
    ),
)
frames = st.builds(frame, st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]), payloads, st.booleans())


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """What a browser sends after the handshake, cut into reads at random points."""
    data = b"".join(draw(st.lists(frames, min_size=1, max_size=8)))
    if draw(st.booleans()):
        data = draw(mutated(data))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The gateway's way: a receiver, direct writes, a close of its own on ``close``."""
    ended = scope["state"]["ended"]
    await receive()
    socket = scope["extensions"][EXTENSION]

    def received(data: bytes | str) -> None:
        if data in (b"close", "close"):
            socket.close_now(4000, "asked")
        elif data in (b"echo", "echo"):
            socket.queue_message(data)
            socket.flush()
        else:
            socket.write_message(data)

    socket.receiver = received
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            ended.append(message["code"])
            if len(ended) > 1 or (await receive())["type"] != "websocket.disconnect":
                raise AssertionError("told twice, or a message after the end")
            return


class Failures(logging.Handler):
    """The errors the gateway logs (a failure of its own while it handles a message)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def scenario(reads: list[bytes], eof: bool) -> None:
    failures = Failures()
    logging.getLogger("wiremesh.gateway").addHandler(failures)
    try:
        await exchange(reads, eof)
    finally:
        logging.getLogger("wiremesh.gateway").removeHandler(failures)
    assert not failures.records, [r.getMessage() for r in failures.records]


async def exchange(reads: list[bytes], eof: bool) -> None:
    ended: list[int] = []
    config = uvicorn.Config(app, ws_max_size=256, ws_per_message_deflate=False, log_config=None)
    config.load()
    state = ServerState()
    protocol = SocketProtocol(config=config, server_state=state, app_state={"ended": ended})
    wire = Wire()
    protocol.connection_made(wire)
    protocol.data_received(UPGRADE)
    for _ in range(3):
        await asyncio.sleep(0)
    assert wire.written.startswith(b"HTTP/1.1 101 ")
    for data in reads:
        if wire.closed:
            break
        protocol.data_received(data)
        await asyncio.sleep(0)
    if eof and not wire.closed:
        protocol.eof_received()
    protocol.connection_lost(None)
    if state.tasks:
        _, pending = await asyncio.wait(state.tasks, timeout=2)
        assert not pending, "the application's task did not end"
    assert len(ended) == 1, ended
    assert not state.connections


@SCENARIOS
@given(reads=streams(), eof=st.booleans())
# found by this test: the application closes on a message that came in one read with
# the peer's close frame (websockets is closing already)
@example(reads=[frame(2, b"close", True) + frame(8, struct.pack("!H", 1000), True)], eof=False)
@example(reads=[frame(2, b"echo", True) + frame(8, struct.pack("!H", 1000), True)], eof=False)
def test_whatever_a_browser_sends_the_protocol_ends_cleanly(reads: list[bytes], eof: bool) -> None:
    asyncio.run(scenario(reads, eof))
