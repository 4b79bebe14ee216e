"""A node's start order, as the mesh sees it: its queues are bound before its lease, so an
event emitted the moment a service's first node appears reaches it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fixtures.meshes import eventually
from wiremesh import Context, Service, on_event
from wiremesh.client import MeshClient
from wiremesh.core.defaults import TTL
from wiremesh.core.model import NodeInfo
from wiremesh.messaging.backends import open_broker
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.registry.embedded import RegistryServer
from wiremesh.runtime.node import Node, NodeMembership


class Listener(Service):
    name = "listener"

    def __init__(self) -> None:
        self.heard: list[int] = []

    @on_event("pings.*")
    async def hear(self, ctx: Context, n: int) -> None:
        self.heard.append(n)


async def test_a_new_service_has_its_queues_bound_before_the_mesh_sees_its_node(
    tmp_path: Path,
) -> None:
    broker_server = BrokerServer(tmp_path / "broker.db")
    await broker_server.start()
    registry = RegistryServer(ttl=TTL)
    await registry.start()
    mesh = "start-order"
    listener = Listener()
    node = Node(
        listener,
        registry_address=registry.address,
        data_dir=tmp_path / "data",
        broker=open_broker(broker_server.url, data_dir=tmp_path, mesh=mesh),
        membership=NodeMembership(mesh=mesh),
    )
    queues_at_lease: list[set[str]] = []
    take_lease = node.registry.lease

    async def lease_watched(info: NodeInfo) -> Any:
        queues_at_lease.append(set(broker_server.stats()))
        return await take_lease(info)

    node.registry.lease = lease_watched  # type: ignore[method-assign]
    client = MeshClient(
        registry.address, broker=open_broker(broker_server.url, data_dir=tmp_path, mesh=mesh)
    )
    await client.start()
    try:
        assert broker_server.stats() == {}  # the service's first run: no queue yet
        await node.start()
        assert queues_at_lease == [{"listener/hear"}]
        await eventually(lambda: client.nodes("listener"), 10, "the node in the client's view")
        await client.emit("pings.a", 1)
        await eventually(lambda: listener.heard == [1], 10, "the event, handled")
    finally:
        await client.close()
        await node.stop()
        await registry.stop()
        await broker_server.stop()
