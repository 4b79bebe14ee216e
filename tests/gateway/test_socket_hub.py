"""The node's side of a gateway stream (gateway/socket_hub.py) over an in-memory stream:
a session's turns as its handlers and its gateway see them (the rules themselves are
tests/core/test_session_inbox.py's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from wiremesh import Service, Session, on_socket
from wiremesh.gateway.socket_hub import SocketHub
from wiremesh.proto import gateway_pb2 as pb
from wiremesh.service import ServiceSpec

EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs do not know it


class Wire:
    """An in-memory ``Gateway/Connect`` stream whose gateway end the test plays: what it
    :meth:`sends <send>` the node reads; what the node writes is kept in ``written``."""

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[Any] = asyncio.Queue()
        self.written: list[pb.Batch] = []

    def send(self, *frames: pb.Frame) -> None:
        self._incoming.put_nowait(pb.Batch(frames=frames))

    def end(self) -> None:
        self._incoming.put_nowait(EOF)

    async def read(self) -> Any:
        return await self._incoming.get()

    async def write(self, message: pb.Batch) -> None:
        self.written.append(message)

    def closes(self) -> list[tuple[int, int, str]]:
        """The CLOSE frames the node wrote: (session number, code, reason)."""
        return [
            (f.session, f.code, f.reason)
            for batch in self.written
            for f in batch.frames
            if f.kind == pb.Frame.CLOSE
        ]


class Chat(Service):
    """Writes down what runs: ``b"wait"`` waits for :attr:`gate`, ``b"close"`` closes
    its own session before its handler ends."""

    name = "chat"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.gate = asyncio.Event()

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        self.events.append(f"start {frame.decode()}")
        if frame == b"wait":
            await self.gate.wait()
        elif frame == b"close":
            await session.close(4000, "done")
        self.events.append(f"end {frame.decode()}")

    async def on_session_close(self, session: Session, code: int, reason: str) -> None:
        self.events.append(f"closed {code} {reason}")


def opening(number: int = 1) -> pb.Frame:
    return pb.Frame(
        kind=pb.Frame.OPEN, session=number, session_id=f"gw-1.{number}", principal="ada"
    )


def data(payload: bytes, number: int = 1) -> pb.Frame:
    return pb.Frame(kind=pb.Frame.DATA, session=number, payload=payload)


async def until(condition: Callable[[], object], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"still not {what}")


@pytest.fixture
async def node() -> AsyncIterator[tuple[SocketHub, Chat, Wire]]:
    chat = Chat()
    hub = SocketHub(ServiceSpec.of(Chat), chat, node_id="chat-1", inbox_limit=2)
    wire = Wire()
    serving = asyncio.create_task(hub.accept(wire))
    yield hub, chat, wire
    chat.gate.set()
    wire.end()
    await asyncio.wait_for(serving, 5)
    await hub.close(0.5)


async def test_a_handler_that_falls_behind_past_the_inbox_limit_closes_its_session_with_4008(
    node: tuple[SocketHub, Chat, Wire],
) -> None:
    hub, chat, wire = node
    wire.send(opening(), data(b"wait"), data(b"1"), data(b"2"))  # exactly the limit waits
    await until(lambda: chat.events == ["start wait"], "waiting")
    await asyncio.sleep(0.01)
    assert wire.closes() == [] and hub.sessions.get("gw-1.1") is not None
    wire.send(data(b"3"))  # one more
    await until(wire.closes, "closed")
    assert wire.closes() == [(1, 4008, "the node cannot keep up")]
    assert hub.sessions.get("gw-1.1") is None
    chat.gate.set()
    # the running handler ends; what waited is dropped; the close hook runs once, last
    await until(lambda: len(chat.events) == 3, "the close hook ran")
    assert chat.events == ["start wait", "end wait", "closed 4008 the node cannot keep up"]


async def test_a_handler_that_closes_its_session_ends_before_the_close_hook_runs(
    node: tuple[SocketHub, Chat, Wire],
) -> None:
    _, chat, wire = node
    wire.send(opening(), data(b"close"))
    await until(lambda: len(chat.events) == 3, "the close hook ran")
    assert chat.events == ["start close", "end close", "closed 4000 done"]
    assert wire.closes() == [(1, 4000, "done")]


async def test_what_waits_when_the_gateway_closes_the_session_runs_before_the_close_hook(
    node: tuple[SocketHub, Chat, Wire],
) -> None:
    hub, chat, wire = node
    wire.send(opening(), data(b"wait"), data(b"1"))
    await until(lambda: chat.events == ["start wait"], "waiting")
    wire.send(pb.Frame(kind=pb.Frame.CLOSE, session=1, code=1000, reason="bye"))
    await until(lambda: hub.sessions.get("gw-1.1") is None, "forgotten")
    chat.gate.set()
    await until(lambda: len(chat.events) == 5, "the close hook ran")
    assert chat.events == ["start wait", "end wait", "start 1", "end 1", "closed 1000 bye"]
    assert wire.closes() == []  # the gateway closed it: nothing to tell it


async def test_sessions_do_not_wait_for_each_other(
    node: tuple[SocketHub, Chat, Wire],
) -> None:
    _, chat, wire = node
    wire.send(opening(1), opening(2), data(b"wait", 1), data(b"x", 2))
    await until(lambda: "end x" in chat.events, "the other session handled")
    assert chat.events == ["start wait", "start x", "end x"]


async def test_a_stream_that_ends_closes_its_sessions_with_1006(
    node: tuple[SocketHub, Chat, Wire],
) -> None:
    hub, chat, wire = node
    wire.send(opening())
    await until(lambda: len(hub.sessions) == 1, "open")
    session = hub.sessions.get("gw-1.1")
    assert session is not None and not session.closed
    wire.end()
    await until(lambda: chat.events, "the close hook ran")
    assert chat.events == ["closed 1006 the gateway stream ended"]
    assert session.closed and len(hub.sessions) == 0
