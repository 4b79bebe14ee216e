"""The pricing service: what an order costs, when the inventory has enough."""

from pydantic import BaseModel

from wiremesh import Context, Service, ServiceError, ServiceProxy, rpc


class Quote(BaseModel):
    sku: str
    qty: int


class UnknownSku(ServiceError):
    """Raised here, rebuilt as itself on a caller that can import it."""


class OutOfStock(ServiceError):
    """The inventory has fewer than asked for."""


class Pricing(Service):
    name = "pricing"
    inventory = ServiceProxy("inventory")  # a dependency on another service

    async def on_start(self) -> None:  # open what this service owns
        self.prices = {"A-1": 2.5, "B-2": 4.0}

    @rpc(idempotent=True)  # safe to retry on another node
    async def quote(self, ctx: Context, q: Quote) -> float:
        if q.sku not in self.prices:
            raise UnknownSku(f"no price for {q.sku}")
        stock = await self.inventory.stock(q.sku)  # inherits what remains of ctx.deadline
        if stock < q.qty:
            raise OutOfStock(f"{stock} of {q.sku} in stock, {q.qty} asked for")
        return self.prices[q.sku] * q.qty
