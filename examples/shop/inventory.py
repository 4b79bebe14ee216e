"""The inventory service: how many of each item the shop has."""

from wiremesh import Context, Service, rpc


class Inventory(Service):
    name = "inventory"

    async def on_start(self) -> None:
        self.levels = {"A-1": 10, "B-2": 0}

    @rpc(idempotent=True)
    async def stock(self, ctx: Context, sku: str) -> int:
        return self.levels.get(sku, 0)
