"""The billing service: charges orders, durably, in its own database."""

import sqlalchemy as sa
from pydantic import BaseModel

from wiremesh import Context, Service, command, on_event, rpc


class Order(BaseModel):
    id: int
    total: float


tables = sa.MetaData()
charges = sa.Table(
    "charges",
    tables,
    sa.Column("order_id", sa.Integer, primary_key=True),
    sa.Column("amount", sa.Float, nullable=False),
)


class Billing(Service):
    name = "billing"

    async def on_start(self) -> None:
        await self.store.create_all(tables)  # its own tables, in its own database

    @on_event("orders.created")  # one node of billing gets each event
    async def order_created(self, ctx: Context, order: Order) -> None:
        await ctx.send("billing.charge", {"order": order.id, "amount": order.total})

    @command  # "billing.charge"
    async def charge(self, ctx: Context, order: int, amount: float) -> None:
        async with self.store.transaction() as tx:
            found = await tx.execute(sa.select(charges).where(charges.c.order_id == order))
            if found.first() is not None:
                return  # an order is charged once, however often it is announced
            await tx.execute(charges.insert().values(order_id=order, amount=amount))
            tx.emit("billing.charged", {"order": order, "amount": amount})  # commits with it

    @rpc(idempotent=True)
    async def charged(self, ctx: Context, order: int) -> float | None:
        """What ``order`` was charged, or None while it is not (yet)."""
        query = sa.select(charges.c.amount).where(charges.c.order_id == order)
        async with self.store.engine.connect() as connection:
            amount: float | None = (await connection.execute(query)).scalar()
        return amount
