"""Billing: an order's event becomes a charge, stored once, in billing's own database."""

import asyncio

from billing import Billing, Order

from wiremesh.pytest_plugin import StartMesh, StartWorker
from wiremesh.testing import call_handler, deliver


async def test_an_order_becomes_a_charge_command(wiremesh_worker: StartWorker) -> None:
    billing = wiremesh_worker(Billing)  # what it sends is recorded in billing.mesh.sent
    await deliver(billing, "order_created", Order(id=7, total=10.0))
    assert [message.topic for message in billing.mesh.sent] == ["billing.charge"]


async def test_an_order_is_charged_once(wiremesh_worker: StartWorker) -> None:
    billing = wiremesh_worker(Billing)
    await billing.on_start()  # creates its table
    await deliver(billing, "charge", {"order": 7, "amount": 10.0})
    await deliver(billing, "charge", {"order": 7, "amount": 10.0})
    assert await call_handler(billing, "charged", 7) == 10.0
    assert [message.topic for message in billing.mesh.sent] == ["billing.charged"]


async def test_an_order_event_is_charged_through_the_broker(wiremesh_mesh: StartMesh) -> None:
    mesh = await wiremesh_mesh(Billing)  # and an embedded broker: billing has handlers
    await mesh.emit("orders.created", {"id": 7, "total": 10.0})
    charged = None
    async with asyncio.timeout(10):
        while charged is None:  # billing handles the event soon after, not during emit
            await asyncio.sleep(0.05)
            charged = await mesh.call("billing.charged", 7)
    assert charged == 10.0
