"""The gateway under observation: its /metrics after a known workload, the dashboard's
data behind its token, and one trace from a browser message through the gateway, the
node, a call and an emit to the consumer (in-memory exporter)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from wiremesh import Context, Service, Session, on_event, on_socket, rpc
from wiremesh.observability import tracing
from wiremesh.testing import TestMesh, gateway_settings

SECRET = b"card 4111 never in a span"


class Echo(Service):
    name = "echo"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(frame)


class Desk(Service):
    """A browser message places an order: a call, which emits an event."""

    name = "desk"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        placed = await self.mesh.call("orders.place", frame.decode())
        await session.send(placed.encode())


class Orders(Service):
    name = "orders"

    @rpc
    async def place(self, ctx: Context, item: str) -> str:
        await ctx.emit("orders.placed", item)
        return f"placed {len(item)}"


class Billing(Service):
    name = "billing"

    def __init__(self) -> None:
        self.billed: list[str] = []

    @on_event("orders.placed")
    async def on_placed(self, ctx: Context, item: str) -> None:
        self.billed.append(item)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def socket(mesh: TestMesh, service: str, token: str) -> websockets.asyncio.client.connect:
    return websockets.connect(
        mesh.ws_url(service),
        subprotocols=["wiremesh.v1", f"bearer.{token}"],  # type: ignore[list-item]
    )


async def test_gateway_metrics_count_sessions_messages_closes_and_http() -> None:
    async with TestMesh(Echo, gateway=True) as mesh:
        base = mesh.gateway.url
        async with socket(mesh, "echo", mesh.token("ada")) as ws:
            for i in range(3):
                await ws.send(bytes([i]) * 10)
                assert await ws.recv() == bytes([i]) * 10
            async with httpx.AsyncClient() as http:
                during = samples((await http.get(f"{base}/metrics")).text)
        assert during[("wiremesh_ws_sessions", (("service", "echo"),))] == 1
        with pytest.raises(websockets.InvalidStatus):  # no token: refused with 401
            async with websockets.connect(mesh.ws_url("echo"), subprotocols=["wiremesh.v1"]):  # type: ignore[list-item]
                pass
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/nowhere")).status_code == 404
            deadline = time.monotonic() + 5
            while True:  # the session's end is counted once its handler returns
                after = samples((await http.get(f"{base}/metrics")).text)
                if after.get(("wiremesh_ws_closes_total", (("code", "1000"),))) or (
                    time.monotonic() > deadline
                ):
                    break
                await asyncio.sleep(0.05)
    assert after[("wiremesh_ws_messages_total", (("direction", "in"),))] == 3
    assert after[("wiremesh_ws_messages_total", (("direction", "out"),))] == 3
    assert after[("wiremesh_ws_bytes_total", (("direction", "in"),))] == 30
    assert after[("wiremesh_ws_closes_total", (("code", "1000"),))] == 1
    assert after[("wiremesh_ws_refused_total", (("status", "401"),))] == 1
    assert after[("wiremesh_http_responses_total", (("status", "404"),))] == 1
    assert after[("wiremesh_http_responses_total", (("status", "200"),))] >= 1  # /metrics
    assert after.get(("wiremesh_ws_sessions", (("service", "echo"),)), 0) == 0
    assert after[("wiremesh_http_request_seconds_count", ())] >= 2


async def test_the_dashboard_data_needs_a_token_with_its_scope() -> None:
    settings = gateway_settings(dashboard={"scopes": ["mesh:read"]})
    async with TestMesh(Echo, Orders, gateway=settings) as mesh:
        base = mesh.gateway.url
        async with httpx.AsyncClient() as http:
            page = await http.get(f"{base}/_mesh/")
            assert page.status_code == 200
            assert "dashboard.js" in page.text
            assert (await http.get(f"{base}/_mesh/dashboard.js")).status_code == 200
            assert (await http.get(f"{base}/_mesh/nothing.js")).status_code == 404
            assert (await http.get(f"{base}/_mesh/state")).status_code == 401
            weak = {"authorization": f"Bearer {mesh.token('ada')}"}
            assert (await http.get(f"{base}/_mesh/state", headers=weak)).status_code == 403
            strong = {"authorization": f"Bearer {mesh.token('ada', scopes=['mesh:read'])}"}
            answer = await http.get(f"{base}/_mesh/state", headers=strong)
            assert answer.status_code == 200
            document = answer.json()
            expected = {n.node_id for n in mesh.client.nodes()}
            gateway_id = mesh.gateway.gateway_id
    assert {n["id"] for n in document["nodes"]} >= expected
    assert {s["name"] for s in document["services"]} >= {"echo", "orders"}
    assert document["sessions"] == 0
    assert document["gateway"] == gateway_id
    assert document["home"] is None  # no static folder: no page to link back to


async def test_the_dashboard_draws_the_gateways_edges_to_its_sessions_nodes() -> None:
    async with TestMesh(Echo, Orders, replicas={"echo": 2}, gateway=True) as mesh:
        gateway = mesh.gateway
        gateway.dashboard.min_interval = 0.0
        token = mesh.token("ada")
        async with socket(mesh, "echo", token) as first, socket(mesh, "echo", token) as second:
            for ws in (first, second):
                await ws.send(b"ping")
                assert await ws.recv() == b"ping"
            held = [c.node_id for c in gateway.table]
            document = await gateway.dashboard.document()
        after = await gateway.dashboard.document()
    edges = {(e["from"], e["to"]): e for e in document["links"] if e["kind"] == "sessions"}
    # one edge per node the sessions are on, counted; none to orders (no session there)
    assert {to: e["sessions"] for (_, to), e in edges.items()} == {
        node: held.count(node) for node in held
    }
    assert {frm for frm, _ in edges} == {gateway.gateway_id}
    assert document["sessions"] == 2
    assert all(e["kind"] == "mesh" for e in after["links"])  # the sessions ended


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def one(found: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> ReadableSpan:
    matching = [s for s in found if s.name == name and s.kind == kind]
    assert len(matching) == 1, sorted((s.name, str(s.kind)) for s in found)
    return matching[0]


async def test_one_trace_from_a_browser_message_to_the_event_consumer(
    spans: InMemorySpanExporter,
) -> None:
    async with TestMesh(Desk, Orders, Billing, gateway=True, broker="embedded") as mesh:
        async with socket(mesh, "desk", mesh.token("ada")) as ws:
            await ws.send(SECRET)
            assert await ws.recv() == f"placed {len(SECRET)}".encode()
        billing: Billing = mesh.instance("billing")
        deadline = time.monotonic() + 5
        while not billing.billed or len(spans.get_finished_spans()) < 6:
            assert time.monotonic() < deadline, spans.get_finished_spans()
            await asyncio.sleep(0.02)
        found = spans.get_finished_spans()
    frame = one(found, "socket desk", SpanKind.PRODUCER)
    handler = one(found, "desk.socket", SpanKind.CONSUMER)
    call = one(found, "orders.place", SpanKind.CLIENT)
    served = one(found, "orders.place", SpanKind.SERVER)
    emitted = one(found, "emit orders.placed", SpanKind.PRODUCER)
    consumed = one(found, "billing.on_placed", SpanKind.CONSUMER)
    chain = [frame, handler, call, served, emitted, consumed]
    assert len({s.context.trace_id for s in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, (
            parent.name,
            child.name,
        )
    for span in found:
        for value in (span.attributes or {}).values():
            assert "4111" not in str(value), span.name
