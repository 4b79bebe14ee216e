"""Load balancing over live nodes, and retries of idempotent methods on another node.

A node "dies" here by stopping its gRPC server abruptly (``server.server.stop(None)``)
while its lease stays alive, so the registry still lists it: the caller only finds out
by calling it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from wiremesh import Context, Service, Unavailable, rpc
from wiremesh.client import MeshClient
from wiremesh.runtime.node import Node
from wiremesh.testing import TestMesh


class Gate:
    """Holds the first call that enters, until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.holding: str | None = None


GATE = Gate()
CALLS: Counter[tuple[str, str]] = Counter()


class Worker(Service):
    name = "worker"

    @rpc(idempotent=True)
    async def whoami(self, ctx: Context) -> str:
        CALLS["whoami", ctx.node_id] += 1
        return ctx.node_id

    @rpc
    async def charge(self, ctx: Context) -> str:
        CALLS["charge", ctx.node_id] += 1
        return ctx.node_id

    @rpc(idempotent=True)
    async def hold(self, ctx: Context) -> str:
        CALLS["hold", ctx.node_id] += 1
        if GATE.holding is None:
            GATE.holding = ctx.node_id
            GATE.entered.set()
            await GATE.release.wait()
        return ctx.node_id

    @rpc
    async def hold_once(self, ctx: Context) -> str:
        CALLS["hold_once", ctx.node_id] += 1
        GATE.holding = ctx.node_id
        GATE.entered.set()
        await GATE.release.wait()
        return ctx.node_id

    @rpc(idempotent=True)
    async def downstream_down(self, ctx: Context) -> None:
        CALLS["downstream_down", ctx.node_id] += 1
        raise Unavailable("the payment provider is down")


class Front(Service):
    name = "front"

    @rpc
    async def hold(self, ctx: Context) -> str:
        result: str = await ctx.call("worker.hold")
        return result

    @rpc
    async def whoami(self, ctx: Context) -> str:
        result: str = await ctx.call("worker.whoami")
        return result


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    global GATE
    GATE = Gate()
    CALLS.clear()


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Worker, replicas={"worker": 3}, drain_grace=0.1) as mesh:
        yield mesh


async def kill(node: Node) -> None:
    """Stop serving at once, without leaving the mesh: the registry still lists the node."""
    await node.server.server.stop(None)


# -- balancing -----------------------------------------------------------------------------


async def test_round_robin_spreads_calls_evenly_over_three_nodes(mesh: TestMesh) -> None:
    answers = Counter([await mesh.call("worker.whoami") for _ in range(12)])
    assert answers == {n.node_id: 4 for n in mesh.nodes_of("worker")}


async def test_round_robin_from_inside_a_node() -> None:
    async with TestMesh(Worker, Front, replicas={"worker": 3}, drain_grace=0.1) as mesh:
        answers = Counter([await mesh.call("front.whoami") for _ in range(9)])
        assert answers == {n.node_id: 3 for n in mesh.nodes_of("worker")}


async def least_outstanding_picks(mesh: TestMesh, caller: MeshClient | None, via: str) -> list[str]:
    """Hold one call on some node, then make quick calls; where did they go?"""

    async def call(target: str) -> str:
        if caller is not None:
            result: str = await caller.call(target)
            return result
        result = await mesh.call(target)
        return result

    held = asyncio.create_task(call(f"{via}.hold"))
    await asyncio.wait_for(GATE.entered.wait(), 5)
    try:
        return [await call(f"{via}.whoami") for _ in range(6)]
    finally:
        GATE.release.set()
        await held


async def test_least_outstanding_client_prefers_idle_nodes() -> None:
    async with TestMesh(Worker, replicas={"worker": 2}, drain_grace=0.1) as mesh:
        client = MeshClient(mesh.registry.address, balancer="least_outstanding")
        await client.start()
        try:
            picks = await least_outstanding_picks(mesh, client, "worker")
        finally:
            await client.close()
        busy = GATE.holding
        (idle,) = {n.node_id for n in mesh.nodes_of("worker")} - {busy}
        assert picks == [idle] * 6


async def test_least_outstanding_node_option_prefers_idle_nodes() -> None:
    async with TestMesh(
        Worker, Front, replicas={"worker": 2}, balancer="least_outstanding", drain_grace=0.1
    ) as mesh:
        picks = await least_outstanding_picks(mesh, None, "front")
        (idle,) = {n.node_id for n in mesh.nodes_of("worker")} - {GATE.holding}
        assert picks == [idle] * 6


async def test_round_robin_does_not_look_at_load() -> None:
    """The control for the two tests above: without least_outstanding, the busy node
    still gets its turn."""
    async with TestMesh(Worker, Front, replicas={"worker": 2}, drain_grace=0.1) as mesh:
        picks = await least_outstanding_picks(mesh, None, "front")
        assert GATE.holding in picks


async def test_a_draining_node_gets_no_new_calls(mesh: TestMesh) -> None:
    leaving = mesh.nodes_of("worker")[0]
    await mesh.stop_node(leaving)
    answers = {await mesh.call("worker.whoami") for _ in range(6)}
    assert answers == {n.node_id for n in mesh.nodes_of("worker")}
    assert leaving.node_id not in answers


# -- retries -------------------------------------------------------------------------------


async def test_an_idempotent_method_is_retried_on_another_node(mesh: TestMesh) -> None:
    dead, *alive = mesh.nodes_of("worker")
    await kill(dead)
    assert dead.node_id in {n.node_id for n in mesh.client.nodes("worker")}  # still listed
    answers = [await mesh.call("worker.whoami", timeout=2) for _ in range(6)]
    assert set(answers) == {n.node_id for n in alive}
    assert CALLS["whoami", dead.node_id] == 0


async def test_a_non_idempotent_method_is_not_retried(mesh: TestMesh) -> None:
    dead = mesh.nodes_of("worker")[0]
    await kill(dead)
    failures: list[Unavailable] = []
    answers: list[str] = []
    for _ in range(6):  # round robin: two of six land on the dead node
        try:
            answers.append(await mesh.call("worker.charge", timeout=2))
        except Unavailable as exc:
            failures.append(exc)
    assert len(failures) == 2
    assert {exc.node for exc in failures} == {dead.node_id}
    # each successful call ran once, and no failed one ran anywhere else
    assert sum(CALLS[key] for key in CALLS if key[0] == "charge") == len(answers) == 4


async def test_a_named_node_call_is_never_retried_elsewhere(mesh: TestMesh) -> None:
    dead = mesh.nodes_of("worker")[0]
    await kill(dead)
    for target, options in [
        (f"worker@{dead.node_id}.whoami", {}),
        ("worker.whoami", {"node": dead.node_id}),
    ]:
        with pytest.raises(Unavailable) as info:
            await mesh.call(target, timeout=2, **options)
        assert info.value.node == dead.node_id
    assert sum(CALLS.values()) == 0


async def test_an_idempotent_call_survives_its_node_dying_mid_call(mesh: TestMesh) -> None:
    call = asyncio.create_task(mesh.call("worker.hold", timeout=5))
    await asyncio.wait_for(GATE.entered.wait(), 5)
    (dying,) = [n for n in mesh.nodes_of("worker") if n.node_id == GATE.holding]
    await kill(dying)
    answer = await asyncio.wait_for(call, 5)
    assert answer != dying.node_id
    assert CALLS["hold", answer] == 1


async def test_a_non_idempotent_call_fails_when_its_node_dies_mid_call(mesh: TestMesh) -> None:
    call = asyncio.create_task(mesh.call("worker.hold_once", timeout=5))
    await asyncio.wait_for(GATE.entered.wait(), 5)
    (dying,) = [n for n in mesh.nodes_of("worker") if n.node_id == GATE.holding]
    await kill(dying)
    with pytest.raises(Unavailable) as info:
        await asyncio.wait_for(call, 5)
    assert info.value.node == dying.node_id
    assert sum(CALLS.values()) == 1
    assert await mesh.call("worker.whoami", timeout=2) != dying.node_id


async def test_retries_stop_when_every_node_is_dead(mesh: TestMesh) -> None:
    for node in mesh.nodes_of("worker"):
        await kill(node)
    with pytest.raises(Unavailable):
        await mesh.call("worker.whoami", timeout=2)


async def test_an_unavailable_raised_by_a_handler_is_not_retried(mesh: TestMesh) -> None:
    with pytest.raises(Unavailable, match="payment provider is down"):
        await mesh.call("worker.downstream_down", timeout=2)
    assert sum(CALLS.values()) == 1
