"""Pricing alone, its inventory replaced; then over gRPC, with the real inventory."""

import pytest
from inventory import Inventory
from pricing import OutOfStock, Pricing, UnknownSku

from wiremesh.pytest_plugin import StartMesh, StartWorker
from wiremesh.testing import call_handler


class FakeInventory:
    """Stands in for the inventory service: ``level`` of every item."""

    def __init__(self, level: int) -> None:
        self.level = level

    async def stock(self, sku: str) -> int:
        return self.level


async def test_a_quote_is_the_price_times_the_quantity(wiremesh_worker: StartWorker) -> None:
    pricing = wiremesh_worker(Pricing, inventory=FakeInventory(7))  # no network
    await pricing.on_start()
    assert await call_handler(pricing, "quote", {"sku": "A-1", "qty": 2}) == 5.0


async def test_more_than_the_stock_is_refused(wiremesh_worker: StartWorker) -> None:
    pricing = wiremesh_worker(Pricing, inventory=FakeInventory(1))
    await pricing.on_start()
    with pytest.raises(OutOfStock):
        await call_handler(pricing, "quote", {"sku": "A-1", "qty": 2})


async def test_quotes_over_grpc(wiremesh_mesh: StartMesh) -> None:
    mesh = await wiremesh_mesh(Pricing, Inventory, replicas={"pricing": 2})  # real nodes
    assert await mesh.call("pricing.quote", {"sku": "A-1", "qty": 4}) == 10.0
    with pytest.raises(UnknownSku):  # raised on a node, rebuilt here
        await mesh.call("pricing.quote", {"sku": "Z-9", "qty": 1})
