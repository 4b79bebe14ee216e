"""Durable messaging as users see it, on every backend (``broker_url``: embedded, amqp)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fixtures.meshes import eventually, eventually_async
from tests.messaging.svc_messaging import Audit, Flaky, Gate, Ledger, Opened, Order, Shop, Singleton
from wiremesh import BrokerUnavailable, InvalidPayload
from wiremesh.client import MeshClient
from wiremesh.core.delivery import DeliveryPolicy
from wiremesh.messaging.base import Envelope, new_message_id
from wiremesh.testing import TestMesh

QUICK = DeliveryPolicy(attempts=3, initial=0.02, maximum=0.1)


def mesh(broker_url: str, *services: type, **options: object) -> TestMesh:
    return TestMesh(*services, broker=broker_url, delivery=QUICK, **options)  # type: ignore[arg-type]


async def test_an_event_reaches_every_subscribing_service_typed(broker_url: str) -> None:
    async with mesh(broker_url, Shop, Audit) as m:
        first = await m.emit("orders.created", Order(id=1, qty=2))
        await m.emit("orders.eu.vip", {"id": 2})
        shop, audit = m.instance("shop"), m.instance("audit")
        await eventually(lambda: len(shop.orders) == 2 and len(audit.orders) == 2, 10)
        assert sorted(o.id for o in shop.orders) == [1, 2]
        assert Order(id=1, qty=2) in shop.orders
        assert sorted(shop.seen) == ["orders.created", "orders.eu.vip"]
        assert sorted(audit.orders) == [1, 2]
        assert len(first) == 32


async def test_a_pool_handler_takes_each_event_once_across_nodes(broker_url: str) -> None:
    async with mesh(broker_url, Shop, replicas={"shop": 2}) as m:
        await asyncio.gather(*(m.emit("orders.created", {"id": i}) for i in range(40)))
        nodes = [m.instance("shop", 0), m.instance("shop", 1)]
        await eventually(lambda: sum(len(s.orders) for s in nodes) >= 40, 10)
        await asyncio.sleep(0.2)  # a duplicate would arrive now
        ids = sorted(o.id for s in nodes for o in s.orders)
        assert ids == list(range(40))


async def test_a_broadcast_handler_runs_on_every_node(broker_url: str) -> None:
    async with mesh(broker_url, Shop, replicas={"shop": 2}) as m:
        for value in range(5):
            await m.emit("prices.eu.sku-1", value)
        nodes = [m.instance("shop", 0), m.instance("shop", 1)]
        await eventually(lambda: all(len(s.broadcasts) == 5 for s in nodes), 10)
        assert [sorted(s.broadcasts) for s in nodes] == [list(range(5))] * 2


async def test_a_singleton_handler_runs_on_one_node_only(broker_url: str) -> None:
    async with mesh(broker_url, Singleton, replicas={"single": 2}) as m:
        for n in range(10):
            await m.emit("ticks", n)
        nodes = [m.instance("single", 0), m.instance("single", 1)]
        await eventually(lambda: sum(len(s.handled) for s in nodes) == 10, 10)
        assert sorted(len(s.handled) for s in nodes) == [0, 10]


async def test_another_node_takes_over_a_singleton_when_its_node_stops(broker_url: str) -> None:
    async with mesh(broker_url, Singleton, replicas={"single": 2}) as m:
        await m.emit("ticks", 0)
        nodes = m.nodes_of("single")
        await eventually(lambda: any(n.service.handled for n in nodes), 10)  # type: ignore[attr-defined]
        active = next(n for n in nodes if n.service.handled)  # type: ignore[attr-defined]
        standby = next(n for n in nodes if n is not active)
        await m.stop_node(active)
        for n in range(1, 4):
            await m.emit("ticks", n)
        await eventually(lambda: standby.service.handled == [1, 2, 3], 10)  # type: ignore[attr-defined]


async def test_a_command_reaches_one_node_of_its_service(broker_url: str) -> None:
    async with mesh(broker_url, Shop, Audit, replicas={"shop": 2}) as m:
        for n in range(6):
            await m.send("shop.charge", f"acct-{n}")
        nodes = [m.instance("shop", 0), m.instance("shop", 1)]
        await eventually(lambda: sum(len(s.charges) for s in nodes) == 6, 10)
        charged = sorted(account for s in nodes for _, account in s.charges)
        assert charged == [f"acct-{n}" for n in range(6)]
        assert m.instance("audit").orders == []


async def test_bad_targets_and_topics_are_refused_before_sending(broker_url: str) -> None:
    async with mesh(broker_url, Shop) as m:
        with pytest.raises(InvalidPayload, match=r"service\.command"):
            await m.send("shop", "x")
        with pytest.raises(InvalidPayload, match="bad topic"):
            await m.emit("orders..created", {"id": 1})


async def test_concurrency_limits_the_handlers_running_at_once(broker_url: str) -> None:
    async with mesh(broker_url, Gate) as m:
        gate = m.instance("gate")
        for n in range(8):
            await m.emit("work", n)
        await eventually(lambda: gate.running == 3, 10, "three handlers running")
        await asyncio.sleep(0.1)  # room for a fourth, were the limit not kept
        assert gate.most == 3
        gate.gate.set()
        await eventually(lambda: gate.done == 8, 10)
        assert gate.most == 3


async def test_a_failure_is_retried_with_the_attempt_counted(broker_url: str) -> None:
    async with mesh(broker_url, Flaky) as m:
        await m.emit("jobs.once", 1)
        flaky = m.instance("flaky")
        await eventually(lambda: flaky.attempt_numbers == [1, 2], 10)


async def test_a_handler_that_always_fails_ends_in_the_dead_letters(broker_url: str) -> None:
    async with mesh(broker_url, Flaky) as m:
        message_id = await m.emit("jobs.fail", 7)
        flaky = m.instance("flaky")
        broker = m.client.broker
        assert broker is not None
        dead = await eventually_async(lambda: broker.dead_letter(message_id), 10)
        assert flaky.attempts[7] == 3
        assert dead.envelope.id == message_id
        assert dead.envelope.topic == "jobs.fail"
        assert dead.queue.startswith("flaky/fail")
        assert "failed 3 time(s)" in dead.reason and "job 7 cannot work" in dead.reason
        assert message_id in [d.envelope.id for d in await broker.dead_letters()]
        # replay puts it back, attempt reset: three more attempts, dead again
        assert await broker.replay([message_id]) == 1
        await eventually(lambda: flaky.attempts[7] == 6, 10)
        await eventually_async(lambda: broker.dead_letter(message_id), 10)
        assert await broker.purge([message_id]) == 1
        assert await broker.dead_letter(message_id) is None


async def test_an_invalid_payload_is_dead_at_once_with_the_reason(broker_url: str) -> None:
    async with mesh(broker_url, Shop, Flaky) as m:
        bad = await m.emit("orders.created", {"id": "not a number"})
        raw = await m.emit("jobs.fine", b"\xc1", codec="raw")
        broker = m.client.broker
        assert broker is not None
        dead = await eventually_async(lambda: broker.dead_letter(bad), 10)
        assert dead.reason.startswith("invalid payload: id:")
        assert dead.envelope.attempt == 1
        assert m.instance("shop").orders == []
        dead_raw = await eventually_async(lambda: broker.dead_letter(raw), 10)
        assert "invalid payload" in dead_raw.reason
        await broker.purge([bad, raw])


async def test_an_undecodable_body_is_dead_at_once(broker_url: str) -> None:
    async with mesh(broker_url, Flaky) as m:
        broker = m.client.broker
        assert broker is not None
        envelope = Envelope(new_message_id(), "event", "jobs.fine", b"\xc1\xc1", "msgpack")
        await broker.publish([envelope], timeout=5)
        dead = await eventually_async(lambda: broker.dead_letter(envelope.id), 10)
        assert "not valid msgpack" in dead.reason
        assert m.instance("flaky").fine == []
        await broker.purge([envelope.id])


async def test_a_poison_message_does_not_block_the_ones_behind_it(broker_url: str) -> None:
    async with mesh(broker_url, Flaky) as m:
        await m.emit("jobs.fail", 1)
        for n in range(5):
            await m.emit("jobs.fine", n)
        flaky = m.instance("flaky")
        await eventually(lambda: flaky.fine == [0, 1, 2, 3, 4], 10)


async def test_an_unknown_topic_is_delivered_to_no_one(broker_url: str) -> None:
    async with mesh(broker_url, Shop) as m:
        await m.emit("nobody.listens", {"id": 1})
        await m.emit("orders.created", {"id": 2})
        shop = m.instance("shop")
        await eventually(lambda: len(shop.orders) == 1, 10)
        assert [o.id for o in shop.orders] == [2]


async def test_a_duplicate_message_has_its_effect_once(broker_url: str) -> None:
    async with mesh(broker_url, Ledger, replicas={"ledger": 2}) as m:
        broker = m.client.broker
        assert broker is not None
        envelope = Envelope(new_message_id(), "event", "credits.in", b"\xa3abc", "msgpack")
        for _ in range(4):
            await broker.publish([envelope], timeout=5)
        await m.emit("credits.in", "other")
        await eventually_async(lambda: _credits_settled(m, 2), 10)
        await asyncio.sleep(0.3)
        assert await m.call("ledger.credit_count") == 2


async def _credits_settled(m: TestMesh, count: int) -> bool:
    stats = [n.stats() for n in m.nodes_of("ledger")]
    handled = sum(s.get("messages_handled", 0) + s.get("messages_duplicates", 0) for s in stats)
    return handled >= count + 3 and await m.call("ledger.credit_count") == count


async def test_the_outbox_commits_and_rolls_back_with_the_data(broker_url: str) -> None:
    async with mesh(broker_url, Ledger, Opened) as m:
        await m.call("ledger.open_account", {"account": "kept"})
        with pytest.raises(Exception, match="refused"):
            await m.call("ledger.open_account", {"account": "gone", "fail": True})
        await m.call("ledger.open_account", {"account": "later"})
        opened = m.instance("opened")
        await eventually(lambda: len(opened.accounts) == 2, 10)
        await asyncio.sleep(0.2)
        assert sorted(opened.accounts) == ["kept", "later"]
        assert await m.call("ledger.account_names") == ["kept", "later"]


async def test_a_call_handler_emits_through_its_node(broker_url: str) -> None:
    async with mesh(broker_url, Opened) as m:
        message_id = await m.call("opened.announce", "from-a-call")
        opened = m.instance("opened")
        await eventually(lambda: opened.accounts == ["from-a-call"], 10)
        assert len(message_id) == 32


async def test_emit_fails_clearly_when_the_broker_is_down(broker_url: str, tmp_path: Path) -> None:
    url = (
        "embedded://127.0.0.1:9" if broker_url == "embedded" else "amqp://guest:guest@127.0.0.1:9/"
    )
    client = MeshClient("127.0.0.1:9", broker=url, data_dir=tmp_path)
    try:
        with pytest.raises(BrokerUnavailable):
            await client.emit("orders.created", {"id": 1}, timeout=0.5)
    finally:
        await client.close()


async def test_a_command_sent_before_its_service_starts_waits_for_it(broker_url: str) -> None:
    async with mesh(broker_url, Audit) as m:
        await m.send("shop.charge", "early")
        node = await m.add_node(Shop)
        shop = node.service
        assert isinstance(shop, Shop)
        await eventually(lambda: len(shop.charges) == 1, 10)
        assert shop.charges[0][1] == "early"


async def test_a_node_that_stops_hands_its_unfinished_messages_back(broker_url: str) -> None:
    async with mesh(broker_url, Gate, replicas={"gate": 1}) as m:
        first = m.nodes_of("gate")[0]
        gate = first.service
        assert isinstance(gate, Gate)
        for n in range(6):
            await m.emit("work", n)
        # three run (concurrency 3), three wait in the node (prefetch)
        await eventually(lambda: gate.running == 3, 10)
        second = await m.add_node(Gate)
        other = second.service
        assert isinstance(other, Gate)
        other.gate.set()
        asyncio.get_running_loop().call_later(0.2, gate.gate.set)
        await m.stop_node(first, grace=5)  # the running three finish during the drain
        assert gate.done == 3
        await eventually(lambda: other.done == 3, 10)  # the waiting three went back
