"""The recorder hands wiremesh's spans to the SDK's processors: straight to the exporter
of a batching or simple processor, one by one to any other, as spans equal to those the
SDK's own constructor makes."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from wiremesh.observability import tracing
from wiremesh.observability.recorder import Recorder

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Collecting(SpanProcessor):
    """A processor of the user's own: sees each span as it ends."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: Any) -> None:
        self.ended.append(span)


def traced_pair(provider: TracerProvider) -> None:
    """One server span continuing PARENT, with a client span inside it that fails."""
    tracing.use_provider(provider)
    try:
        # PARENT as a mesh link's frame carries it: its fields in binary
        trace = bytes.fromhex(PARENT[3:35] + PARENT[36:52] + PARENT[53:])
        server = tracing.server_span(
            "stock.take", None, trace=trace, node="n1", peer="front@n2", size=7
        )
        assert server is not None
        client = tracing.client_span("price.get", node="n3", size=5)
        assert client is not None
        assert client.carrier["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        client.set("wiremesh.attempt", 2)
        client.end("unavailable")
        server.end("ok", size=9)
    finally:
        tracing.use_provider(None)  # flushes


def test_every_processor_gets_the_spans_and_the_exporters_get_them_in_batches() -> None:
    batched, simple, own = InMemorySpanExporter(), InMemorySpanExporter(), Collecting()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(batched))
    provider.add_span_processor(SimpleSpanProcessor(simple))
    provider.add_span_processor(own)
    traced_pair(provider)
    for found in (batched.get_finished_spans(), simple.get_finished_spans(), own.ended):
        assert sorted(s.name for s in found) == ["price.get", "stock.take"]


def test_spans_carry_ids_attributes_and_status_as_the_sdk_would() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced_pair(provider)
    found = {s.name: s for s in exporter.get_finished_spans()}
    server, client = found["stock.take"], found["price.get"]
    assert server.kind is SpanKind.SERVER and client.kind is SpanKind.CLIENT
    assert f"{server.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server.parent is not None and server.parent.is_remote
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert client.parent is not None and not client.parent.is_remote
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_flags.sampled
    assert dict(server.attributes or {}) == {
        "wiremesh.status": "ok",
        "wiremesh.node": "n1",
        "wiremesh.peer": "front@n2",
        "wiremesh.request_bytes": 7,
        "wiremesh.answer_bytes": 9,
    }
    assert dict(client.attributes or {}) == {
        "wiremesh.status": "unavailable",
        "wiremesh.node": "n3",
        "wiremesh.request_bytes": 5,
        "wiremesh.attempt": 2,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "unavailable"
    assert server.start_time is not None and server.end_time is not None
    assert server.start_time <= client.start_time <= client.end_time <= server.end_time  # type: ignore[operator]
    assert server.resource is provider.resource
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "wiremesh"
    assert server.to_json()  # what the console exporter prints


def test_the_quick_span_maker_is_used_and_matches_the_constructor() -> None:
    recorder = Recorder(TracerProvider())
    try:
        record = ("a.b", 3, (7, 8, 9, True, 1), 10, 20, {"k": 1}, "deadline_exceeded")
        made = recorder.make_span(*record)
        assert recorder.make_span.__name__ == "quick"
        assert isinstance(made, ReadableSpan)
        assert (made.name, made.kind, made.start_time, made.end_time) == (
            "a.b",
            SpanKind.PRODUCER,
            10,
            20,
        )
        assert (made.context.trace_id, made.context.span_id, made.context.is_valid) == (7, 8, True)
        assert made.parent is not None and (made.parent.span_id, made.parent.is_remote) == (9, True)
        assert made.status.description == "deadline_exceeded"
    finally:
        recorder.stop()


def test_a_span_ended_in_another_context_is_still_recorded() -> None:
    import contextvars

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        # opened in one context (not the test's own, which stays clean), ended in another
        carrier = {"traceparent": PARENT}
        span = contextvars.copy_context().run(tracing.server_span, "a.b", carrier)
        assert span is not None
        contextvars.copy_context().run(span.end)
    finally:
        tracing.use_provider(None)
    assert [s.name for s in exporter.get_finished_spans()] == ["a.b"]
