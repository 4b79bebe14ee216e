"""The embedded registry with real node processes: who is alive, seen from a client."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

from meshes import LoneNode, eventually, process_exists, serving_nodes

from wiremesh.client import MeshClient, connect
from wiremesh.core.model import NodeInfo, NodeState
from wiremesh.errors import Unavailable
from wiremesh.proto import registry_pb2 as pb
from wiremesh.registry.embedded import RegistryServer, node_to_proto

ECHO = "svc_echo:Echo"


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    server = RegistryServer(ttl=1.5)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[LoneNode]]:
    """Node processes a test starts; every one is killed at teardown."""
    started: list[LoneNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def start_node(nodes: list[LoneNode], registry: str, folder: Path) -> LoneNode:
    node = LoneNode(ECHO, "echo", registry, folder).start()
    nodes.append(node)
    return node


async def test_a_killed_node_leaves_the_view_within_two_seconds(
    registry: RegistryServer, nodes: list[LoneNode], tmp_path: Path
) -> None:
    victim = start_node(nodes, registry.address, tmp_path)
    survivor = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 2)
        victim.send(signal.SIGKILL)
        await eventually(
            lambda: victim.node_id not in client.snapshot.by_id,
            2.0,
            "the killed node to leave the client's view",
        )
        assert survivor.node_id in client.snapshot.by_id
        assert victim.node_id not in registry.membership
        assert await client.call("echo.whoami") == {
            "node": survivor.node_id,
            "pid": survivor.pid,
        }


async def test_a_hung_node_leaves_the_view_within_two_seconds_and_returns_when_it_resumes(
    registry: RegistryServer, nodes: list[LoneNode], tmp_path: Path
) -> None:
    hung = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 1)
        hung.send(signal.SIGSTOP)
        try:
            await eventually(
                lambda: hung.node_id not in client.snapshot.by_id,
                2.0,
                "the hung node to leave the client's view",
            )
            assert process_exists(hung.pid)  # hung, not dead
        finally:
            hung.send(signal.SIGCONT)
        # alive again: its next heartbeat puts it back
        (back,) = await serving_nodes(client, "echo", 1, timeout=5)
        assert back.node_id == hung.node_id
        assert await client.call("echo.echo", "awake") == "awake"


async def test_nodes_register_again_when_the_registry_restarts_on_the_same_port(
    nodes: list[LoneNode], tmp_path: Path
) -> None:
    first = RegistryServer(ttl=1.5)
    await first.start()
    address = first.address
    second: RegistryServer | None = None
    client: MeshClient | None = None
    try:
        one = start_node(nodes, address, tmp_path)
        two = start_node(nodes, address, tmp_path)
        client = await connect(address)
        await serving_nodes(client, "echo", 2)
        await first.stop(0)
        await asyncio.sleep(1.0)  # the registry stays away for a while
        second = RegistryServer(port=first.port, ttl=1.5)
        await second.start()
        assert second.address == address
        # nobody tells the nodes: they find the new registry and register by themselves
        await eventually(
            lambda: {one.node_id, two.node_id} <= set(second.membership.snapshot().by_id),
            10,
            "both nodes to register with the new registry",
        )
        back = await serving_nodes(client, "echo", 2, timeout=10)
        assert {n.node_id for n in back} == {one.node_id, two.node_id}
        assert all(n.state is NodeState.SERVING for n in back)
        replies = {(await client.call("echo.whoami"))["node"] for _ in range(4)}
        assert replies == {one.node_id, two.node_id}
    finally:
        if client is not None:
            await client.close()
        if second is not None:
            await second.stop(0)
        await first.stop(0)


async def test_a_node_that_stops_gracefully_leaves_the_view(
    registry: RegistryServer, nodes: list[LoneNode], tmp_path: Path
) -> None:
    node = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 1)
        node.send(signal.SIGTERM)
        assert await node.exit_code() == 0
        await eventually(lambda: not client.nodes("echo"), 2.0, "the node to leave")
        assert "echo" in client.snapshot.services  # known service, no live node


async def test_connecting_to_an_absent_registry_fails_clearly(tmp_path: Path) -> None:
    server = RegistryServer()
    await server.start()
    address = server.address
    await server.stop(0)  # a port where nobody listens now
    with pytest.raises(Unavailable) as caught:
        await connect(address, timeout=0.5)
    assert f"no registry at {address}" in str(caught.value)
    assert "did not answer within 0.5s" in str(caught.value)


async def test_a_lease_stream_that_ends_late_does_not_remove_the_node_registered_again(
    registry: RegistryServer,
) -> None:
    # A node whose lease stream broke on its side registers again on a new stream; when
    # the registry notices the old stream's end later, the node must stay.
    node = NodeInfo("echo-0a0a", "echo", "127.0.0.1:1")

    async def lease(ended: asyncio.Event) -> AsyncIterator[pb.LeaseRequest]:
        # no heartbeat: a wrong removal would not be repaired before the check (ttl 1.5 s)
        yield pb.LeaseRequest(register=node_to_proto(node))
        await ended.wait()

    async with grpc.aio.insecure_channel(registry.address) as channel:
        call = channel.stream_unary(
            "/wiremesh.registry.v1.Registry/Lease",
            request_serializer=pb.LeaseRequest.SerializeToString,
            response_deserializer=pb.LeaseReply.FromString,
        )
        old_ended, new_ended = asyncio.Event(), asyncio.Event()
        old = call(lease(old_ended))
        await eventually(lambda: node.node_id in registry.membership, 5)
        version = registry.membership.version
        new = call(lease(new_ended))
        await eventually(lambda: registry.membership.version > version, 5, "the new register")
        old.cancel()
        await asyncio.sleep(0.5)  # time for the registry to see the old stream end
        assert node.node_id in registry.membership
        new_ended.set()
        await new
        await eventually(lambda: node.node_id not in registry.membership, 5, "the node to go")


async def test_a_call_in_flight_outlives_its_node_leaving_the_view(
    registry: RegistryServer, nodes: list[LoneNode], tmp_path: Path
) -> None:
    # The node hangs past its lease (it leaves every view), then resumes and answers:
    # the call's deadline is far, its connection never broke, so the answer must arrive.
    node = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 1)
        in_flight = asyncio.create_task(client.call("echo.slow", 1.0, timeout=30))
        await eventually(lambda: "slow call started" in node.output, 10, "the call to start")
        node.send(signal.SIGSTOP)
        try:
            await eventually(lambda: not client.nodes("echo"), 5, "the node to leave the view")
            await asyncio.sleep(1.5)  # longer than the channel's close grace
        finally:
            node.send(signal.SIGCONT)
        reply = await asyncio.wait_for(in_flight, 15)
        assert reply == {"slept": 1.0, "node": node.node_id}
