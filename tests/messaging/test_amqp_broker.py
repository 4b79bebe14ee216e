"""The RabbitMQ backend against a real RabbitMQ: topology, deliveries, retries, dead letters.

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); skipped when it is not running. Each test
uses a mesh name of its own and deletes what it declared.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from wiremesh.errors import BrokerUnavailable, ConfigError
from wiremesh.messaging.amqp import AmqpBroker
from wiremesh.messaging.base import Binding, Envelope, Received

URL = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmq_running() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1.0).close()
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not rabbitmq_running(), reason="RabbitMQ is not running on 127.0.0.1:5672"
)


def unique_mesh() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mesh() -> str:
    return unique_mesh()


@pytest.fixture
async def brokers(mesh: str) -> AsyncIterator[Callable[..., Awaitable[AmqpBroker]]]:
    """Start brokers (nodes) of the test's mesh; every one is torn down afterwards."""
    started: list[AmqpBroker] = []

    async def start(**options: Any) -> AmqpBroker:
        broker = AmqpBroker(URL, mesh=mesh, **options)
        await broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in reversed(started):
        await broker.delete_topology()
        await broker.close()


@pytest.fixture
async def raw() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(URL)
    yield connection
    await connection.close()


def envelope(topic: str, body: bytes = b"\xa2hi", *, kind: str = "event") -> Envelope:
    return Envelope(uuid.uuid4().hex, kind, topic, body, "msgpack", {"wm-sender": "test-1"})  # type: ignore[arg-type]


def binding(
    handler: str = "on_order",
    *patterns: str,
    kind: str = "event",
    delivery: str = "pool",
    node: str = "node-1",
    prefetch: int = 16,
    service: str = "billing",
) -> Binding:
    return Binding(service, handler, kind, patterns or ("orders.*",), delivery, node, prefetch)  # type: ignore[arg-type]


class Collector:
    """A handler that records what it receives and settles it with ``settle``."""

    def __init__(self, settle: Callable[[Received], Awaitable[None]] | None = None) -> None:
        self.received: list[Envelope] = []
        self.settle = settle
        self._changed = asyncio.Event()

    async def __call__(self, received: Received) -> None:
        self.received.append(received.envelope)
        self._changed.set()
        if self.settle is not None:
            await self.settle(received)
        else:
            await received.ack()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Envelope]:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.received

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.received]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds (the broker offers no event for what it checks)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def redeclare(
    raw: aio_pika.abc.AbstractConnection, what: str, name: str, **kwargs: Any
) -> None:
    """Declare ``name`` as documented on a channel of its own: RabbitMQ refuses with
    PRECONDITION_FAILED when it exists with other properties or arguments."""
    channel = await raw.channel()
    try:
        if what == "exchange":
            await channel.declare_exchange(name, **kwargs)
        else:
            await channel.declare_queue(name, **kwargs)
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_topology_is_declared_as_documented(
    brokers: Callable[..., Awaitable[AmqpBroker]], raw: aio_pika.abc.AbstractConnection, mesh: str
) -> None:
    broker = await brokers()
    retried = Collector(lambda r: r.retry(1.0, "later") if r.envelope.attempt == 1 else r.ack())
    await broker.consume(binding("pool", "orders.*"), retried)
    await broker.consume(binding("single", "orders.#", delivery="singleton"), Collector())
    await broker.consume(binding("each", "#", delivery="broadcast"), Collector())
    await broker.consume(binding("charge", "billing.charge", kind="command"), Collector())
    await broker.publish([envelope("orders.created")], timeout=5)
    await retried.wait_for(2)

    topic, direct = aio_pika.ExchangeType.TOPIC, aio_pika.ExchangeType.DIRECT
    fanout, headers = aio_pika.ExchangeType.FANOUT, aio_pika.ExchangeType.HEADERS
    for name, kind in (
        (f"wm.{mesh}.events", topic),
        (f"wm.{mesh}.commands", direct),
        (f"wm.{mesh}.dead", fanout),
        (f"wm.{mesh}.delay", headers),
    ):
        await redeclare(raw, "exchange", name, type=kind, durable=True)
    dlx = {"x-dead-letter-exchange": f"wm.{mesh}.dead"}
    await redeclare(raw, "queue", f"wm.{mesh}.event.billing.pool", durable=True, arguments=dlx)
    await redeclare(
        raw,
        "queue",
        f"wm.{mesh}.event.billing.single",
        durable=True,
        arguments={**dlx, "x-single-active-consumer": True},
    )
    await redeclare(raw, "queue", f"wm.{mesh}.command.billing.charge", durable=True, arguments=dlx)
    await redeclare(raw, "queue", f"wm.{mesh}.dead", durable=True)
    await redeclare(
        raw,
        "queue",
        f"wm.{mesh}.delay.1000",
        durable=True,
        arguments={"x-message-ttl": 1000, "x-dead-letter-exchange": ""},
    )
    # the broadcast queue is exclusive to its node's connection
    with pytest.raises(aiormq.exceptions.ChannelLockedResource):
        await redeclare(raw, "queue", f"wm.{mesh}.event.billing.each@node-1", passive=True)
    # and the check above means something: other arguments are refused
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await redeclare(raw, "queue", f"wm.{mesh}.event.billing.pool", durable=True)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await redeclare(raw, "exchange", f"wm.{mesh}.events", type=direct, durable=True)


async def test_pool_broadcast_and_singleton(
    brokers: Callable[..., Awaitable[AmqpBroker]],
) -> None:
    nodes = [await brokers(), await brokers()]
    pool = [Collector(), Collector()]
    each = [Collector(), Collector()]
    single = [Collector(), Collector()]
    for i, node in enumerate(nodes):
        await node.consume(binding("pool", node=f"n{i}"), pool[i])
        await node.consume(binding("each", delivery="broadcast", node=f"n{i}"), each[i])
        await node.consume(binding("single", delivery="singleton", node=f"n{i}"), single[i])
    sent = [envelope("orders.created") for _ in range(40)]
    await nodes[0].publish(sent, timeout=5)

    ids = {e.id for e in sent}
    for collector in each:
        assert set(e.id for e in await collector.wait_for(40)) == ids

    async def all_arrived() -> bool:
        return sum(len(c.received) for c in (*pool, *single)) >= 80

    await until(all_arrived)
    assert sorted(pool[0].ids + pool[1].ids) == sorted(ids)
    # one active consumer takes every message of the singleton queue
    assert sorted([len(single[0].received), len(single[1].received)]) == [0, 40]
    assert set(single[0].ids + single[1].ids) == ids


async def test_a_command_waits_for_its_first_consumer(
    brokers: Callable[..., Awaitable[AmqpBroker]],
) -> None:
    sender, receiver = await brokers(), await brokers()
    sent = envelope("billing.charge", kind="command")
    await sender.publish([sent], timeout=5)  # no node of billing runs yet
    await sender.publish([envelope("orders.nobody")], timeout=5)  # an event nobody wants
    commands = Collector()
    await receiver.consume(binding("charge", "billing.charge", kind="command"), commands)
    (got,) = await commands.wait_for(1)
    assert got == sent


async def test_retry_comes_back_later_with_the_next_attempt(
    brokers: Callable[..., Awaitable[AmqpBroker]],
) -> None:
    broker = await brokers()

    async def settle(received: Received) -> None:
        if received.envelope.attempt < 3:
            await received.retry(0.05, "not yet")
        else:
            await received.ack()

    collector = Collector(settle)
    await broker.consume(binding(prefetch=1), collector)
    first, second = envelope("orders.created"), envelope("orders.created")
    await broker.publish([first], timeout=5)
    await broker.publish([second], timeout=5)
    got = await collector.wait_for(6)
    # a waiting retry holds no prefetch slot: the second message was not stuck behind it
    assert [(e.id, e.attempt) for e in got[:2]] == [(first.id, 1), (second.id, 1)]
    assert sorted((e.id, e.attempt) for e in got) == sorted(
        (m.id, a) for m in (first, second) for a in (1, 2, 3)
    )
    assert all(e.headers == first.headers and e.body == first.body for e in got)


async def test_dead_letters_list_show_replay_purge(
    brokers: Callable[..., Awaitable[AmqpBroker]],
) -> None:
    broker = await brokers()
    replayed: list[Envelope] = []

    async def settle(received: Received) -> None:
        if received.envelope.attempt == 1 and received.envelope.topic == "orders.bad":
            if received.envelope.id in {e.id for e in replayed}:
                await received.ack()
            else:
                await received.dead(f"field 'sku' is missing in {received.envelope.id}")
        else:
            await received.ack()

    collector = Collector(settle)
    await broker.consume(binding("pool", "orders.*"), collector)
    bad = [envelope("orders.bad") for _ in range(3)]
    await broker.publish(bad, timeout=5)
    await collector.wait_for(3)

    async def three_dead() -> bool:
        return len(await broker.dead_letters()) >= 3

    await until(three_dead)
    letters = await broker.dead_letters()
    assert sorted(letter.envelope.id for letter in letters) == sorted(e.id for e in bad)
    for letter in letters:
        assert letter.queue == "billing/pool"
        assert letter.reason == f"field 'sku' is missing in {letter.envelope.id}"
        assert letter.died_at > 0
        assert letter.envelope.topic == "orders.bad"
        assert letter.envelope.headers == {"wm-sender": "test-1"}
    assert len(await broker.dead_letters(limit=2)) == 2
    shown = await broker.dead_letter(bad[1].id)
    assert shown is not None and shown.envelope.body == bad[1].body
    assert await broker.dead_letter("no-such-id") is None

    replayed.append(bad[0])
    assert await broker.replay([bad[0].id]) == 1
    again = await collector.wait_for(4)
    assert (again[3].id, again[3].attempt) == (bad[0].id, 1)
    assert sorted(lt.envelope.id for lt in await broker.dead_letters()) == sorted(
        e.id for e in bad[1:]
    )
    assert await broker.purge([bad[1].id]) == 1
    assert [lt.envelope.id for lt in await broker.dead_letters()] == [bad[2].id]
    assert await broker.purge() == 1
    assert await broker.dead_letters() == []


async def test_a_message_the_broker_dead_letters_shows_why(
    brokers: Callable[..., Awaitable[AmqpBroker]], raw: aio_pika.abc.AbstractConnection, mesh: str
) -> None:
    broker = await brokers()
    subscription = await broker.consume(binding("pool"), Collector())  # declares the queue
    await subscription.cancel()
    sent = envelope("orders.created")
    await broker.publish([sent], timeout=5)
    # a foreign consumer rejects it: the queue's dead-letter exchange takes it
    channel = await raw.channel()
    queue = await channel.get_queue(f"wm.{mesh}.event.billing.pool")
    message = await queue.get(timeout=5)
    assert message is not None
    await message.reject(requeue=False)

    async def one_dead() -> bool:
        return bool(await broker.dead_letters())

    await until(one_dead)
    letters = await broker.dead_letters()
    (letter,) = letters
    assert letter.envelope == sent
    assert letter.reason == "dead-lettered by the broker: rejected"
    assert letter.queue == "billing/pool"
    # replay finds its way back through the x-death header
    collector = Collector()
    await broker.consume(binding("pool"), collector)
    assert await broker.replay() == 1
    assert (await collector.wait_for(1))[0].id == sent.id


async def test_prefetch_bounds_the_messages_handed_over(
    brokers: Callable[..., Awaitable[AmqpBroker]],
) -> None:
    broker = await brokers()
    held: list[Received] = []
    arrived = asyncio.Event()

    async def hold(received: Received) -> None:
        held.append(received)
        arrived.set()

    await broker.consume(binding(prefetch=3), hold)
    await broker.publish([envelope("orders.created") for _ in range(10)], timeout=5)
    async with asyncio.timeout(10):
        while len(held) < 3:
            arrived.clear()
            await arrived.wait()
    # nothing more comes while three are unsettled ...
    await asyncio.sleep(0.3)
    assert len(held) == 3
    # ... and one more for each one settled
    await held[0].ack()
    async with asyncio.timeout(10):
        while len(held) < 4:
            arrived.clear()
            await arrived.wait()
    for received in held[1:]:
        await received.ack()
    async with asyncio.timeout(10):
        while len(held) < 10:
            await asyncio.sleep(0.01)
            for received in held[4:]:
                await received.ack()


async def test_quorum_queues(
    brokers: Callable[..., Awaitable[AmqpBroker]], raw: aio_pika.abc.AbstractConnection, mesh: str
) -> None:
    broker = await brokers(quorum_queues=True)
    events = Collector(lambda r: r.retry(0.05, "again") if r.envelope.attempt == 1 else r.ack())
    commands = Collector()
    await broker.consume(binding("pool"), events)
    await broker.consume(binding("charge", "billing.charge", kind="command"), commands)
    await broker.consume(binding("each", delivery="broadcast"), Collector())  # stays classic
    await broker.publish(
        [envelope("orders.created"), envelope("billing.charge", kind="command")], timeout=5
    )
    assert [e.attempt for e in await events.wait_for(2)] == [1, 2]
    await commands.wait_for(1)
    quorum = {"x-queue-type": "quorum"}
    dlx = {"x-dead-letter-exchange": f"wm.{mesh}.dead"}
    for name in (f"wm.{mesh}.event.billing.pool", f"wm.{mesh}.command.billing.charge"):
        await redeclare(raw, "queue", name, durable=True, arguments={**dlx, **quorum})
    await redeclare(raw, "queue", f"wm.{mesh}.dead", durable=True, arguments=quorum)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await redeclare(raw, "queue", f"wm.{mesh}.event.billing.pool", durable=True, arguments=dlx)


async def test_a_queue_declared_otherwise_is_a_config_error(
    brokers: Callable[..., Awaitable[AmqpBroker]], raw: aio_pika.abc.AbstractConnection, mesh: str
) -> None:
    broker = await brokers()
    await broker.consume(binding("pool"), Collector())  # a durable pool queue ...
    with pytest.raises(ConfigError, match="other arguments"):
        # ... that a later version of the service wants as a singleton
        await broker.consume(binding("pool", delivery="singleton"), Collector())


async def test_an_unreachable_broker_fails_clearly() -> None:
    broker = AmqpBroker("amqp://guest:secret@127.0.0.1:1/", mesh=unique_mesh(), connect_timeout=2)
    with pytest.raises(BrokerUnavailable, match=r"connect to amqp://guest@127\.0\.0\.1:1/") as info:
        await broker.start()
    assert "secret" not in str(info.value)
    with pytest.raises(BrokerUnavailable, match="did not accept 1 message"):
        await broker.publish([envelope("orders.created")], timeout=0.5)
