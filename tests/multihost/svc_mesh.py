"""The services the multi-host scenarios run, on every host (``svc_mesh:Stock`` ...).

``Stock`` answers calls and holds browser sessions; ``reserve`` writes a row and emits an
event through the outbox in one transaction. It also owns the channels ``feed:*`` (history,
presence, joins and leaves) and publishes to them (``post``). ``Ledger`` consumes those
events into its own table (the inbox drops what it already has), and calls ``stock`` from
its host, which is how a scenario makes a call between two given hosts.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from wiremesh import Context, Service, Session, on_event, on_socket, rpc
from wiremesh.channels import Channel, SubscribeRequest

metadata = sa.MetaData()
reservations = sa.Table(
    "mh_reservations", metadata, sa.Column("order_id", sa.String(64), primary_key=True)
)
entries = sa.Table(
    "mh_entries",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("order_id", sa.String(64), nullable=False),
)


class Stock(Service):
    name = "stock"
    owns_channels = {
        "feed:*": Channel(history_size=200, history_ttl=120, presence=True, join_leave=True),
    }

    async def on_start(self) -> None:
        await self.store.create_all(metadata)

    @rpc(idempotent=True)
    async def whoami(self, ctx: Context) -> dict[str, str]:
        return {"node": ctx.node_id, "host": os.environ.get("WM_TEST_HOST", "")}

    @rpc
    async def bump(self, ctx: Context) -> str:
        """Not idempotent: never sent twice by the mesh."""
        return ctx.node_id

    @rpc
    async def reserve(self, ctx: Context, order: str) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(reservations.insert().values(order_id=order))
            tx.emit("stock.reserved", order)

    @rpc
    async def push(self, ctx: Context, principal: str, text: str) -> int:
        return await self.sessions.send_to_principal(principal, text.encode())

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(tag(self.node_id) + frame)

    async def on_subscribe(self, request: SubscribeRequest) -> bool:
        return request.channel.startswith("feed:") and request.principal != "eve"

    @rpc
    async def post(self, ctx: Context, channel: str, text: str) -> dict[str, int | str]:
        """Publish ``{"text": text}`` to ``channel``; its position."""
        position = await self.channels.publish(channel, {"text": text})
        return {"offset": position.offset, "epoch": position.epoch}


def tag(node_id: str) -> bytes:
    return f"{node_id} {os.environ.get('WM_TEST_HOST', '')} ".encode()


class Ledger(Service):
    name = "ledger"

    async def on_start(self) -> None:
        await self.store.create_all(metadata)

    @on_event("stock.reserved")
    async def reserved(self, ctx: Context, order: str) -> None:
        assert ctx.message is not None
        async with self.store.transaction() as tx:
            await tx.execute(entries.insert().values(message_id=ctx.message.id, order_id=order))

    @rpc(idempotent=True)
    async def orders(self, ctx: Context) -> dict[str, int]:
        """How many entries each order has (exactly one each, when nothing was lost or
        counted twice)."""
        query = sa.select(entries.c.order_id, sa.func.count()).group_by(entries.c.order_id)
        async with self.store.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {str(order): int(count) for order, count in rows}

    @rpc(idempotent=True)
    async def view(self, ctx: Context) -> list[str]:
        """The node ids this node's own view of the mesh holds."""
        return sorted(self.mesh.view.snapshot.by_id)

    @rpc(idempotent=True)
    async def ask_stock(self, ctx: Context, timeout: float = 2.0) -> dict[str, str]:
        """A call from this node's host to a node of ``stock``."""
        reply: dict[str, str] = await ctx.call("stock.whoami", timeout=timeout)
        return reply
