"""Entrypoints: how a node runs a handler, whatever brought the work, and how it starts and
stops each kind of entrypoint.

An entrypoint is what brings work into a node: a call (:mod:`.dispatch`, for the unary
gRPC path of :mod:`.server` and for mesh links), a publish (:class:`.publish.Subscriptions`),
a durable message (:mod:`wiremesh.messaging.consumer`), a browser frame
(:mod:`wiremesh.gateway.socket_hub`). Each runs its handler inside the same steps, those of
the :class:`Pipeline` it makes once per handler:

1. build the handler's :class:`~wiremesh.Context` (:meth:`Pipeline.context`);
2. :meth:`Pipeline.run`: make it current and open the receiving side's span, a child of
   the sender's, named ``service.handler``; await the handling;
3. then give back the context that was current, close the span with the status of the
   outcome, and count the run in ``wiremesh_calls_handled`` and
   ``wiremesh_call_handle_seconds`` when the pipeline has a method's metrics. The status
   is that of the exception the handling raised (:func:`status_of`, or the pipeline's
   ``failed`` hook's), else ``ok``; or, for an entrypoint that settles its handler's
   outcome itself (a message retried or dead), the status its handling returns.

What is particular to a kind stays with it, in the handling it passes and in its hooks:
decoding, the deadline or the time limit, the drain's accounting, settling a message, its
counters and its log lines (which, inside the run, carry its trace)::

    pipeline = Pipeline("shop", "buy", node_id="shop-1", mesh=caller, metrics=children)
    ctx = pipeline.context(deadline, metadata=metadata, caller="front@front-1")
    answer = await pipeline.run(ctx, handler(ctx, *args), len(request), trace, tracestate)

The run is a coroutine around the handling's rather than a context manager: on the hot
paths (a call, a publish) it costs one more coroutine per run, and no object besides.

The node starts, drains and closes every kind of entrypoint alike (:class:`Entrypoint`,
as nameko's extensions), in the order that :mod:`wiremesh.runtime.node` lists them.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar

from wiremesh.context import Context, MeshCaller
from wiremesh.core.deadline import Deadline
from wiremesh.errors import WiremeshError
from wiremesh.observability import tracing
from wiremesh.observability.metrics import MethodMetrics

__all__ = ["Entrypoint", "Pipeline", "status_of", "stop"]

T = TypeVar("T")


class Entrypoint(Protocol):
    """One kind of work coming into a node, as the node starts and stops it."""

    async def start(self) -> None:
        """Take work from now on."""

    async def drain(self, deadline: float) -> None:
        """Take no new work, and let the work in flight finish until ``deadline`` (on
        ``time.monotonic()``) at most."""

    async def close(self) -> None:
        """End whatever still runs, and let go of what the entrypoint holds."""


async def stop(entrypoint: Entrypoint, deadline: float) -> None:
    """Drain ``entrypoint`` until ``deadline`` (on ``time.monotonic()``), then close it."""
    await entrypoint.drain(deadline)
    await entrypoint.close()


def status_of(error: BaseException) -> str:
    """The status a handler that raised ``error`` is traced and counted with: a wiremesh
    error's own (``invalid_payload``, ``deadline_exceeded``…), ``cancelled``, else
    ``internal``."""
    if isinstance(error, WiremeshError):
        return error.status.value
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "internal"


class Pipeline:
    """The steps around one handler of the running service, made once per handler.

    ``service`` and ``handler`` name the span (``service.handler``) and the context;
    ``mesh`` is what the handler calls through (``ctx.call``); ``kind`` is the span's:
    ``server`` (a call, answered) or ``consumer`` (a message); ``metrics``, when given,
    counts each run by status, with its duration. Two hooks say what is particular to
    the entrypoint's outcomes: ``failed(error, ctx)`` runs when the handling raises an
    exception (not a cancellation), while the context and the span are still current (it
    logs the error, say), and returns the run's status; the exception goes on. With
    ``returns_status``, the handling settles the handler's outcome itself and returns the
    run's status.
    """

    __slots__ = (
        "failed",
        "handler",
        "kind",
        "mesh",
        "metrics",
        "node_id",
        "returns_status",
        "service",
        "span_name",
    )

    def __init__(
        self,
        service: str,
        handler: str,
        *,
        node_id: str,
        mesh: MeshCaller | None = None,
        kind: Literal["server", "consumer"] = "server",
        metrics: MethodMetrics | None = None,
        failed: Callable[[Exception, Context | None], str] | None = None,
        returns_status: bool = False,
    ) -> None:
        self.service = service
        self.handler = handler
        self.node_id = node_id
        self.mesh = mesh
        self.kind = kind
        self.metrics = metrics
        self.failed = failed
        self.returns_status = returns_status
        self.span_name = f"{service}.{handler}"

    def context(
        self,
        deadline: Deadline,
        *,
        metadata: Mapping[str, str | bytes] | None = None,
        caller: str | None = None,
        peer: str | None = None,
        message: Any = None,
    ) -> Context:
        """The context of one run: ``caller`` is the sending node (``service@node-id``),
        ``peer`` the transport's address of it, ``message`` a durable message's
        envelope (:class:`~wiremesh.messaging.base.Envelope`, which this layer does not
        import); ``metadata`` also carries the sender's trace context."""
        return Context(
            deadline=deadline,
            service=self.service,
            method=self.handler,
            node_id=self.node_id,
            # a pipeline without a mesh (a socket handler's) makes no context; a test's
            # handler that calls nobody may run with None
            caller_client=self.mesh,  # type: ignore[arg-type]
            metadata=metadata,
            caller=caller,
            peer=peer,
            message=message,
        )

    async def run(
        self,
        ctx: Context | None,
        handling: Awaitable[T],
        size: int = 0,
        trace: bytes = b"",
        tracestate: str = "",
        *,
        frame: Any = None,
        carrier: Mapping[str, Any] | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> T:
        """Await ``handling`` (the handler's coroutine, or the entrypoint's work around it)
        with ``ctx`` current, for a request or message of ``size`` bytes; what it returns
        or raises, this returns or raises.

        The span continues the sender's trace: ``trace`` and ``tracestate`` when given (a
        link's frame), else the W3C keys of ``ctx.metadata`` (of ``carrier`` without a
        context); its peer is ``ctx.caller``, and ``attributes`` are added to it. A mesh
        link's ``frame`` (a :class:`~wiremesh.proto.link_pb2.Frame`) gives the size and
        the trace context instead, read only while tracing is on.
        """
        token: contextvars.Token[Context | None] | None = None
        peer = None
        if ctx is not None:
            token = ctx.activate()
            carrier = ctx.metadata
            peer = ctx.caller
        if not tracing.enabled():
            span = None
        else:
            if frame is not None:
                size, trace, tracestate = len(frame.payload), frame.trace, frame.tracestate
            span = tracing.server_span(
                self.span_name,
                carrier,
                trace=trace,
                tracestate=tracestate,
                node=self.node_id,
                peer=peer,
                size=size,
                kind=self.kind,
            )
            if span is not None and attributes:
                for key, value in attributes.items():
                    span.set(key, value)
        metrics = self.metrics
        started = 0.0 if metrics is None else time.perf_counter()
        status = "ok"
        try:
            result = await handling
            if self.returns_status and isinstance(result, str):
                status = result
            return result
        except Exception as error:
            failed = self.failed
            status = status_of(error) if failed is None else failed(error, ctx)
            raise
        except BaseException as error:
            status = status_of(error)
            raise
        finally:
            if token is not None:
                Context.deactivate(token)
            if metrics is not None:
                metrics.observe(status, time.perf_counter() - started)
            if span is not None:
                span.end(status)
