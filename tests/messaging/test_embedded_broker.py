"""The embedded broker on its own: its disk across restarts, its client across outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fixtures.meshes import eventually
from wiremesh.messaging.base import Binding, Envelope, Received, new_message_id
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.messaging.embedded import EmbeddedBroker

BINDING = Binding("svc", "handler", "event", ("things.#",), "pool", "svc-1", 16)


def envelope(n: int) -> Envelope:
    return Envelope(new_message_id(), "event", "things.made", bytes([n]), "raw")


class Collector:
    def __init__(self, settle: str = "ack") -> None:
        self.bodies: list[bytes] = []
        self.settle = settle

    async def __call__(self, received: Received) -> None:
        self.bodies.append(received.envelope.body)
        if self.settle == "ack":
            await received.ack()
        elif self.settle == "dead":
            await received.dead("no good")


async def test_pending_and_dead_messages_survive_a_broker_restart(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    server = BrokerServer(path)
    await server.start()
    client = EmbeddedBroker(server.address)
    doomed = envelope(99)
    try:
        dead = Collector("dead")
        subscription = await client.consume(BINDING, dead)
        await client.publish([doomed], timeout=5)
        await eventually(lambda: dead.bodies == [bytes([99])], 10)
        await eventually(lambda: not server.stats().get("svc/handler"), 10)
        await subscription.cancel()
        await client.publish([envelope(n) for n in range(5)], timeout=5)
    finally:
        await client.close()
        await server.stop()

    server = BrokerServer(path)
    await server.start()
    client = EmbeddedBroker(server.address)
    try:
        assert server.stats() == {"svc/handler": 5}
        assert [d.envelope.id for d in await client.dead_letters()] == [doomed.id]
        collector = Collector()
        await client.consume(BINDING, collector)
        await eventually(lambda: len(collector.bodies) == 5, 10)
        assert collector.bodies == [bytes([n]) for n in range(5)]
    finally:
        await client.close()
        await server.stop()


async def test_unsettled_messages_go_back_when_a_consumer_leaves(tmp_path: Path) -> None:
    server = BrokerServer(tmp_path / "broker.db")
    await server.start()
    client = EmbeddedBroker(server.address)
    try:
        holder = Collector("keep")
        subscription = await client.consume(BINDING, holder)
        await client.publish([envelope(n) for n in range(3)], timeout=5)
        await eventually(lambda: len(holder.bodies) == 3, 10)
        await subscription.cancel()
        taker = Collector()
        await client.consume(BINDING, taker)
        await eventually(lambda: len(taker.bodies) == 3, 10)
        assert taker.bodies == [bytes([n]) for n in range(3)]  # in their order
    finally:
        await client.close()
        await server.stop()


async def test_a_publish_waits_for_a_broker_that_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    server = BrokerServer(path)
    await server.start()
    port = server.port
    client = EmbeddedBroker(server.address)
    collector = Collector()
    try:
        await client.consume(BINDING, collector)
        await server.stop()
        publishing = asyncio.create_task(client.publish([envelope(1)], timeout=20))
        await asyncio.sleep(0.3)
        assert not publishing.done()
        server = BrokerServer(path, port=port)
        await server.start()
        await publishing
        await eventually(lambda: collector.bodies == [bytes([1])], 10)
    finally:
        await client.close()
        await server.stop()


def test_a_refused_message_says_why_even_when_grpc_gives_no_details() -> None:
    import grpc

    from wiremesh.messaging.embedded import failure_reason

    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), ""
    )
    assert failure_reason("127.0.0.1:7000", bare) == (
        "the broker at 127.0.0.1:7000 did not accept it: unavailable"
    )
    told = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "Socket closed"
    )
    assert failure_reason("127.0.0.1:7000", told).endswith(": Socket closed")
