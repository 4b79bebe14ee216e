"""Each node's /metrics endpoint after a known workload: calls, errors, latency, multicast
outcomes, publish drops and link queues, read over real HTTP from real nodes."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wiremesh import (
    Context,
    InvalidPayload,
    Service,
    ServiceError,
    on_event,
    rpc,
    subscribe,
    timer,
)
from wiremesh.errors import DeadlineExceeded
from wiremesh.observability.metrics import METRICS_KEY
from wiremesh.runtime.node import Node
from wiremesh.testing import TestMesh


class Refused(ServiceError):
    """The shop refuses this order."""


class Shop(Service):
    name = "shop"

    @rpc
    async def buy(self, ctx: Context, quantity: int) -> int:
        if quantity > 10:
            raise Refused("too many")
        return quantity

    #: seconds more each nap of this node takes (a test makes one node slow)
    oversleep = 0.0

    @rpc
    async def nap(self, ctx: Context, seconds: float) -> str:
        await asyncio.sleep(seconds + self.oversleep)
        return ctx.node_id

    @rpc
    async def ask_around(self, ctx: Context, seconds: float) -> int:
        result = await ctx.multicast("shop.nap", seconds, timeout=0.5)
        return len(result.values)

    @subscribe("news.#")
    async def on_news(self, ctx: Context, text: str) -> None:
        return None


def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    address = node.info.metadata[METRICS_KEY]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def read(node: Node) -> dict[Any, float]:
    return await asyncio.to_thread(scrape, node)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g}s")
        await asyncio.sleep(0.01)


async def test_calls_are_counted_by_outcome_with_their_latency() -> None:
    async with TestMesh(Shop) as mesh:
        node = mesh.nodes[0]
        for quantity in (1, 2, 3, 4, 5):
            await mesh.call("shop.buy", quantity)
        for _ in range(2):
            with pytest.raises(Refused):
                await mesh.call("shop.buy", 11)
        with pytest.raises(Exception):  # noqa: B017 - the payload is refused at the node
            await mesh.call("shop.buy", "many")
        samples = await read(node)
    handled = "wiremesh_calls_handled_total"
    assert value(samples, handled, service="shop", method="buy", status="ok") == 5
    assert value(samples, handled, service="shop", method="buy", status="failed_precondition") == 2
    assert value(samples, handled, service="shop", method="buy", status="invalid_payload") == 1
    count = value(samples, "wiremesh_call_handle_seconds_count", service="shop", method="buy")
    assert count == 8
    # every call is in the +Inf bucket, and took more than nothing
    assert (
        value(
            samples, "wiremesh_call_handle_seconds_bucket", service="shop", method="buy", le="+Inf"
        )
        == 8
    )
    assert value(samples, "wiremesh_call_handle_seconds_sum", service="shop", method="buy") > 0


async def test_calls_made_and_multicast_outcomes_on_the_calling_node() -> None:
    async with TestMesh(Shop, replicas={"shop": 3}) as mesh:
        # every node naps 0.01 s, but one naps past the multicast's 0.5 s deadline
        mesh.instance("shop", 2).oversleep = 5.0
        caller = mesh.nodes[0]
        answered = await mesh.call(f"shop@{caller.node_id}.ask_around", 0.01)
        assert answered == 2
        samples = await read(caller)
    assert (
        value(samples, "wiremesh_multicasts_total", service="shop", method="nap", mode="all") == 1
    )
    replies = "wiremesh_multicast_replies_total"
    assert value(samples, replies, service="shop", method="nap", outcome="ok") == 2
    assert value(samples, replies, service="shop", method="nap", outcome="deadline") == 1


async def test_node_counters_and_link_queues_are_exported() -> None:
    async with TestMesh(Shop) as mesh:
        node = mesh.nodes[0]
        publisher = Node(Shop, registry_address=mesh.registry.address, data_dir=mesh.data_dir / "p")
        await publisher.start()
        try:
            await publisher.view.wait_for(lambda s: len(s.serving("shop")) == 2, 5)
            for i in range(20):
                await publisher.caller.publish("news.today", f"item {i}")
            await eventually(lambda: node.subscriptions.delivered == 20)
            sent = await read(publisher)
            got = await read(node)
        finally:
            await publisher.stop(0.2)
    # the publisher's own node also subscribes to news.#: one frame to each of the two
    assert value(sent, "wiremesh_node_published_total") == 20
    assert value(sent, "wiremesh_node_publish_sent_total") == 40
    assert value(sent, "wiremesh_node_publish_dropped_total") == 0
    assert value(got, "wiremesh_node_publish_delivered_total") == 20
    assert ("wiremesh_node_publish_delivery_queued", ()) in got  # a gauge
    queued = [k for k in sent if k[0] == "wiremesh_link_queued_frames"]
    assert {dict(labels)["peer"] for _, labels in queued} >= {node.node_id}


async def test_the_registry_gauge_says_whether_the_registry_answers() -> None:
    async with TestMesh(Shop) as mesh:
        node = mesh.nodes[0]
        assert value(await read(node), "wiremesh_registry_reachable") == 1
        await mesh.registry.stop()
        await eventually(lambda: not node.view.reachable)
        assert value(await read(node), "wiremesh_registry_reachable") == 0
        assert await mesh.call("shop.buy", 1) == 1  # the last view still serves


async def test_a_node_without_an_endpoint_serves_no_metrics() -> None:
    async with TestMesh(Shop, metrics_port=None) as mesh:
        node = mesh.nodes[0]
        assert node.metrics_endpoint is None
        assert METRICS_KEY not in node.info.metadata
        assert await mesh.call("shop.buy", 1) == 1
        # still counted in process, for whoever reads the registry of metrics
        assert node.metrics.calls_handled.labels("shop", "buy", "ok")._value.get() == 1


async def test_deadline_outcome_is_counted_as_such() -> None:
    async with TestMesh(Shop) as mesh:
        with pytest.raises(DeadlineExceeded):
            await mesh.call("shop.nap", 2.0, timeout=0.2)
        node = mesh.nodes[0]
        deadline = time.monotonic() + 5
        samples: dict[Any, float] = {}
        while time.monotonic() < deadline:
            samples = await read(node)
            if value(samples, "wiremesh_call_handle_seconds_count", service="shop", method="nap"):
                break
            await asyncio.sleep(0.05)
    handled = "wiremesh_calls_handled_total"
    outcomes = {
        dict(labels)["status"]: n
        for (name, labels), n in samples.items()
        if name == handled and dict(labels).get("method") == "nap"
    }
    # over a link the caller's cancel stops the handler: cancelled, or deadline when the
    # node's own timer fired first
    assert sum(outcomes.values()) == 1
    assert set(outcomes) <= {"cancelled", "deadline_exceeded"}


class Ledger(Service):
    name = "ledger"

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.days = 0

    @timer(every=1)
    async def close_day(self, ctx: Context) -> None:
        self.days += 1

    @on_event("ledger.entry")
    async def on_entry(self, ctx: Context, amount: int) -> None:
        if amount < 0:
            raise InvalidPayload("a negative entry")  # straight to the dead letters
        self.seen.append(amount)


async def test_durable_messages_are_counted_on_the_consuming_node() -> None:
    async with TestMesh(Ledger, broker="embedded") as mesh:
        for amount in (1, 2, 3, -1):
            await mesh.emit("ledger.entry", amount)
        ledger: Ledger = mesh.instance("ledger")
        await eventually(lambda: len(ledger.seen) == 3)
        node = mesh.nodes[0]
        await eventually(lambda: node.stats()["messages_dead"] == 1)
        await eventually(lambda: ledger.days >= 1)
        samples = await read(node)
    assert value(samples, "wiremesh_node_messages_handled_total") == 3
    assert value(samples, "wiremesh_node_messages_dead_total") == 1
    # a timer's ticks are counted apart from the messages
    assert value(samples, "wiremesh_node_ticks_run_total") >= 1
    assert ("wiremesh_node_messages_waiting", ()) in samples  # a gauge
