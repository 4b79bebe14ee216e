"""The aio-pika program of ``docs/protocol.md`` (§16, "a program with nothing but
aio-pika") runs as printed against a real RabbitMQ and a real mesh: on exchanges no one
declared yet, with a command sent before its service ever ran, and reading what
wiremesh emits. A forged ``wm-attempt`` does not shrink a handler's retry budget."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pydantic
import pytest

from tests.messaging.test_amqp_interop import URL, rabbitmq_running
from wiremesh import Context, Service, command, on_event
from wiremesh.testing import TestMesh

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

pytestmark = pytest.mark.skipif(
    not rabbitmq_running(), reason="RabbitMQ is not running on 127.0.0.1:5672"
)


def the_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Example: a program with nothing but aio-pika") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


class Order(pydantic.BaseModel):
    id: int
    sku: str


class Billing(Service):
    name = "billing"

    def __init__(self) -> None:
        self.charges: list[str] = []
        self.orders: list[tuple[int, int]] = []  # (order id, attempt)
        self.fail_first = False
        self.changed = asyncio.Event()

    @command
    async def charge(self, ctx: Context, account: str) -> None:
        self.charges.append(account)
        self.changed.set()

    @on_event("orders.created")
    async def order_created(self, ctx: Context, order: Order) -> None:
        assert ctx.message is not None
        self.orders.append((order.id, ctx.message.attempt))
        self.changed.set()
        if self.fail_first and ctx.message.attempt == 1:
            raise RuntimeError("once")

    async def wait(self, *, charges: int = 0, orders: int = 0) -> None:
        async with asyncio.timeout(15):
            while len(self.charges) < charges or len(self.orders) < orders:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def example() -> AsyncIterator[dict[str, Any]]:
    """The example's functions, for a mesh of its own (a name no exchange has yet)."""
    namespace: dict[str, Any] = {"__name__": "aio_pika_example"}
    exec(compile(the_example(), str(DOC), "exec"), namespace)
    mesh = f"doc-{uuid.uuid4().hex[:10]}"
    namespace["MESH"] = mesh
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    namespace["channel"] = channel
    yield namespace
    for queue in ("event.billing.order_created", "command.billing.charge", "dead"):
        await channel.queue_delete(f"wm.{mesh}.{queue}")
    await channel.queue_delete(f"legacy-orders-{mesh}")
    for exchange in ("events", "commands", "dead", "delay"):
        await channel.exchange_delete(f"wm.{mesh}.{exchange}")
    await connection.close()


def billing_of(mesh: TestMesh) -> Billing:
    (node,) = mesh.nodes
    assert isinstance(node.service, Billing)
    return node.service


async def test_a_command_sent_before_its_service_ran_waits_for_it(
    example: dict[str, Any],
) -> None:
    # nothing of this mesh exists yet: the example declares what it uses
    await example["send_command"](example["channel"], "acct-9")
    async with TestMesh(Billing, broker=URL, mesh_name=example["MESH"]) as mesh:
        billing = billing_of(mesh)
        await billing.wait(charges=1)
        assert billing.charges == ["acct-9"]


async def test_an_event_reaches_the_handler_and_emitted_events_reach_the_program(
    example: dict[str, Any],
) -> None:
    async with TestMesh(Billing, broker=URL, mesh_name=example["MESH"]) as mesh:
        await example["publish_event"](example["channel"], {"id": 7, "sku": "tea"})
        billing = billing_of(mesh)
        await billing.wait(orders=1)
        assert billing.orders == [(7, 1)]

        consuming = asyncio.create_task(
            example["consume"](example["channel"], f"legacy-orders-{example['MESH']}", 1)
        )
        # the program binds its queue first: emit until one reaches it
        async with asyncio.timeout(10):
            while not consuming.done():
                await mesh.emit("orders.created", Order(id=8, sku="jam"))
                await asyncio.wait([consuming], timeout=0.3)
        ((topic, body, headers),) = consuming.result()
    assert topic == "orders.created"
    assert body == {"id": 8, "sku": "jam"}  # msgpack, decoded by its content type
    assert headers["wm-topic"] == "orders.created"


async def test_a_forged_attempt_header_does_not_shrink_the_retry_budget(
    example: dict[str, Any],
) -> None:
    async with TestMesh(Billing, broker=URL, mesh_name=example["MESH"]) as mesh:
        billing = billing_of(mesh)
        billing.fail_first = True
        events, _ = await example["exchanges"](example["channel"])
        await events.publish(
            aio_pika.Message(
                b'{"id": 5, "sku": "salt"}',
                content_type="application/json",
                headers={"wm-attempt": 99},  # as if every retry were spent
            ),
            routing_key="orders.created",
        )
        # a first delivery all the same: it fails once, is retried, and succeeds
        await billing.wait(orders=2)
        assert billing.orders == [(5, 1), (5, 2)]
