"""``wiremesh.testing`` for message handlers: ``deliver`` and ``worker``'s recorder/store."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.messaging.svc_messaging import Audit, Ledger, Order, Shop, credits
from wiremesh import Context, InvalidPayload, Service, on_event
from wiremesh.testing import call_handler, deliver, worker


class Notifier(Service):
    name = "notifier"

    @on_event("orders.created")
    async def order_created(self, ctx: Context, order: Order) -> None:
        await ctx.emit("mail.queued", {"order": order.id})
        await ctx.send("billing.charge", order.qty)


async def test_deliver_runs_a_handler_with_a_typed_payload_and_a_message() -> None:
    shop = worker(Shop)
    envelope = await deliver(shop, "order_created", {"id": 3, "qty": 2})
    assert shop.orders == [Order(id=3, qty=2)]
    assert shop.seen == ["orders.created"]
    assert envelope.topic == "orders.created" and envelope.attempt == 1
    await deliver(shop, "order_created", {"id": 4}, topic="orders.eu.vip")
    assert shop.seen[-1] == "orders.eu.vip"
    await deliver(shop, "charge", "acct-1")
    assert shop.charges == [("shop-test", "acct-1")]


async def test_deliver_refuses_a_bad_payload_like_the_broker_would() -> None:
    with pytest.raises(InvalidPayload, match="id"):
        await deliver(worker(Audit), "any_order", {"id": "x"})
    with pytest.raises(AttributeError, match="no message handler 'nope'"):
        await deliver(worker(Audit), "nope", 1)


async def test_what_a_handler_emits_and_sends_is_recorded() -> None:
    notifier = worker(Notifier)
    await deliver(notifier, "order_created", {"id": 9, "qty": 4})
    sent = notifier.mesh.sent  # type: ignore[attr-defined]
    assert [(e.kind, e.topic) for e in sent] == [
        ("event", "mail.queued"),
        ("command", "billing.charge"),
    ]


async def test_a_worker_has_a_store_of_its_own(tmp_path: Path) -> None:
    ledger = worker(Ledger, data_dir=tmp_path)
    await ledger.on_start()
    try:
        await deliver(ledger, "credit", "acct-7", topic="credits.in")
        async with ledger.store.engine.connect() as connection:
            rows = (await connection.execute(sa.select(credits.c.account))).all()
        assert [r[0] for r in rows] == ["acct-7"]
        assert (tmp_path / "store.db").exists()
        await call_handler(ledger, "open_account", {"account": "acct-8"})
        sent = ledger.mesh.sent  # type: ignore[attr-defined]
        assert [(e.topic, e.body) for e in sent] == [("accounts.opened", b"\xa6acct-8")]
    finally:
        await ledger.store.close()
