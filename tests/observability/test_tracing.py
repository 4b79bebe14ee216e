"""One trace across every hop: a call, the nested call and the publish it makes, and the
subscriber that gets it, on real nodes, with OpenTelemetry's in-memory exporter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import msgpack
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wiremesh import Context, Service, on_event, rpc, subscribe
from wiremesh.observability import tracing
from wiremesh.testing import TestMesh

SECRET = "s3cret-payload-never-in-a-span"


class Front(Service):
    name = "front"

    @rpc
    async def order(self, ctx: Context, item: str) -> int:
        left = await ctx.call("stock.take", item)
        await ctx.publish("orders.placed", item)
        return int(left)

    @rpc
    async def fail(self, ctx: Context) -> None:
        raise RuntimeError("broken on purpose")


class Stock(Service):
    name = "stock"

    @rpc
    async def take(self, ctx: Context, item: str) -> int:
        return 41


class Audit(Service):
    name = "audit"

    def __init__(self) -> None:
        self.seen: list[str] = []

    @subscribe("orders.*")
    async def on_order(self, ctx: Context, item: str) -> None:
        self.seen.append(item)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    Inner.provider = provider
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def by_name(found: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> ReadableSpan:
    matching = [s for s in found if s.name == name and s.kind == kind]
    assert len(matching) == 1, [(s.name, s.kind) for s in found]
    return matching[0]


async def wait_for_spans(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < count:
        assert time.monotonic() < deadline, exporter.get_finished_spans()
        await asyncio.sleep(0.01)
    return exporter.get_finished_spans()


async def test_one_trace_covers_call_nested_call_publish_and_subscriber(
    spans: InMemorySpanExporter,
) -> None:
    async with TestMesh(Front, Stock, Audit) as mesh:
        assert await mesh.call("front.order", SECRET) == 41
        found = await wait_for_spans(spans, 6)
        stock_node = mesh.client.nodes("stock")[0].node_id
    outer_client = by_name(found, "front.order", SpanKind.CLIENT)
    outer_server = by_name(found, "front.order", SpanKind.SERVER)
    inner_client = by_name(found, "stock.take", SpanKind.CLIENT)
    inner_server = by_name(found, "stock.take", SpanKind.SERVER)
    producer = by_name(found, "publish orders.placed", SpanKind.PRODUCER)
    consumer = by_name(found, "audit.on_order", SpanKind.CONSUMER)
    chain = [outer_client, outer_server, inner_client, inner_server, producer, consumer]
    assert len({s.context.trace_id for s in chain}) == 1
    # each hop is the child of the one that sent it
    assert outer_server.parent is not None
    assert outer_server.parent.span_id == outer_client.context.span_id
    assert inner_client.parent is not None
    assert inner_client.parent.span_id == outer_server.context.span_id
    assert inner_server.parent is not None
    assert inner_server.parent.span_id == inner_client.context.span_id
    assert producer.parent is not None
    assert producer.parent.span_id == outer_server.context.span_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    # spans say where and how, never what was sent
    assert inner_server.attributes is not None
    assert inner_server.attributes["wiremesh.node"] == stock_node
    assert inner_server.attributes["wiremesh.status"] == "ok"
    for span in found:
        for value in (span.attributes or {}).values():
            assert SECRET not in str(value), span.name


async def test_a_failed_call_is_an_error_span_on_both_sides(spans: InMemorySpanExporter) -> None:
    async with TestMesh(Front) as mesh:
        with pytest.raises(Exception, match="broken on purpose"):
            await mesh.call("front.fail")
        found = await wait_for_spans(spans, 2)
    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        span = by_name(found, "front.fail", kind)
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["wiremesh.status"] == "internal"


async def test_a_foreign_grpc_client_trace_context_is_continued(
    spans: InMemorySpanExporter,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    async with TestMesh(Stock) as mesh:
        node = mesh.nodes[0]
        async with grpc.aio.insecure_channel(node.address) as channel:
            take = channel.unary_unary("/stock/take")
            answer = await take(
                msgpack.packb("bolt"),
                timeout=5,
                metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),),
            )
        assert msgpack.unpackb(answer) == 41
        found = await wait_for_spans(spans, 1)
    server = by_name(found, "stock.take", SpanKind.SERVER)
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == parent_id


async def test_tracing_off_records_nothing_and_sends_no_trace_context() -> None:
    assert not tracing.enabled()
    async with TestMesh(Front, Stock, Audit) as mesh:
        seen: list[object] = []

        class Probe(Service):
            name = "probe"

            @rpc
            async def metadata(self, ctx: Context) -> None:
                seen.append(dict(ctx.metadata))

        await mesh.add_node(Probe)
        await mesh.call("probe.metadata")
    assert seen == [{}]


class Orders(Service):
    name = "orders"

    @rpc
    async def place(self, ctx: Context, item: str) -> str:
        await ctx.emit("orders.placed", item)
        async with self.store.transaction() as tx:  # through the outbox as well
            tx.emit("orders.logged", item)
        return item


class Billing(Service):
    name = "billing"

    def __init__(self) -> None:
        self.billed: list[str] = []

    @on_event("orders.*")
    async def on_order(self, ctx: Context, item: str) -> None:
        self.billed.append(item)


async def test_the_trace_goes_on_through_emit_the_outbox_and_the_broker(
    spans: InMemorySpanExporter,
) -> None:
    async with TestMesh(Orders, Billing, broker="embedded") as mesh:
        assert await mesh.call("orders.place", SECRET) == SECRET
        found = await wait_for_spans(spans, 6)
    placed = by_name(found, "orders.place", SpanKind.SERVER)
    emitted = by_name(found, "emit orders.placed", SpanKind.PRODUCER)
    logged = by_name(found, "emit orders.logged", SpanKind.PRODUCER)
    handled = [s for s in found if s.name == "billing.on_order" and s.kind == SpanKind.CONSUMER]
    assert len(handled) == 2
    assert emitted.parent is not None and emitted.parent.span_id == placed.context.span_id
    assert logged.parent is not None and logged.parent.span_id == placed.context.span_id
    parents = {s.parent.span_id for s in handled if s.parent is not None}
    assert parents == {emitted.context.span_id, logged.context.span_id}
    assert {s.context.trace_id for s in [placed, emitted, logged, *handled]} == {
        placed.context.trace_id
    }
    for span in found:
        for value in (span.attributes or {}).values():
            assert SECRET not in str(value), span.name


async def test_a_sampler_that_keeps_nothing_records_nothing() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        async with TestMesh(Front, Stock, Audit) as mesh:
            assert await mesh.call("front.order", "bolt") == 41
            audit: Audit = mesh.instance("audit")
            deadline = time.monotonic() + 5
            while not audit.seen:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            tracing.flush()
    finally:
        tracing.use_provider(None)
    assert exporter.get_finished_spans() == ()


class Inner(Service):
    name = "inner"

    #: the provider the test traces with (users' code would use the global one)
    provider: TracerProvider

    @rpc
    async def work(self, ctx: Context) -> None:
        with self.provider.get_tracer("user-code").start_as_current_span("user step"):
            await ctx.call("stock.take", "bolt")


async def test_spans_of_the_users_own_are_children_of_the_handlers(
    spans: InMemorySpanExporter,
) -> None:
    async with TestMesh(Inner, Stock) as mesh:
        await mesh.call("inner.work")
        found = await wait_for_spans(spans, 5)
    handler = by_name(found, "inner.work", SpanKind.SERVER)
    user = by_name(found, "user step", SpanKind.INTERNAL)
    nested = by_name(found, "stock.take", SpanKind.CLIENT)
    assert user.parent is not None and user.parent.span_id == handler.context.span_id
    assert nested.parent is not None and nested.parent.span_id == user.context.span_id


async def test_over_links_the_trace_context_is_not_the_handlers_custom_metadata(
    spans: InMemorySpanExporter,
) -> None:
    seen: list[dict[str, object]] = []

    class Probe(Service):
        name = "probe"

        @rpc
        async def metadata(self, ctx: Context) -> None:
            seen.append(dict(ctx.metadata))

    async with TestMesh(Probe) as mesh:
        await mesh.call("probe.metadata", metadata={"x-tenant": "acme"})
        found = await wait_for_spans(spans, 2)
    assert seen == [{"x-tenant": "acme"}]
    client = by_name(found, "probe.metadata", SpanKind.CLIENT)
    server = by_name(found, "probe.metadata", SpanKind.SERVER)
    assert server.parent is not None and server.parent.span_id == client.context.span_id


def test_a_link_frames_binary_trace_context_round_trips_and_bad_ones_start_a_trace(
    spans: InMemorySpanExporter,
) -> None:
    sender = tracing.client_span("a.b")
    assert sender is not None
    trace = sender.trace()
    assert len(trace) == 25 and sender.tracestate == ""
    # the same fields as the W3C header, in binary
    assert trace.hex() == sender.carrier["traceparent"].replace("-", "")[2:]
    child = tracing.server_span("a.b", None, trace=trace)
    assert child is not None
    child.end()
    sender.end()
    for bad in (b"\x01" * 24, b"\x01" * 26, bytes(25)):  # wrong length, zero ids
        stray = tracing.server_span("c.d", None, trace=bad)
        assert stray is not None
        stray.end()
    tracing.flush()
    found = spans.get_finished_spans()
    server = by_name(found, "a.b", SpanKind.SERVER)
    client = by_name(found, "a.b", SpanKind.CLIENT)
    assert server.parent is not None and server.parent.is_remote
    assert (server.parent.trace_id, server.parent.span_id) == (
        client.context.trace_id,
        client.context.span_id,
    )
    strays = [s for s in found if s.name == "c.d"]
    assert len(strays) == 3 and all(s.parent is None for s in strays)
