"""Delayed messages (``emit(..., delay=…)``, ``send(..., at=…)``) on both brokers: held until
due, then handled within a second of it, through a restart of the nodes (and of the
embedded broker); and the rules, without a broker."""

from __future__ import annotations

import asyncio
import math
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.meshes import eventually
from tests.fixtures.rabbitmq_node import RabbitNode
from wiremesh import Context, InvalidPayload, Service, command, on_event
from wiremesh.messaging.amqp import topology as topo
from wiremesh.messaging.base import HEADER_DUE, MAX_DELAY, due_time
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.testing import TestMesh

#: (what, when it was handled, unix time)
HANDLED: list[tuple[str, float]] = []


class Alarm(Service):
    name = "alarm"

    @command
    async def ring(self, ctx: Context, what: str) -> None:
        # a delayed message says when it was due (in its headers, as ctx.metadata)
        assert (HEADER_DUE in ctx.metadata) is (what != "now")
        HANDLED.append((what, time.time()))

    @on_event("alarm.noted")
    async def noted(self, ctx: Context, what: str) -> None:
        HANDLED.append((what, time.time()))


@pytest.fixture(autouse=True)
def fresh() -> None:
    HANDLED.clear()


def handled(what: str) -> float | None:
    return next((at for name, at in HANDLED if name == what), None)


async def test_a_delayed_command_and_event_are_handled_when_due_not_before(
    broker_url: str,
) -> None:
    async with TestMesh(Alarm, broker=broker_url) as mesh:
        sent = time.time()
        await mesh.client.send("alarm.ring", "later", delay=1.5)
        await mesh.client.emit("alarm.noted", "at", at=datetime.now(UTC) + timedelta(seconds=1))
        await mesh.client.send("alarm.ring", "now")
        await eventually(lambda: handled("now") is not None, 10)
        assert handled("later") is None and handled("at") is None  # not before it is due
        await eventually(lambda: handled("later") is not None and handled("at") is not None, 10)
    later, at = handled("later"), handled("at")
    assert later is not None and at is not None
    assert 1.5 <= later - sent < 2.5  # within a second of its due time
    assert 1.0 <= at - sent < 2.0


async def test_a_delayed_message_outlives_the_nodes_that_were_running(
    broker_url: str, tmp_path: Path
) -> None:
    name = f"delayed-{time.time_ns()}"
    if broker_url == "embedded":
        server = BrokerServer(tmp_path / "broker.db")
        await server.start()
        url = server.url
    else:
        url = broker_url
    try:
        async with TestMesh(Alarm, broker=url, mesh_name=name, data_dir=tmp_path) as mesh:
            sent = time.time()
            await mesh.client.send("alarm.ring", "across", delay=1.0)
        if broker_url == "embedded":  # and the broker itself restarts, from its disk
            await server.stop()
            server = BrokerServer(tmp_path / "broker.db", port=server.port)
            await server.start()
        await asyncio.sleep(1.5)  # it falls due while no node runs
        assert handled("across") is None
        async with TestMesh(Alarm, broker=url, mesh_name=name, data_dir=tmp_path):
            back = time.time()
            await eventually(lambda: handled("across") is not None, 10)
        at = handled("across")
        assert at is not None and at - sent >= 1.0
        assert at - back < 1.0  # at once when a node is there again
    finally:
        if broker_url == "embedded":
            await server.stop()


async def test_a_delayed_message_on_rabbitmq_outlives_a_restart_of_rabbitmq(
    tmp_path: Path,
) -> None:
    if not RabbitNode.available():
        message = "NOT TESTED: rabbitmq-server is not installed: no RabbitMQ restart here"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    rabbit = RabbitNode(tmp_path / "rabbitmq")  # a node of this test's own: it is restarted
    await asyncio.to_thread(rabbit.start)
    try:
        name = f"delayed-{time.time_ns()}"
        async with TestMesh(Alarm, broker=rabbit.url, mesh_name=name, data_dir=tmp_path) as mesh:
            sent = time.time()
            await mesh.client.send("alarm.ring", "across", delay=2.0)
        await asyncio.to_thread(rabbit.stop)
        await asyncio.to_thread(rabbit.start)  # its data kept: queues and messages
        async with TestMesh(Alarm, broker=rabbit.url, mesh_name=name, data_dir=tmp_path):
            await eventually(lambda: handled("across") is not None, 20)
        at = handled("across")
        assert at is not None and at - sent >= 2.0
    finally:
        await asyncio.to_thread(rabbit.stop)


# -- the rules ---------------------------------------------------------------------------


def test_due_time_reads_a_delay_or_a_time_and_refuses_nonsense() -> None:
    now = 1_000_000.0
    assert due_time(None, None, now=now) is None
    assert due_time(2.5, None, now=now) == now + 2.5
    assert due_time(None, now + 60, now=now) == now + 60
    aware = datetime.fromtimestamp(now + 30, UTC)
    assert due_time(None, aware, now=now) == now + 30
    assert due_time(0, None, now=now) is None  # due at once
    assert due_time(None, now - 5, now=now) is None  # past: at once
    for delay, at, words in [
        (1.0, now, "not both"),
        (-1.0, None, "0 or more"),
        (True, None, "0 or more"),
        (MAX_DELAY + 1, None, "a year at most"),
        (math.inf, None, "a year at most"),
        (None, datetime(2030, 1, 1), "aware datetime"),
        (None, "tomorrow", "unix time or an aware datetime"),
    ]:
        with pytest.raises(InvalidPayload, match=words):
            due_time(delay, at, now=now)  # type: ignore[arg-type]


def test_an_amqp_delayed_message_hops_down_the_buckets_and_ends_within_the_smallest() -> None:
    t = topo.Topology("m")
    headers = {
        topo.DUE_EXCHANGE_HEADER: t.commands,
        topo.DUE_KEY_HEADER: "alarm.ring",
        "x-death": [{"queue": "wm.m.delay.1000", "count": 1}],  # RabbitMQ's, left behind
        "wm-sender": "client",
    }
    for delay in (0.06, 1.5, 37.0, 3600.0, 30 * 86400.0):
        now, due, hops = 0.0, delay, 0
        while True:
            hop = topo.next_hop(t, headers, due, now)
            assert hop is not None
            if hop.bucket is None:
                break
            assert hop.bucket <= (due - now) * 1000  # never past the due time
            assert (hop.exchange, hop.routing_key) == (t.delay, t.delayed)
            now += hop.bucket / 1000
            hops += 1
        assert (hop.exchange, hop.routing_key) == (t.commands, "alarm.ring")
        assert topo.DELAY_HEADER not in hop.headers and topo.DUE_KEY_HEADER not in hop.headers
        assert hop.headers == {"wm-sender": "client"}
        assert 0 <= due - now < topo.MIN_BUCKET_MS / 1000
        assert hop.wait == due - now  # the node waits the rest: never early
        assert hops <= 16, (delay, hops)


def test_an_amqp_delay_shorter_than_the_smallest_bucket_waits_in_it() -> None:
    from wiremesh.messaging.base import Envelope

    t = topo.Topology("m")
    envelope = Envelope("1" * 32, "command", "alarm.ring", b"", "msgpack")
    hop = topo.delayed_hop(t, envelope, t.commands, due=10.02, now=10.0)
    assert hop is not None and hop.bucket == topo.MIN_BUCKET_MS
    assert topo.delayed_hop(t, envelope, t.commands, due=10.0, now=10.0) is None  # due now


def test_a_hop_to_an_exchange_of_another_mesh_is_refused() -> None:
    t = topo.Topology("m")
    assert topo.next_hop(t, {topo.DUE_EXCHANGE_HEADER: "amq.direct"}, 10.0, 0.0) is None
    assert topo.next_hop(t, {topo.DUE_EXCHANGE_HEADER: t.events}, 10.0, 0.0) is None  # no key
