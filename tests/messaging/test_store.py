"""The service's own store, on SQLite and PostgreSQL: outbox rows commit and roll back
with the data, the inbox drops duplicates, the relay sends what a crash left."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.meshes import eventually
from tests.messaging.svc_messaging import Ledger, Opened
from wiremesh.messaging.base import Envelope
from wiremesh.messaging.outbox import Relay
from wiremesh.messaging.store import (
    Duplicate,
    InboxMark,
    Store,
    inbox_mark,
    inbox_table,
    outbox_table,
)
from wiremesh.runtime import node as node_module
from wiremesh.testing import TestMesh


def table(name: str) -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    return metadata, sa.Table(
        name, metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String)
    )


async def outbox_ids(store: Store) -> list[str]:
    query = sa.select(outbox_table.c.id).where(outbox_table.c.service == store.service)
    async with store.engine.connect() as connection:
        return [row[0] for row in await connection.execute(query)]


@pytest.fixture
async def store(store_url: str | None, tmp_path: Path) -> Store:
    service = f"svc{secrets.token_hex(3)}"  # its own rows, in a shared database
    made = Store(store_url, path=tmp_path / "store.db", service=service)
    yield made  # type: ignore[misc]
    await made.close()


async def test_messages_commit_and_roll_back_with_the_data(store: Store) -> None:
    metadata, things = table(f"things_{store.service}")
    async with store.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    committed: list[Envelope] = []
    store.committed = committed.extend
    async with store.transaction() as tx:
        await tx.execute(things.insert().values(id=1, v="kept"))
        kept = tx.emit("things.added", {"id": 1})
        sent = tx.send("billing.charge", 5)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.execute(things.insert().values(id=2, v="gone"))
            tx.emit("things.added", {"id": 2})
            raise RuntimeError("changed my mind")
    assert [e.id for e in committed] == [kept, sent]
    assert [e.kind for e in committed] == ["event", "command"]
    assert sorted(await outbox_ids(store)) == sorted([kept, sent])
    async with store.engine.connect() as connection:
        rows = (await connection.execute(sa.select(things.c.v))).all()
    assert [r[0] for r in rows] == ["kept"]


async def test_the_inbox_drops_a_message_handled_before(store: Store) -> None:
    metadata, effects = table(f"effects_{store.service}")
    async with store.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    for attempt in range(3):
        token = inbox_mark.set(InboxMark(store.service, "handler", "m-1"))
        try:
            async with store.transaction() as tx:
                await tx.execute(effects.insert().values(id=attempt, v="effect"))
        except Duplicate:
            assert attempt > 0
        finally:
            inbox_mark.reset(token)
    assert await store.seen("handler", "m-1")
    assert not await store.seen("other-handler", "m-1")
    async with store.engine.connect() as connection:
        count = (await connection.execute(sa.select(sa.func.count()).select_from(effects))).scalar()
    assert count == 1
    assert await store.forget_handled(older_than=0) == 1
    assert not await store.seen("handler", "m-1")


class Recording:
    """A broker that only records what it was given (the relay's peer in this test)."""

    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, envelopes: Sequence[Envelope], *, timeout: float) -> None:
        self.published.extend(e.id for e in envelopes)


async def test_the_relay_sends_what_an_earlier_run_left(store: Store) -> None:
    async with store.transaction() as tx:  # committed; nobody relayed it (a crash)
        left = [tx.emit("things.added", n) for n in range(3)]
    assert sorted(await outbox_ids(store)) == sorted(left)
    broker = Recording()
    relay = Relay(store, broker, timeout=5)  # type: ignore[arg-type]
    await relay.start()
    try:
        await eventually(lambda: sorted(broker.published) == sorted(left), 10)
        async with store.transaction() as tx:
            fresh = tx.emit("things.added", 4)
        await eventually(lambda: fresh in broker.published, 10)
        await relay.close()
        assert await outbox_ids(store) == []
    finally:
        await relay.close()


async def test_a_mesh_with_its_stores_on_this_database(
    store_url: str | None, broker_url: str
) -> None:
    options = {"store_url": store_url} if store_url else {}
    async with TestMesh(Ledger, Opened, broker=broker_url, **options) as m:  # type: ignore[arg-type]
        await m.call("ledger.open_account", {"account": f"a-{secrets.token_hex(2)}"})
        opened = m.instance("opened")
        await eventually(lambda: len(opened.accounts) == 1, 10)


async def test_a_node_drops_inbox_rows_older_than_it_keeps_them(
    monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> None:
    monkeypatch.setattr(node_module, "INBOX_PRUNE_EVERY", 0.05)
    async with TestMesh(Ledger, broker=broker_url, inbox_keep=3600) as m:
        (node,) = m.nodes_of("ledger")
        await m.emit("credits.eu", "acme")  # handled through the store: an inbox row
        store = node.store
        await eventually(lambda: store.opened, 10)
        await store.prepare()
        async with store.engine.begin() as connection:  # one handled two hours ago
            await connection.execute(
                inbox_table.insert(),
                {
                    "service": store.service,
                    "handler": "credit",
                    "message_id": "long-ago",
                    "handled_at": time.time() - 7200,
                },
            )
        deadline = time.monotonic() + 10
        while await store.seen("credit", "long-ago"):
            assert time.monotonic() < deadline, "the old inbox row is still there"
            await asyncio.sleep(0.05)
        assert await m.call("ledger.credit_count") == 1
        async with store.engine.connect() as connection:
            kept = (await connection.execute(sa.select(inbox_table.c.message_id))).all()
        assert len(kept) == 1  # the message handled just now
