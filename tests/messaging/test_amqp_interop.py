"""A program that knows only aio-pika and ``docs/protocol.md`` (section *AMQP topology*)
talks to wiremesh services through RabbitMQ, both ways.

The raw side uses the documented names, properties and headers, nothing of wiremesh's
code. Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); skipped when it is not running.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import msgpack
import pydantic
import pytest

from wiremesh import Context, Service, command, on_event
from wiremesh.testing import TestMesh

URL = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmq_running() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1.0).close()
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not rabbitmq_running(), reason="RabbitMQ is not running on 127.0.0.1:5672"
)


class Order(pydantic.BaseModel):
    id: int
    sku: str


class Shop(Service):
    name = "shop"

    def __init__(self) -> None:
        self.orders: list[tuple[Order, str]] = []
        self.charges: list[str] = []
        self.changed = asyncio.Event()

    @on_event("orders.created")
    async def order_created(self, ctx: Context, order: Order) -> None:
        assert ctx.message is not None
        self.orders.append((order, ctx.message.id))
        self.changed.set()

    @command
    async def charge(self, ctx: Context, account: str) -> None:
        self.charges.append(account)
        self.changed.set()

    async def wait(self, orders: int = 0, charges: int = 0) -> None:
        async with asyncio.timeout(10):
            while len(self.orders) < orders or len(self.charges) < charges:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def raw() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=True)
    yield channel
    await connection.close()


@pytest.fixture
async def mesh(raw: aio_pika.abc.AbstractChannel) -> AsyncIterator[TestMesh]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    async with TestMesh(Shop, broker=URL, mesh_name=name) as running:
        yield running
    # what the mesh declared, by its documented names
    for queue in ("event.shop.order_created", "command.shop.charge", "dead"):
        await raw.queue_delete(f"wm.{name}.{queue}")
    for exchange in ("events", "commands", "dead", "delay"):
        await raw.exchange_delete(f"wm.{name}.{exchange}")


def shop_of(mesh: TestMesh) -> Shop:
    (node,) = mesh.nodes
    service = node.service
    assert isinstance(service, Shop)
    return service


async def test_a_raw_program_publishes_an_event_a_handler_consumes(
    mesh: TestMesh, raw: aio_pika.abc.AbstractChannel
) -> None:
    events = await raw.get_exchange(f"wm.{mesh.mesh_name}.events")
    message_id = uuid.uuid4().hex
    await events.publish(
        aio_pika.Message(
            json.dumps({"id": 7, "sku": "tea"}).encode(),
            content_type="application/json",
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"wm-sender": "legacy-shop"},
        ),
        routing_key="orders.created",
    )
    # msgpack needs no content type at all
    await events.publish(
        aio_pika.Message(msgpack.packb({"id": 8, "sku": "milk"})), routing_key="orders.created"
    )
    shop = shop_of(mesh)
    await shop.wait(orders=2)
    assert sorted(order.id for order, _ in shop.orders) == [7, 8]
    assert (Order(id=7, sku="tea"), message_id) in shop.orders


async def test_a_raw_program_sends_a_command(
    mesh: TestMesh, raw: aio_pika.abc.AbstractChannel
) -> None:
    commands = await raw.get_exchange(f"wm.{mesh.mesh_name}.commands")
    await commands.publish(
        aio_pika.Message(msgpack.packb("acct-1"), content_type="application/msgpack"),
        routing_key="shop.charge",
    )
    shop = shop_of(mesh)
    await shop.wait(charges=1)
    assert shop.charges == ["acct-1"]


async def test_a_raw_consumer_receives_what_wiremesh_emits(
    mesh: TestMesh, raw: aio_pika.abc.AbstractChannel
) -> None:
    queue = await raw.declare_queue(exclusive=True)
    await queue.bind(f"wm.{mesh.mesh_name}.events", "orders.#")
    message_id = await mesh.emit("orders.created", Order(id=9, sku="jam"))

    async with queue.iterator(timeout=10) as messages:
        async for message in messages:
            await message.ack()
            break
    assert msgpack.unpackb(message.body) == {"id": 9, "sku": "jam"}
    assert message.routing_key == "orders.created"
    assert message.content_type == "application/msgpack"
    assert message.message_id == message_id
    assert message.type == "event"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    headers: dict[str, Any] = dict(message.headers)
    assert headers["wm-attempt"] == 1
    assert headers["wm-topic"] == "orders.created"
    assert isinstance(headers.get("wm-sender"), str)
    # the wiremesh handler got it too
    await shop_of(mesh).wait(orders=1)


async def test_a_poison_message_is_dead_lettered_and_blocks_nothing(
    mesh: TestMesh, raw: aio_pika.abc.AbstractChannel
) -> None:
    events = await raw.get_exchange(f"wm.{mesh.mesh_name}.events")
    poison = [
        aio_pika.Message(b"not json", content_type="application/json", message_id="p-1"),
        aio_pika.Message(b"hello", content_type="text/plain", message_id="p-2"),
        aio_pika.Message(msgpack.packb({"id": "x"}), message_id="p-3"),  # fails validation
    ]
    for message in poison:
        await events.publish(message, routing_key="orders.created")
    await events.publish(
        aio_pika.Message(msgpack.packb({"id": 1, "sku": "ok"})), routing_key="orders.created"
    )
    shop = shop_of(mesh)
    await shop.wait(orders=1)
    assert [order.id for order, _ in shop.orders] == [1]

    # the documented dead-letter queue holds them, with the reason and the queue
    dead = await raw.get_queue(f"wm.{mesh.mesh_name}.dead")
    reasons: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(10):
        while len(reasons) < 3:
            message = await dead.get(fail=False)
            if message is None:
                await asyncio.sleep(0.02)
                continue
            await message.ack()
            assert message.message_id is not None
            reasons[message.message_id] = dict(message.headers)
    assert sorted(reasons) == ["p-1", "p-2", "p-3"]
    for headers in reasons.values():
        assert headers["wm-dead-queue"] == "shop/order_created"
        assert headers["wm-dead-amqp-queue"] == f"wm.{mesh.mesh_name}.event.shop.order_created"
        assert headers["wm-dead-reason"]
        assert float(headers["wm-died-at"]) > 0
    assert "text/plain" in str(reasons["p-2"]["wm-dead-reason"])
