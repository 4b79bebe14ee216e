"""Circuit breaking on real nodes (core/breaker.py): a caller leaves out a node whose calls
keep failing, probes it when its time is up, and fails fast when every node is out; the
state shows in the caller's /metrics and in ``wiremesh top``."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from rich.console import Console

from wiremesh import Context, InternalError, Service, Unavailable, rpc
from wiremesh.client import MeshClient
from wiremesh.core.breaker import BreakerSettings
from wiremesh.observability.dashboard import MeshState
from wiremesh.runtime.node_settings import NodeTransport
from wiremesh.runtime.top import Sampler, top_table
from wiremesh.testing import TestMesh

#: the node ids whose handlers fail, and the calls each node's handler saw
BROKEN: set[str] = set()
SEEN: Counter[str] = Counter()

QUICK = BreakerSettings(failures=3, open_for=0.5, max_open_for=2.0)


class Flaky(Service):
    name = "flaky"

    @rpc
    async def work(self, ctx: Context) -> str:
        SEEN[ctx.node_id] += 1
        if ctx.node_id in BROKEN:
            raise RuntimeError("the disk is full")  # an internal error: the node is unwell
        return ctx.node_id


class Front(Service):
    name = "front"

    @rpc
    async def work(self, ctx: Context) -> str:
        answer: str = await ctx.call("flaky.work")
        return answer


@pytest.fixture(autouse=True)
def fresh() -> None:
    BROKEN.clear()
    SEEN.clear()


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(
        Flaky, Front, replicas={"flaky": 2}, transport=NodeTransport(breaker=QUICK)
    ) as mesh:
        yield mesh


@pytest.fixture
async def client(mesh: TestMesh) -> AsyncIterator[MeshClient]:
    """A client outside the mesh, breaking its circuits by QUICK."""
    client = MeshClient(mesh.registry.address, breaker=QUICK)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def calls(client: MeshClient, n: int) -> list[str]:
    answers = []
    for _ in range(n):
        try:
            answers.append(await client.call("flaky.work"))
        except InternalError:
            answers.append("failed")
    return answers


async def test_a_failing_node_is_left_out_then_probed_back_when_it_heals(
    mesh: TestMesh, client: MeshClient
) -> None:
    bad, good = (n.node_id for n in mesh.nodes_of("flaky"))
    BROKEN.add(bad)
    first = await calls(client, 10)
    assert first.count("failed") == 3  # its third failure in a row opened the circuit
    assert first[6:] == [good] * 4
    assert ("flaky", bad) in client.caller.breakers.circuits
    seen_before = SEEN[bad]
    await asyncio.sleep(0.2)
    assert await calls(client, 4) == [good] * 4  # still open: left out
    assert SEEN[bad] == seen_before
    BROKEN.clear()  # it heals
    await asyncio.sleep(QUICK.open_for)
    after = await calls(client, 6)
    assert "failed" not in after
    assert after.count(bad) == 3  # the probe closed the circuit: in turn again
    assert client.caller.breakers.circuits == {}


async def test_a_probe_that_fails_leaves_the_node_out_for_longer(
    mesh: TestMesh, client: MeshClient
) -> None:
    bad, _good = (n.node_id for n in mesh.nodes_of("flaky"))
    BROKEN.add(bad)
    await calls(client, 8)
    assert SEEN[bad] == 3
    await asyncio.sleep(QUICK.open_for)
    probed = await calls(client, 4)
    assert probed.count("failed") == 1 and SEEN[bad] == 4  # one probe, which failed
    circuit = client.caller.breakers.circuits["flaky", bad]
    assert circuit.open_for == 2 * QUICK.open_for


async def test_when_every_node_is_out_calls_fail_fast_without_reaching_them(
    mesh: TestMesh,
    client: MeshClient,
) -> None:
    BROKEN.update(n.node_id for n in mesh.nodes_of("flaky"))
    assert await calls(client, 6) == ["failed"] * 6
    reached = sum(SEEN.values())
    with pytest.raises(Unavailable, match="circuit to every node of service 'flaky'"):
        await client.call("flaky.work")
    bad = mesh.nodes_of("flaky")[0].node_id
    with pytest.raises(Unavailable, match=f"circuit to node {bad} is open"):
        await client.call("flaky.work", node=bad)
    assert sum(SEEN.values()) == reached


async def test_a_nodes_circuits_show_in_its_metrics_and_in_top(mesh: TestMesh) -> None:
    from tests.observability.test_metrics import read, value

    bad, _good = (n.node_id for n in mesh.nodes_of("flaky"))
    BROKEN.add(bad)
    (front,) = mesh.nodes_of("front")
    for _ in range(8):
        with contextlib.suppress(InternalError):
            await mesh.call("front.work")
    samples = await read(front)
    assert value(samples, "wiremesh_circuit_state", service="flaky", node=bad, state="open") == 1
    assert value(samples, "wiremesh_circuits_opened_total", service="flaky") == 1
    sampler = Sampler()
    await sampler.sample([front.info])
    (row,) = await sampler.sample([front.info])
    assert row.figures is not None and row.figures.circuits == {bad: "open"}
    # the dashboard's node table reads the same figures
    state = MeshState(lambda: mesh.client.view.snapshot, mesh="m", min_interval=0.0)
    await state.document()
    document = await state.document()
    (shown,) = [n for n in document["nodes"] if n["id"] == front.node_id]
    assert shown["open_circuits"] == {bad: "open"}
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(top_table([row]))
    text = console.export_text()
    assert "open circuits" in text
    assert bad in text.split("open circuits", 1)[1]


async def test_the_http_door_answers_an_open_circuit_503_with_when_to_come_back() -> None:
    import httpx

    from wiremesh.core.breaker import BREAKER_FAILURES, BREAKER_OPEN_FOR

    async with TestMesh(Flaky, gateway=True) as mesh:  # the door breaks by the defaults
        (node,) = mesh.nodes_of("flaky")
        BROKEN.add(node.node_id)
        auth = {"Authorization": f"Bearer {mesh.token('ada')}"}
        async with httpx.AsyncClient(base_url=mesh.gateway.url) as http:
            answers = [
                await http.post("/rpc/flaky/work", headers=auth)
                for _ in range(BREAKER_FAILURES + 1)
            ]
    assert [a.status_code for a in answers] == [500] * BREAKER_FAILURES + [503]
    assert "circuit to every node of service 'flaky' is open" in answers[-1].json()["detail"]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= BREAKER_OPEN_FOR
    assert SEEN[node.node_id] == BREAKER_FAILURES  # the last never reached it
