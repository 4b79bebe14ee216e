"""One service on many hosts, one PostgreSQL store: nodes that start at once create the
schema once, a dead node's outbox rows are relayed by a live node, two live relays never
send the same row, and the pool size is a setting.

Every PostgreSQL test runs in a fresh database of its own; the nodes are stores with
engines of their own, as on separate hosts, and the broker is a real one (embedded or
RabbitMQ).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from tests.fixtures.meshes import eventually
from tests.fixtures.postgres import PG_HOST, PG_PORT, fresh_database, postgres_running
from tests.messaging.svc_messaging import Ledger
from wiremesh.core.retry import Backoff
from wiremesh.errors import ConfigError
from wiremesh.messaging import outbox
from wiremesh.messaging.base import Binding, Broker, Envelope, Received
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.messaging.embedded import EmbeddedBroker
from wiremesh.messaging.outbox import PAGE, SWEEP_AGE, SWEEP_EVERY, Relay
from wiremesh.messaging.store import MAX_OVERFLOW, POOL_SIZE, Store, outbox_table
from wiremesh.runtime.config import config_from_text
from wiremesh.runtime.node import Node, NodeMessaging
from wiremesh.runtime.node_process import NodeLaunch
from wiremesh.runtime.supervisor import NodeProcess, Supervisor

SERVICE = "billing"
TOPIC = "billing.charged"


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test alone, dropped at the end."""
    if not postgres_running():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with fresh_database() as name:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"


class Consumer:
    """What the broker delivered to the one consumer of :data:`TOPIC`, by message id."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()

    async def __call__(self, received: Received) -> None:
        self.ids[received.envelope.id] += 1
        await received.ack()


@pytest.fixture
async def broker(broker_url: str, tmp_path: Path) -> AsyncIterator[Broker]:
    """A real broker: the embedded one (its server in this event loop) or RabbitMQ."""
    if broker_url == "embedded":
        server = BrokerServer(tmp_path / "broker.db")
        await server.start()
        embedded = EmbeddedBroker(server.address)
        try:
            yield embedded
        finally:
            await embedded.close()
            await server.stop()
        return
    from wiremesh.messaging.amqp import AmqpBroker

    amqp = AmqpBroker(broker_url, mesh=f"test-{secrets.token_hex(5)}")
    await amqp.start()
    try:
        yield amqp
    finally:
        await amqp.delete_topology()
        await amqp.close()


async def consume(broker: Broker) -> Consumer:
    received = Consumer()
    binding = Binding("audit", "charged", "event", (TOPIC,), "pool", "audit-1", 64)
    await broker.consume(binding, received)
    return received


async def everything_delivered(broker: Broker, received: Consumer) -> None:
    """Wait until the consumer has what was published so far: a last message, sent after
    everything else, has arrived (the queue hands messages over in their order)."""
    last = Envelope(secrets.token_hex(16), "event", TOPIC, b"\xc0", "msgpack")
    await broker.publish([last], timeout=10)
    await eventually(lambda: received.ids[last.id], 15, "the last message")
    del received.ids[last.id]


class HostNode:
    """A node of :data:`SERVICE` as the store and relay see it: a store with an engine
    of its own (another host), and its relay once started."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.node_id = f"{SERVICE}-{secrets.token_hex(2)}"
        self.store = Store(url, path=tmp_path / "unused.db", service=SERVICE, sender=self.node_id)
        self.relay: Relay | None = None
        #: the ids this node's relay handed to the broker
        self.sent: list[str] = []

    async def start_relay(
        self,
        broker: Broker,
        *,
        sweep_every: float = SWEEP_EVERY,
        sweep_age: float = SWEEP_AGE,
        page: int = PAGE,
    ) -> Relay:
        node = self

        class Sending:
            """The real broker, noting what this node's relay hands it."""

            async def publish(self, envelopes: Sequence[Envelope], *, timeout: float) -> None:
                await broker.publish(envelopes, timeout=timeout)
                node.sent.extend(e.id for e in envelopes)

        self.relay = Relay(
            self.store,
            Sending(),  # type: ignore[arg-type]
            timeout=10,
            sweep_every=sweep_every,
            sweep_age=sweep_age,
            page=page,
        )
        await self.relay.start()
        return self.relay

    async def charge(self, count: int) -> list[str]:
        async with self.store.transaction() as tx:
            return [tx.emit(TOPIC, n) for n in range(count)]

    async def close(self) -> None:
        if self.relay is not None:
            await self.relay.close(grace=0)
        await self.store.close()


@pytest.fixture
async def nodes(database: str, tmp_path: Path) -> AsyncIterator[list[HostNode]]:
    """Make nodes with ``nodes.append(HostNode(database, tmp_path))``; closed afterwards."""
    made: list[HostNode] = []
    yield made
    for node in made:
        await node.close()


async def outbox_rows(store: Store) -> int:
    async with store.engine.connect() as connection:
        count = await connection.scalar(sa.select(sa.func.count()).select_from(outbox_table))
    return int(count or 0)


# ----------------------------------------------------------------- schema creation


async def test_six_nodes_opening_a_fresh_database_at_once_all_succeed(
    database: str, nodes: list[HostNode], tmp_path: Path
) -> None:
    for _ in range(6):
        nodes.append(HostNode(database, tmp_path))
    for node in nodes:  # every engine connected first: the race is on CREATE TABLE alone
        async with node.store.engine.connect():
            pass
    service_tables = sa.MetaData()
    sa.Table("charges", service_tables, sa.Column("id", sa.Integer, primary_key=True))

    async def open_store(node: HostNode) -> None:
        await node.store.prepare()
        await node.store.create_all(service_tables)

    await asyncio.gather(*(open_store(node) for node in nodes))

    def schema(connection: sa.Connection) -> dict[str, object]:
        inspector = sa.inspect(connection)
        return {
            "tables": sorted(inspector.get_table_names()),
            "outbox": [c["name"] for c in inspector.get_columns("wm_outbox")],
            "outbox key": inspector.get_pk_constraint("wm_outbox")["constrained_columns"],
            "outbox indexes": [i["column_names"] for i in inspector.get_indexes("wm_outbox")],
            "inbox key": inspector.get_pk_constraint("wm_inbox")["constrained_columns"],
            "inbox indexes": [i["column_names"] for i in inspector.get_indexes("wm_inbox")],
        }

    async with nodes[0].store.engine.connect() as connection:
        found = await connection.run_sync(schema)
    assert found == {
        "tables": ["charges", "wm_inbox", "wm_outbox"],
        "outbox": ["id", "service", "kind", "topic", "body", "codec", "headers", "created_at"],
        "outbox key": ["id"],
        "outbox indexes": [["service"]],
        "inbox key": ["service", "handler", "message_id"],
        "inbox indexes": [["handled_at"]],
    }
    ids = await asyncio.gather(*(node.charge(1) for node in nodes))  # every store works
    assert await outbox_rows(nodes[0].store) == len(ids)


# ------------------------------------------------------------------ the outbox


async def test_a_row_left_by_a_dead_node_is_relayed_by_a_live_node_within_15s(
    database: str, nodes: list[HostNode], broker: Broker, tmp_path: Path
) -> None:
    assert SWEEP_AGE + SWEEP_EVERY <= 10  # the documented bound, with room to spare
    received = await consume(broker)
    live, dead = HostNode(database, tmp_path), HostNode(database, tmp_path)
    nodes += [live, dead]
    await live.start_relay(broker)  # the defaults
    [own] = await live.charge(1)
    # the live relay has swept once (at its start) and sent its own message
    await eventually(lambda: received.ids[own], 10, "the live node's own message")
    left = await dead.charge(3)  # committed; its relay never runs: the node died
    await eventually(lambda: all(received.ids[i] for i in left), 15, "the dead node's rows")
    await eventually(lambda: set(left) <= set(live.sent), 5, "sent by the live relay")
    assert await outbox_rows(live.store) == 0
    await everything_delivered(broker, received)
    assert received.ids == Counter([own, *left])


async def test_rows_claimed_by_a_relay_that_went_silent_are_freed_and_relayed(
    database: str, nodes: list[HostNode], broker: Broker, tmp_path: Path
) -> None:
    # A relay claims rows, then its host is cut off: it can neither publish nor roll
    # back. PostgreSQL must end that claim by itself, so that a live node relays the rows.
    received = await consume(broker)
    cut, live = HostNode(database, tmp_path), HostNode(database, tmp_path)
    nodes += [cut, live]
    left = await cut.charge(3)
    async with cut.store.engine.connect() as connection:
        transaction = await connection.begin()
        await outbox.bound_claim(connection, 0.5)
        assert await outbox.claim_ids(connection, left) == set(left)
        # silent from here on, as a relay whose host was cut off mid-claim
        await live.start_relay(broker, sweep_every=0.5, sweep_age=0.0)
        await eventually(lambda: all(received.ids[i] for i in left), 15, "the claimed rows")
        with pytest.raises(sa.exc.DBAPIError):  # its session was ended by PostgreSQL
            await transaction.commit()
    await everything_delivered(broker, received)
    assert received.ids == Counter(left)


async def test_two_live_relays_racing_over_200_rows_send_each_exactly_once(
    database: str, nodes: list[HostNode], broker: Broker, tmp_path: Path
) -> None:
    received = await consume(broker)
    dead = HostNode(database, tmp_path)
    nodes.append(dead)
    left = [i for _ in range(20) for i in await dead.charge(10)]
    first, second = HostNode(database, tmp_path), HostNode(database, tmp_path)
    nodes += [first, second]
    # small pages: the two relays' sweeps claim rows page by page, side by side
    await asyncio.gather(first.start_relay(broker, page=10), second.start_relay(broker, page=10))
    await eventually(lambda: len(received.ids) == len(left), 30, "every row relayed")
    assert await outbox_rows(dead.store) == 0
    await everything_delivered(broker, received)
    assert received.ids == Counter(left)  # each one once
    assert sorted(first.sent + second.sent) == sorted(left)
    assert first.sent and second.sent  # the race was real: both relays took part


async def test_a_nodes_own_relay_and_another_nodes_sweeps_never_send_a_row_twice(
    database: str, nodes: list[HostNode], broker: Broker, tmp_path: Path
) -> None:
    received = await consume(broker)
    writer, sweeper = HostNode(database, tmp_path), HostNode(database, tmp_path)
    nodes += [writer, sweeper]
    await writer.start_relay(broker)
    # sweeps that take every row at once, as often as they can: a race with the writer's
    # own relay on each of its rows
    await sweeper.start_relay(broker, sweep_every=0.001, sweep_age=0.0, page=5)
    emitted = [i for _ in range(100) for i in await writer.charge(2)]
    await eventually(lambda: len(received.ids) == len(emitted), 30, "every row relayed")
    assert await outbox_rows(writer.store) == 0
    await everything_delivered(broker, received)
    assert received.ids == Counter(emitted)
    assert sorted(writer.sent + sweeper.sent) == sorted(emitted)


# -------------------------------------------------------------------- the pool


POOL = """\
[services.ledger]
target = "svc_messaging:Ledger"
store = "{url}"
pool_size = 3
max_overflow = 0

[services.opened]
target = "svc_messaging:Opened"
"""


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("pool_size = 0", "greater than or equal to 1"),
        ("pool_size = -2", "greater than or equal to 1"),
        ('pool_size = "many"', "valid integer"),
        ("max_overflow = -1", "greater than or equal to 0"),
    ],
)
def test_the_pool_settings_are_validated(tmp_path: Path, setting: str, words: str) -> None:
    text = f'[services.ledger]\ntarget = "svc_messaging:Ledger"\n{setting}\n'
    with pytest.raises(ConfigError) as caught:
        config_from_text(text, root=tmp_path)
    key = setting.partition(" ")[0]
    assert f"wiremesh.toml:3: services.ledger.{key}: " in str(caught.value)
    assert words in str(caught.value)


async def test_a_store_has_the_pool_size_its_service_sets(database: str, tmp_path: Path) -> None:
    config = config_from_text(POOL.format(url=database), root=tmp_path)
    assert (config.services["ledger"].pool_size, config.services["ledger"].max_overflow) == (3, 0)
    assert config.services["opened"].pool_size is None  # the store's default
    supervisor = Supervisor(config, echo=lambda line: None)
    supervisor.registry = SimpleNamespace(address="127.0.0.1:7400")  # type: ignore[assignment]
    slot = NodeProcess(service="ledger", slot=0, backoff=Backoff(), node_id="ledger-1")
    launch = NodeLaunch.from_json(supervisor.launch_of(slot).to_json())
    assert (launch.store, launch.pool_size, launch.max_overflow) == (database, 3, 0)

    node = Node(
        Ledger,
        registry_address=launch.registry,
        data_dir=tmp_path / "ledger",
        messaging=NodeMessaging(
            store_url=launch.store, pool_size=launch.pool_size, max_overflow=launch.max_overflow
        ),
    )
    defaults = Store(database, path=tmp_path / "unused.db", service="ledger")
    try:
        assert node.store.engine.pool.size() == 3  # type: ignore[attr-defined]
        async with node.store.transaction() as tx:  # and it works
            tx.emit("accounts.opened", "ada")
        assert defaults.engine.pool.size() == POOL_SIZE == 5  # type: ignore[attr-defined]
        assert defaults.max_overflow == MAX_OVERFLOW == 10
    finally:
        await node.store.close()
        await defaults.close()


def test_a_sqlite_store_ignores_the_pool_size(tmp_path: Path) -> None:
    store = Store(None, path=tmp_path / "store.db", service="ledger", pool_size=3)
    assert store.is_sqlite and store.engine is not None


def test_a_store_refuses_a_pool_size_below_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pool_size must be >= 1"):
        Store(None, path=tmp_path / "store.db", service="ledger", pool_size=0)
