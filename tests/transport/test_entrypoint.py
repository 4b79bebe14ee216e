"""The entrypoint pipeline on its own, with no sockets: a run makes its context current,
counts and traces its outcome by status, and gives the context back however it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from wiremesh.context import Context, current_context
from wiremesh.core.deadline import Deadline
from wiremesh.errors import InvalidPayload
from wiremesh.observability import tracing
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.proto import link_pb2
from wiremesh.transport.entrypoint import Pipeline, status_of, stop

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


class Mesh:
    """What a handler would call through (this test's handlers call nobody)."""


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


def counted(metrics: MeshMetrics, status: str) -> float:
    labels = {"service": "shop", "method": "buy", "status": status}
    return metrics.registry.get_sample_value("wiremesh_calls_handled_total", labels) or 0.0


def shop(
    metrics: MeshMetrics | None = None, kind: Literal["server", "consumer"] = "server"
) -> Pipeline:
    handled = metrics.handled("shop", "buy") if metrics is not None else None
    mesh: Any = Mesh()
    return Pipeline("shop", "buy", node_id="shop-1", mesh=mesh, kind=kind, metrics=handled)


async def test_a_run_makes_its_context_current_and_gives_back_the_one_before() -> None:
    pipeline = shop()
    outer = pipeline.context(Deadline.after(5, now=time.monotonic()), caller="front@front-1")
    inner = pipeline.context(
        Deadline.after(5, now=time.monotonic()), metadata={"k": "v"}, peer="ipv4:1.2.3.4:5"
    )
    assert (inner.service, inner.method, inner.node_id) == ("shop", "buy", "shop-1")
    assert inner.metadata == {"k": "v"} and inner.peer == "ipv4:1.2.3.4:5"

    async def broken() -> None:
        assert current_context() is inner
        raise RuntimeError("broken")

    async def handler() -> str:
        with pytest.raises(RuntimeError):
            await pipeline.run(inner, broken())
        assert current_context() is outer
        return "answer"

    assert await pipeline.run(outer, handler()) == "answer"
    assert current_context() is None


def test_the_status_of_an_outcome_is_the_errors_own_cancelled_or_internal() -> None:
    assert status_of(InvalidPayload("no sku")) == "invalid_payload"
    assert status_of(asyncio.CancelledError()) == "cancelled"
    assert status_of(RuntimeError("broken")) == "internal"


async def raising(error: BaseException) -> None:
    raise error


async def returning(value: str) -> str:
    return value


async def test_a_run_is_counted_by_the_status_of_its_outcome() -> None:
    metrics = MeshMetrics()
    pipeline = shop(metrics)
    ctx = pipeline.context(Deadline.after(5, now=time.monotonic()))
    await pipeline.run(ctx, returning("anything"))
    with pytest.raises(InvalidPayload):
        await pipeline.run(ctx, raising(InvalidPayload("no sku")))
    with pytest.raises(ConnectionError):
        await pipeline.run(ctx, raising(ConnectionError("reset")))
    assert [counted(metrics, s) for s in ("ok", "invalid_payload", "internal")] == [1, 1, 1]
    seconds = {"service": "shop", "method": "buy"}
    assert metrics.registry.get_sample_value("wiremesh_call_handle_seconds_count", seconds) == 3


async def test_an_entrypoint_that_settles_its_outcome_returns_the_status() -> None:
    metrics = MeshMetrics()
    handled = metrics.handled("shop", "buy")
    mesh: Any = Mesh()
    pipeline = Pipeline(
        "shop", "buy", node_id="shop-1", mesh=mesh, metrics=handled, returns_status=True
    )
    ctx = pipeline.context(Deadline.after(5, now=time.monotonic()))
    assert await pipeline.run(ctx, returning("deadline_exceeded")) == "deadline_exceeded"
    assert counted(metrics, "deadline_exceeded") == 1


async def test_the_failed_hook_runs_in_the_handlers_context_and_says_the_status() -> None:
    metrics = MeshMetrics()
    seen: list[tuple[str, bool]] = []

    def failed(error: Exception, ctx: Context | None) -> str:
        seen.append((type(error).__name__, current_context() is ctx))
        return "internal"

    mesh: Any = Mesh()
    handled = metrics.handled("shop", "buy")
    pipeline = Pipeline("shop", "buy", node_id="shop-1", mesh=mesh, metrics=handled, failed=failed)
    with pytest.raises(InvalidPayload):  # the exception goes on
        await pipeline.run(
            pipeline.context(Deadline.after(5, now=time.monotonic())), raising(InvalidPayload("no"))
        )
    assert seen == [("InvalidPayload", True)]
    assert counted(metrics, "internal") == 1 and counted(metrics, "invalid_payload") == 0


async def test_a_cancelled_handler_counts_as_cancelled() -> None:
    metrics = MeshMetrics()
    pipeline = shop(metrics)
    started = asyncio.Event()

    async def handler() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(
        pipeline.run(pipeline.context(Deadline.after(5, now=time.monotonic())), handler())
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counted(metrics, "cancelled") == 1


async def test_a_run_is_a_span_named_after_its_handler_continuing_the_senders_trace(
    spans: InMemorySpanExporter,
) -> None:
    pipeline = shop(kind="consumer")
    ctx = pipeline.context(
        Deadline.after(5, now=time.monotonic()),
        metadata={"traceparent": TRACEPARENT},
        caller="front@front-1",
    )
    with pytest.raises(InvalidPayload):
        await pipeline.run(
            ctx, raising(InvalidPayload("no sku")), 42, attributes={"wiremesh.attempt": 2}
        )
    tracing.flush()
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == ("shop.buy", SpanKind.CONSUMER)
    assert span.context is not None and span.context.trace_id == TRACE_ID
    assert span.parent is not None and span.parent.span_id == PARENT_ID
    assert dict(span.attributes or {}) == {
        "wiremesh.status": "invalid_payload",
        "wiremesh.node": "shop-1",
        "wiremesh.peer": "front@front-1",
        "wiremesh.request_bytes": 42,
        "wiremesh.attempt": 2,
    }


async def test_a_link_frame_gives_the_size_and_the_trace_context(
    spans: InMemorySpanExporter,
) -> None:
    pipeline = shop()
    trace = TRACE_ID.to_bytes(16, "big") + PARENT_ID.to_bytes(8, "big") + b"\x01"
    frame = link_pb2.Frame(payload=b"12345", trace=trace)
    await pipeline.run(
        pipeline.context(Deadline.after(5, now=time.monotonic())), returning("ok"), frame=frame
    )
    tracing.flush()
    (span,) = spans.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == PARENT_ID
    assert (span.attributes or {})["wiremesh.request_bytes"] == 5


async def test_a_run_without_a_context_traces_from_the_carrier_it_is_given(
    spans: InMemorySpanExporter,
) -> None:
    pipeline = Pipeline("chat", "socket", node_id="chat-1", kind="consumer")

    async def handler() -> None:
        assert current_context() is None

    await pipeline.run(None, handler(), 3, carrier={"traceparent": TRACEPARENT})
    tracing.flush()
    (span,) = spans.get_finished_spans()
    assert span.name == "chat.socket" and span.parent is not None
    assert span.parent.span_id == PARENT_ID


class Recorded:
    """An entrypoint that notes what it was asked to do."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    async def start(self) -> None:
        self.steps.append("start")

    async def drain(self, deadline: float) -> None:
        self.steps.append(f"drain {deadline - time.monotonic() > 0}")

    async def close(self) -> None:
        self.steps.append("close")


async def test_stopping_an_entrypoint_drains_it_until_the_deadline_then_closes_it() -> None:
    steps: list[str] = []
    await stop(Recorded(steps), time.monotonic() + 5)
    assert steps == ["drain True", "close"]
