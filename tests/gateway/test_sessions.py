"""Browser sessions end to end: websockets clients -> a real gateway -> real nodes."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from tests.gateway.ws_mesh import Chat, chat_mesh, closed_with, connect
from wiremesh.core.envelope import parse, request
from wiremesh.testing import TestMesh, call_handler, worker

mesh = chat_mesh

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_binary_messages_echo_both_ways(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        assert ws.subprotocol == "wiremesh.v1"
        for size in (0, 1, 64, 4096):
            await ws.send(b"a" * size)
            assert await ws.recv() == b"a" * size


async def test_session_knows_its_principal_and_node(mesh: TestMesh) -> None:
    async with connect(mesh, subject="grace") as ws:
        await ws.send(b"!whoami")
        session_id, principal, node_id = (await ws.recv()).decode().split()  # type: ignore[union-attr]
    assert principal == "grace"
    assert session_id.startswith(mesh.gateway.gateway_id + ".")
    assert node_id in {n.node_id for n in mesh.nodes_of("chat")}


async def test_named_node_pins_the_session_there(mesh: TestMesh) -> None:
    for node in mesh.nodes_of("chat"):
        async with connect(mesh, node=node.node_id) as ws:
            await ws.send(b"!whoami")
            assert (await ws.recv()).decode().split()[2] == node.node_id  # type: ignore[union-attr]


async def test_many_sessions_spread_over_the_nodes(mesh: TestMesh) -> None:
    async with contextlib_stack(mesh, 6) as sockets:
        nodes = set()
        for ws in sockets:
            await ws.send(b"!whoami")
            nodes.add((await ws.recv()).decode().split()[2])  # type: ignore[union-attr]
    assert nodes == {n.node_id for n in mesh.nodes_of("chat")}


async def test_push_to_a_session_by_id_from_any_node(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        await ws.send(b"!whoami")
        session_id, _, node_id = (await ws.recv()).decode().split()  # type: ignore[union-attr]
        other = next(n for n in mesh.nodes_of("chat") if n.node_id != node_id)
        pushed = await mesh.call(
            "chat.push", {"session_id": session_id, "text": "hi"}, node=other.node_id
        )
        assert pushed is True
        assert await ws.recv() == b"hi"


async def test_push_to_every_session_of_a_principal(mesh: TestMesh) -> None:
    async with (
        connect(mesh, subject="lin") as a,
        connect(mesh, subject="lin") as b,
        connect(mesh, subject="other") as c,
    ):
        reached = await mesh.call("chat.shout", {"principal": "lin", "text": "all"})
        assert reached == 1  # one gateway
        assert await a.recv() == b"all"
        assert await b.recv() == b"all"
        await c.send(b"ping")
        assert await c.recv() == b"ping"  # and nothing else came first


async def test_request_reply_envelope(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        await ws.send(request(77, b"shout"))
        answer = parse(await ws.recv())  # type: ignore[arg-type]
    assert answer is not None and (answer.kind, answer.id, answer.payload) == (0x41, 77, b"SHOUT")


async def test_the_node_closes_a_session(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        await ws.send(b"!close")
        assert await closed_with(ws) == (4321, "bye")


async def test_the_node_refuses_a_session(mesh: TestMesh) -> None:
    token = mesh.token("mallory", banned=True)
    async with connect(mesh, token=token) as ws:
        assert await closed_with(ws) == (4003, "banned")


async def test_a_failing_handler_closes_its_session_with_1011(mesh: TestMesh) -> None:
    async with connect(mesh) as ws, connect(mesh) as bystander:
        await ws.send(b"!crash")
        assert (await closed_with(ws))[0] == 1011
        await bystander.send(b"still here")
        assert await bystander.recv() == b"still here"


async def test_a_handlers_own_timeout_and_task_group_are_its_own(mesh: TestMesh) -> None:
    node = mesh.nodes_of("chat")[0]
    async with connect(mesh, node=node.node_id) as ws, connect(mesh, node=node.node_id) as other:
        await ws.send(b"!timeout")
        await other.send(b"!whoami")  # served meanwhile
        assert (await asyncio.wait_for(other.recv(), 5)).decode().split()[2] == node.node_id  # type: ignore[union-attr]
        assert await asyncio.wait_for(ws.recv(), 5) == b"timed out"
        # the stream from the gateway lives on: both sessions still answer
        for socket in (ws, other):
            await socket.send(b"still here")
            assert await asyncio.wait_for(socket.recv(), 5) == b"still here"


async def test_a_handler_that_waits_keeps_the_order(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        await ws.send(b"!slow")
        await ws.send(b"after")
        assert await ws.recv() == b"slow done"
        assert await ws.recv() == b"after"


async def test_text_messages_are_refused_unless_the_service_takes_them(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        await ws.send("hello")
        assert (await closed_with(ws))[0] == 1003
    async with connect(mesh, "notes") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"bin")
        assert await ws.recv() == b"bin"


async def test_the_node_sees_open_and_close(mesh: TestMesh) -> None:
    node = mesh.nodes_of("chat")[0]
    async with connect(mesh, node=node.node_id) as ws:
        await ws.send(b"!whoami")
        session_id = (await ws.recv()).decode().split()[0]  # type: ignore[union-attr]
        assert session_id in node.service.opened  # type: ignore[attr-defined]
    closed = node.service.closed  # type: ignore[attr-defined]
    for _ in range(100):
        if any(c[0] == session_id for c in closed):
            break
        await asyncio.sleep(0.02)
    assert [c for c in closed if c[0] == session_id] == [(session_id, 1000, "")]


async def test_an_open_session_holds_no_task_of_the_gateway(mesh: TestMesh) -> None:
    def serving() -> list[asyncio.Task[object]]:
        """Tasks running the gateway's ASGI application (one per request while it runs)."""
        return [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "cr_code", None) is type(mesh.gateway.app).__call__.__code__
        ]

    before = len(mesh.gateway.table)
    async with contextlib_stack(mesh, 5) as sockets:
        for ws in sockets:
            await ws.send(b"!whoami")
            await ws.recv()
        assert len(mesh.gateway.table) == before + 5
        # each session lives in its protocol's callbacks: no task waits for its end
        assert serving() == []
        connections = [c for c in mesh.gateway.table if c.socket is not None]
        assert connections and all(c.socket.scope is None for c in connections)  # type: ignore[union-attr]
    # and each end still reaches the gateway's table
    for _ in range(100):
        if len(mesh.gateway.table) == before:
            break
        await asyncio.sleep(0.02)
    assert len(mesh.gateway.table) == before


class contextlib_stack:
    """Open ``count`` sessions at once."""

    def __init__(self, mesh: TestMesh, count: int) -> None:
        self.mesh = mesh
        self.count = count
        self.sockets: list[websockets.ClientConnection] = []

    async def __aenter__(self) -> list[websockets.ClientConnection]:
        for _ in range(self.count):
            self.sockets.append(await connect(self.mesh))
        return self.sockets

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            await ws.close()


async def test_a_worker_without_a_mesh_pushes_to_nobody() -> None:
    chat = worker(Chat)
    assert await call_handler(chat, "shout", {"principal": "ada", "text": "hi"}) == 0
    assert await call_handler(chat, "push", {"session_id": "gw.1", "text": "hi"}) is False
