"""Services the messaging tests run (in TestMesh, or in node processes by target)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import pydantic
import sqlalchemy as sa

from wiremesh import Context, Service, command, on_event, rpc


class Order(pydantic.BaseModel):
    id: int
    qty: int = 1


class Shop(Service):
    """Consumes orders: a pool handler, a broadcast handler and a command."""

    name = "shop"

    def __init__(self) -> None:
        self.orders: list[Order] = []
        self.seen: list[str] = []
        self.broadcasts: list[int] = []
        self.charges: list[tuple[str, str]] = []

    @on_event("orders.created", "orders.*.vip")
    async def order_created(self, ctx: Context, order: Order) -> None:
        assert ctx.message is not None
        self.orders.append(order)
        self.seen.append(ctx.message.topic)

    @on_event("prices.#", delivery="broadcast")
    async def price_changed(self, ctx: Context, value: int) -> None:
        self.broadcasts.append(value)

    @command
    async def charge(self, ctx: Context, account: str) -> None:
        self.charges.append((ctx.node_id, account))


class Audit(Service):
    """A second subscriber of the same event."""

    name = "audit"

    def __init__(self) -> None:
        self.orders: list[int] = []

    @on_event("orders.#")
    async def any_order(self, ctx: Context, order: Order) -> None:
        self.orders.append(order.id)


class Singleton(Service):
    name = "single"

    def __init__(self) -> None:
        self.handled: list[int] = []

    @on_event("ticks", delivery="singleton")
    async def tick(self, ctx: Context, n: int) -> None:
        self.handled.append(n)


class Gate(Service):
    """Handlers that wait until the test opens the gate, to count how many run at once."""

    name = "gate"

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.done = 0
        self.gate = asyncio.Event()

    @on_event("work", concurrency=3)
    async def work(self, ctx: Context, n: int) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        self.done += 1


class Flaky(Service):
    """``fail`` always raises; ``once`` raises on its first attempt only."""

    name = "flaky"

    def __init__(self) -> None:
        self.attempts: Counter[int] = Counter()
        self.fine: list[int] = []
        self.attempt_numbers: list[int] = []

    @on_event("jobs.fail", concurrency=1)
    async def fail(self, ctx: Context, n: int) -> None:
        self.attempts[n] += 1
        raise RuntimeError(f"job {n} cannot work")

    @on_event("jobs.fine", concurrency=1)
    async def fine_job(self, ctx: Context, n: int) -> None:
        self.fine.append(n)

    @on_event("jobs.once")
    async def once(self, ctx: Context, n: int) -> None:
        assert ctx.message is not None
        self.attempt_numbers.append(ctx.message.attempt)
        if ctx.message.attempt == 1:
            raise ConnectionError("not yet")


accounts = sa.MetaData()
balances = sa.Table(
    "balances",
    accounts,
    sa.Column("account", sa.String, primary_key=True),
    sa.Column("amount", sa.Integer, nullable=False),
)
#: no unique key on message_id: a duplicate effect would show as a second row
credits = sa.Table(
    "credits",
    accounts,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String, nullable=False),
    sa.Column("account", sa.String, nullable=False),
)


class Ledger(Service):
    """Writes through its store: the outbox and the inbox."""

    name = "ledger"

    async def on_start(self) -> None:
        async with self.store.engine.begin() as connection:
            await connection.run_sync(accounts.create_all)

    @rpc
    async def open_account(self, ctx: Context, account: str, fail: bool = False) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(balances.insert().values(account=account, amount=0))
            tx.emit("accounts.opened", account)
            if fail:
                raise ValueError("refused")

    @rpc
    async def open_and_die(self, ctx: Context, account: str) -> None:
        """Commit, then die before the relay can hand the event over."""
        async with self.store.transaction() as tx:
            await tx.execute(balances.insert().values(account=account, amount=0))
            tx.emit("accounts.opened", account)
        os.kill(os.getpid(), signal.SIGKILL)

    @on_event("credits.#", concurrency=4)
    async def credit(self, ctx: Context, account: str) -> None:
        assert ctx.message is not None
        async with self.store.transaction() as tx:
            await tx.execute(credits.insert().values(message_id=ctx.message.id, account=account))

    @rpc(idempotent=True)
    async def credit_count(self, ctx: Context) -> int:
        async with self.store.engine.connect() as connection:
            return int(
                (
                    await connection.execute(sa.select(sa.func.count()).select_from(credits))
                ).scalar_one()
            )

    @rpc(idempotent=True)
    async def credit_summary(self, ctx: Context) -> dict[str, int]:
        query = sa.select(sa.func.count(), sa.func.count(sa.distinct(credits.c.message_id)))
        async with self.store.engine.connect() as connection:
            rows, distinct = (await connection.execute(query.select_from(credits))).one()
        return {"rows": int(rows), "distinct": int(distinct)}

    @rpc(idempotent=True)
    async def account_names(self, ctx: Context) -> list[str]:
        async with self.store.engine.connect() as connection:
            rows = await connection.execute(sa.select(balances.c.account).order_by("account"))
            return [r[0] for r in rows]


class Opened(Service):
    """Receives what the ledger emits."""

    name = "opened"

    def __init__(self) -> None:
        self.accounts: list[str] = []

    @on_event("accounts.opened")
    async def account_opened(self, ctx: Context, account: str) -> None:
        self.accounts.append(account)

    @rpc(idempotent=True)
    async def received(self, ctx: Context) -> list[str]:
        return self.accounts

    @rpc
    async def announce(self, ctx: Context, account: str) -> str:
        """Emit straight from a call (no transaction)."""
        return await ctx.emit("accounts.opened", account)


class Sink(Service):
    """Stores what it receives, once the file ``open`` exists in its data folder."""

    name = "sink"

    async def on_start(self) -> None:
        async with self.store.engine.begin() as connection:
            await connection.run_sync(accounts.create_all)

    @on_event("sink.#", concurrency=4)
    async def take(self, ctx: Context, account: str) -> None:
        while not (self.data_dir / "open").exists():  # noqa: ASYNC110 - a file, no event
            await asyncio.sleep(0.05)
        assert ctx.message is not None
        async with self.store.transaction() as tx:
            await tx.execute(credits.insert().values(message_id=ctx.message.id, account=account))

    @rpc(idempotent=True)
    async def count(self, ctx: Context) -> int:
        async with self.store.engine.connect() as connection:
            query = sa.select(sa.func.count(sa.distinct(credits.c.message_id)))
            return int((await connection.execute(query.select_from(credits))).scalar_one())


class Failing(Service):
    """Its handler always fails: its messages end in the dead letters."""

    name = "failing"

    @on_event("doomed")
    async def doomed(self, ctx: Context, n: int) -> None:
        raise RuntimeError(f"cannot handle {n}")
