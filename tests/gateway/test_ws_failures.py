"""When things end: a node drains or dies (1012), a gateway stops (1001), and pushes
reach sessions held by another gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from tests.gateway.ws_mesh import ROOMY, Chat, closed_with, connect
from wiremesh.testing import TestMesh, gateway_settings


@pytest_asyncio.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(
        Chat, replicas={"chat": 2}, gateway=gateway_settings(limits=ROOMY)
    ) as running:
        yield running


async def whoami(ws: object) -> list[str]:
    await ws.send(b"!whoami")  # type: ignore[attr-defined]
    return (await ws.recv()).decode().split()  # type: ignore[attr-defined, no-any-return]


async def test_a_draining_node_closes_its_sessions_with_1012(mesh: TestMesh) -> None:
    first, second = mesh.nodes_of("chat")
    async with (
        connect(mesh, node=first.node_id) as pinned,
        connect(mesh, node=second.node_id) as other,
    ):
        await mesh.stop_node(first)
        assert (await closed_with(pinned))[0] == 1012
        assert (await whoami(other))[2] == second.node_id
    # a client that reconnects lands on the live node
    async with connect(mesh) as again:
        assert (await whoami(again))[2] == second.node_id


async def test_a_node_that_dies_has_its_sessions_closed_with_1012(mesh: TestMesh) -> None:
    first, second = mesh.nodes_of("chat")
    async with (
        connect(mesh, node=first.node_id) as pinned,
        connect(mesh, node=second.node_id) as other,
    ):
        await first.server.server.stop(None)  # its gRPC server goes, streams and all
        async with asyncio.timeout(10):
            assert (await closed_with(pinned))[0] == 1012
        assert (await whoami(other))[2] == second.node_id
    mesh.nodes.remove(first)
    await first.stop(0)


async def test_a_gateway_that_stops_closes_with_1001(mesh: TestMesh) -> None:
    node = mesh.nodes_of("chat")[0]
    async with connect(mesh, node=node.node_id) as ws:
        session_id = (await whoami(ws))[0]
        await mesh.stop_gateway(mesh.gateway)
        assert await closed_with(ws) == (1001, "the gateway is going away")
    for _ in range(100):  # the node heard of it
        if any(c[0] == session_id for c in node.service.closed):  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.02)
    assert [c[1] for c in node.service.closed if c[0] == session_id] == [1001]  # type: ignore[attr-defined]


async def test_pushes_reach_sessions_on_every_gateway(mesh: TestMesh) -> None:
    second = await mesh.add_gateway(gateway_settings(limits=ROOMY))
    async with (
        connect(mesh, subject="kim") as on_first,
        connect(mesh, subject="kim", gateway=1) as on_second,
    ):
        session_id, _, node_id = await whoami(on_second)
        assert session_id.startswith(second.gateway_id + ".")
        # from the node that does not hold it, to the session on the second gateway
        other = next(n for n in mesh.nodes_of("chat") if n.node_id != node_id)
        assert await mesh.call(
            "chat.push", {"session_id": session_id, "text": "direct"}, node=other.node_id
        )
        assert await on_second.recv() == b"direct"
        reached = await mesh.call("chat.shout", {"principal": "kim", "text": "everyone"})
        assert reached == 2
        assert await on_first.recv() == b"everyone"
        assert await on_second.recv() == b"everyone"
        # a session that is gone is reported so
        assert not await mesh.call("chat.push", {"session_id": "gateway-000000.1", "text": "lost"})


async def test_the_node_side_sees_its_sessions(mesh: TestMesh) -> None:
    node = mesh.nodes_of("chat")[0]
    async with (
        connect(mesh, node=node.node_id, subject="zoe") as a,
        connect(mesh, node=node.node_id, subject="zoe") as b,
    ):
        ids = {(await whoami(a))[0], (await whoami(b))[0]}
        sessions = node.service.sessions  # type: ignore[attr-defined]
        assert {s.id for s in sessions.of_principal("zoe")} == ids
        assert all(sessions.get(i) is not None for i in ids)
        assert len(sessions) >= 2
