"""Timers (``@timer``, ``@cron``) on both brokers: once per mesh across replicas, or on every
node; a tick handed to another node when its node stops mid-tick; a tick that fell due
while no node ran, run once when one returns; a failed tick retried with its time; and
the rules a service's timers are read by."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.meshes import eventually
from wiremesh import (
    ConfigError,
    Context,
    Invocation,
    Middleware,
    Service,
    cron,
    on_event,
    rpc,
    timer,
)
from wiremesh.core.delivery import DeliveryPolicy
from wiremesh.messaging.base import HEADER_TICK
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.service import ServiceSpec
from wiremesh.testing import TestMesh

#: (timer, tick, node id, attempt) of each run
RUNS: list[tuple[str, datetime, str, int]] = []
KINDS: list[str] = []


class Seen(Middleware):
    async def before(self, run: Invocation) -> None:
        KINDS.append(run.kind)


class Clock(Service):
    name = "clock"
    middleware = (Seen(),)

    @timer(every=1)
    async def once(self, ctx: Context) -> None:
        assert ctx.tick is not None and ctx.message is not None
        RUNS.append(("once", ctx.tick, self.node_id, ctx.message.attempt))

    @timer(every=1, delivery="every_node")
    async def local(self, ctx: Context) -> None:
        assert ctx.tick is not None
        RUNS.append(("local", ctx.tick, self.node_id, 1))


@pytest.fixture(autouse=True)
def fresh() -> None:
    RUNS.clear()
    KINDS.clear()


def runs(name: str) -> list[tuple[datetime, str, int]]:
    return [(tick, node, attempt) for timer_name, tick, node, attempt in RUNS if timer_name == name]


async def test_a_timer_runs_each_tick_once_in_the_mesh_or_on_every_node(broker_url: str) -> None:
    async with TestMesh(Clock, broker=broker_url, replicas={"clock": 3}) as mesh:
        nodes = {n.node_id for n in mesh.nodes}
        await eventually(lambda: len(runs("once")) >= 4, 10)
        stats = [n.stats() for n in mesh.nodes]
    once = [tick for tick, _, _ in runs("once")]
    assert len(once) == len(set(once)), once  # no tick twice
    assert all(b.timestamp() - a.timestamp() == 1.0 for a, b in itertools.pairwise(once)), once
    assert all(t.microsecond == 0 and t.utcoffset() is not None for t in once)
    # one node consumes the ticks (the others stand by), every node planned them
    assert len({node for _, node, _ in runs("once")}) == 1
    local = runs("local")
    ticks = sorted({tick for tick, _, _ in local})
    for tick in ticks[1:-1]:  # (the first and last ticks may fall while nodes start or stop)
        assert {node for t, node, _ in local if t == tick} == nodes
    assert sum(s["ticks_skipped"] for s in stats) > 0  # the copies of the other nodes
    assert sum(s["ticks_run"] for s in stats) >= len(once) + len(local) - 3
    assert set(KINDS) == {"timer"}


class Slow(Service):
    name = "slow"

    @timer(every=1)
    async def tick(self, ctx: Context) -> None:
        assert ctx.tick is not None
        RUNS.append(("slow", ctx.tick, self.node_id, 1))
        if len(RUNS) == 1:
            await asyncio.sleep(60)  # the first run hangs: its node is stopped meanwhile


async def test_a_node_stopped_mid_tick_hands_the_tick_to_another(broker_url: str) -> None:
    async with TestMesh(Slow, broker=broker_url, replicas={"slow": 2}) as mesh:
        await eventually(lambda: len(RUNS) == 1, 10)
        (tick, first, _) = runs("slow")[0]
        await mesh.stop_node(first, grace=0)  # the run is cancelled, its tick unacknowledged
        await eventually(lambda: len(RUNS) >= 3, 10)
    ticks = runs("slow")
    assert ticks[1][0] == tick and ticks[1][1] != first  # the same tick, on the other node
    later = [t for t, _, _ in ticks[1:]]
    assert len(later) == len(set(later))


async def test_a_tick_that_fell_due_while_no_node_ran_runs_once_when_one_returns(
    broker_url: str, tmp_path: Path
) -> None:
    name = f"timers-{time.time_ns()}"
    server = None
    url = broker_url
    if broker_url == "embedded":
        server = BrokerServer(tmp_path / "broker.db")
        await server.start()
        url = server.url
    try:
        async with TestMesh(
            Pacer, broker=url, mesh_name=name, data_dir=tmp_path, replicas={"pacer": 2}
        ):
            await eventually(lambda: len(RUNS) >= 1, 10)
        # both nodes planned the next tick, 2 s after the one that ran; none runs meanwhile
        missed = runs("pacer")[-1][0].timestamp() + 2
        await asyncio.sleep(max(0.0, missed - time.time()) + 0.5)
        assert max(t.timestamp() for t, _, _ in runs("pacer")) < missed
        async with TestMesh(Pacer, broker=url, mesh_name=name, data_dir=tmp_path):
            back = time.time()
            await eventually(lambda: any(t.timestamp() == missed for t, _, _ in runs("pacer")), 10)
            await asyncio.sleep(0.5)  # (room for a second copy to run, if it would)
        assert back > missed  # it ran late, once, with its own time
        assert [t.timestamp() for t, _, _ in runs("pacer")].count(missed) == 1
    finally:
        if server is not None:
            await server.stop()


class Pacer(Service):
    name = "pacer"

    @timer(every=2)
    async def tick(self, ctx: Context) -> None:
        assert ctx.tick is not None
        RUNS.append(("pacer", ctx.tick, self.node_id, 1))


async def test_a_late_copy_of_a_tick_that_ran_is_dropped_by_the_next_consumer(
    broker_url: str,
) -> None:
    async with TestMesh(Pacer, broker=broker_url, replicas={"pacer": 2}) as mesh:
        await eventually(lambda: len(RUNS) >= 1, 10)
        tick, first, _ = runs("pacer")[0]
        (other,) = [n for n in mesh.nodes if n.node_id != first]
        await mesh.stop_node(first)  # the marker of the tick it ran goes back to the queue
        # a copy of that tick, late (as one a busy node moved on would be)
        await mesh.send("pacer.tick:tick", None, headers={HEADER_TICK: tick.isoformat()})
        await eventually(lambda: other.stats()["ticks_skipped"] >= 1, 10)
    assert [t for t, _, _ in runs("pacer")].count(tick) == 1


class Flaky(Service):
    name = "flaky"

    @timer(every=1)
    async def tick(self, ctx: Context) -> None:
        assert ctx.tick is not None and ctx.message is not None
        RUNS.append(("flaky", ctx.tick, self.node_id, ctx.message.attempt))
        if len(RUNS) == 1:
            raise RuntimeError("the first run fails")


async def test_a_failed_tick_is_retried_with_its_time_and_its_copies_wait_for_it(
    broker_url: str,
) -> None:
    policy = DeliveryPolicy(initial=0.2, maximum=0.2)
    async with TestMesh(Flaky, broker=broker_url, replicas={"flaky": 2}, delivery=policy):
        await eventually(lambda: any(a == 2 for _, _, a in runs("flaky")), 10)
        await asyncio.sleep(1.2)
    first, retried = runs("flaky")[:2]
    assert retried[0] == first[0] and (first[2], retried[2]) == (1, 2)
    ticks = [t for t, _, _ in runs("flaky")]
    assert ticks.count(first[0]) == 2  # the other node's copy did not run it a third time
    assert len(ticks[1:]) == len(set(ticks[1:]))


class Sluggish(Service):
    name = "sluggish"

    @timer(every=1, delivery="every_node")
    async def tick(self, ctx: Context) -> None:
        assert ctx.tick is not None
        RUNS.append(("sluggish", ctx.tick, self.node_id, 1))
        await asyncio.sleep(1.5)  # longer than the period


async def test_an_every_node_tick_due_while_the_last_still_runs_is_skipped() -> None:
    async with TestMesh(Sluggish):
        await eventually(lambda: len(RUNS) >= 3, 10)
    ticks = [t.timestamp() for t, _, _ in runs("sluggish")]
    # one at a time, and the ticks that fell due meanwhile never ran late (no backlog)
    assert all(b - a >= 2.0 for a, b in itertools.pairwise(ticks)), ticks


# -- the rules ---------------------------------------------------------------------------


def test_a_services_timers_are_read_with_their_schedule_and_delivery() -> None:
    class Jobs(Service):
        name = "jobs"

        @timer(every=30)
        async def poll(self, ctx: Context) -> None: ...

        @cron("*/5 * * * *", tz="Europe/Berlin", delivery="every_node")
        async def sync(self, ctx: Context) -> None: ...

    spec = ServiceSpec.of(Jobs)
    assert [(t.attribute, t.delivery, t.schedule.describe()) for t in spec.timers] == [
        ("poll", "once", "every 30s"),
        ("sync", "every_node", "cron '*/5 * * * *' (Europe/Berlin)"),
    ]
    assert spec.timers[0].target("jobs") == "jobs.tick:poll"
    assert spec.needs_broker and not spec.handlers


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: timer(every=0.5), "1 second or more"),
        (lambda: timer(every="5"), "number of seconds"),  # type: ignore[arg-type]
        (lambda: timer(every=5, delivery="all"), "'once' or 'every_node'"),  # type: ignore[arg-type]
        (lambda: cron("*/5 * * *"), "bad expression"),
        (lambda: cron("61 * * * *"), "bad expression"),
        (lambda: cron("* * * * *", tz="Mars/Olympus"), "unknown time zone"),
    ],
)
def test_a_bad_timer_is_refused_as_the_service_is_written(make: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make()  # type: ignore[operator]


def test_a_timer_takes_only_the_context_and_is_nothing_else() -> None:
    class Takes(Service):
        name = "takes"

        @timer(every=5)
        async def poll(self, ctx: Context, n: int) -> None: ...

    with pytest.raises(ConfigError, match=r"takes only \(self, ctx\), not n"):
        ServiceSpec.of(Takes)

    class Both(Service):
        name = "both"

        @timer(every=5)
        @rpc
        async def poll(self, ctx: Context) -> None: ...

    with pytest.raises(ConfigError, match="not also an @rpc"):
        ServiceSpec.of(Both)

    with pytest.raises(ConfigError, match="one @timer or @cron per method"):

        class Twice(Service):
            name = "twice"

            @timer(every=5)
            @cron("* * * * *")
            async def poll(self, ctx: Context) -> None: ...

    with pytest.raises(TypeError, match="must be 'async def'"):
        timer(every=5)(lambda self, ctx: None)

    class Handler(Service):
        name = "handler"

        @timer(every=5)
        @on_event("a.b")
        async def poll(self, ctx: Context) -> None: ...

    with pytest.raises(ConfigError, match="not also an @rpc, @on_event or @command"):
        ServiceSpec.of(Handler)
