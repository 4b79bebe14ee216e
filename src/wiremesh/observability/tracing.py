"""Tracing with OpenTelemetry: one trace across every hop, or nothing at all.

OpenTelemetry is an optional extra (``pip install 'wiremesh[otel]'``). Tracing is off
until :func:`configure` (or :func:`use_provider`, for tests) turns it on; while it is off,
every transport pays one ``is None`` test per message and nothing else.

Each transport does the same three things, through this module only:

- the sending side opens a span with :func:`client_span`, whose :class:`Span.carrier`
  (``traceparent``, ``tracestate``: W3C trace context) travels with the message: as gRPC
  metadata, in a mesh link frame's metadata, in AMQP headers, in a gateway frame;
- the receiving side opens its span with :func:`server_span` from the carrier it got, and
  makes it current, so that nested calls, publishes and emits continue the same trace;
- both close theirs with :meth:`Span.end`, giving the outcome (``ok`` or an error status).

Spans are named after what runs (``service.method``, ``publish topic``); their attributes
are the node, the peer, the status and sizes in bytes, never payloads or tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "TRACE_KEYS",
    "ExporterName",
    "Span",
    "client_span",
    "configure",
    "enabled",
    "server_span",
    "use_provider",
]

ExporterName = Literal["none", "console", "otlp"]

#: carrier keys of W3C trace context (metadata keys, frame metadata keys, AMQP headers)
TRACE_KEYS = ("traceparent", "tracestate")

_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None  # the TracerProvider configure() made (to flush at exit)
_kinds: Any = None  # opentelemetry.trace.SpanKind
_status: Any = None  # (Status, StatusCode)
_otel: Any = None  # (opentelemetry.context, opentelemetry.trace, None), imported once


def enabled() -> bool:
    return _tracer is not None


def configure(
    exporter: ExporterName,
    *,
    service_name: str,
    endpoint: str | None = None,
    node_id: str | None = None,
) -> None:
    """Turn tracing on for this process with ``exporter`` (``none`` turns it off).

    ``otlp`` sends spans over gRPC to ``endpoint`` (the collector's default when None);
    ``console`` prints them. Raises :class:`~wiremesh.ConfigError` when the ``otel`` extra
    is not installed.
    """
    if exporter == "none":
        use_provider(None)
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        from wiremesh.errors import ConfigError

        raise ConfigError(
            f"tracing with the {exporter!r} exporter needs OpenTelemetry: "
            "pip install 'wiremesh[otel]'"
        ) from None
    attributes = {"service.name": service_name}
    if node_id:
        attributes["service.instance.id"] = node_id
    provider = TracerProvider(resource=Resource.create(attributes))
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    use_provider(provider)


def use_provider(provider: Any) -> None:
    """Trace with this OpenTelemetry ``TracerProvider`` (``None``: tracing off). Tests
    give one with an in-memory exporter."""
    global _tracer, _provider, _kinds, _status, _otel
    if _provider is not None and _provider is not provider:
        _provider.shutdown()  # flushes what is batched
    if provider is None:
        _tracer = _provider = None
        return
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    _otel = (context, trace, None)
    _kinds = SpanKind
    _status = (Status, StatusCode)
    _provider = provider
    _tracer = provider.get_tracer("wiremesh")


def shutdown() -> None:
    """Flush and stop (a process calls this before it exits)."""
    use_provider(None)


class Span:
    """One span of wiremesh's, open until :meth:`end`."""

    __slots__ = ("_span", "_token", "carrier")

    def __init__(self, span: Any, token: Any, carrier: Mapping[str, str]) -> None:
        self._span = span
        self._token = token
        #: what travels with the message (empty on the receiving side)
        self.carrier = carrier

    def set(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def end(self, status: str = "ok", *, size: int | None = None) -> None:
        """Close the span with the outcome: ``ok`` or a wiremesh error status."""
        span = self._span
        if size is not None:
            span.set_attribute("wiremesh.answer_bytes", size)
        span.set_attribute("wiremesh.status", status)
        if status != "ok":
            status_cls, code = _status
            span.set_status(status_cls(code.ERROR, status))
        if self._token is not None:
            _otel[0].detach(self._token)
        span.end()


def client_span(
    name: str, *, node: str | None = None, size: int | None = None, kind: str = "client"
) -> Span | None:
    """Open the sending side's span (``None`` when tracing is off); send its ``carrier``.

    ``kind`` is ``client`` (a call, which waits) or ``producer`` (publish, emit, push).
    """
    tracer = _tracer
    if tracer is None:
        return None
    attributes: dict[str, str | int] = {}
    if node:
        attributes["wiremesh.node"] = node
    if size is not None:
        attributes["wiremesh.request_bytes"] = size
    span = tracer.start_span(
        name,
        kind=_kinds.CLIENT if kind == "client" else _kinds.PRODUCER,
        attributes=attributes,
    )
    # W3C trace context, written here rather than by OpenTelemetry's propagator API: the
    # same header, for a fraction of the cost on a path taken for every message
    ids = span.get_span_context()
    carrier = {"traceparent": f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"}
    if ids.trace_state:
        carrier["tracestate"] = ids.trace_state.to_header()
    return Span(span, None, carrier)


def _parent(carrier: Mapping[str, Any]) -> Any:
    """The OpenTelemetry context of a W3C ``traceparent`` (None when absent or invalid)."""
    header = carrier.get("traceparent")
    if not isinstance(header, str) or len(header) != 55:
        return None
    version, trace_hex, span_hex, flags = header[:2], header[3:35], header[36:52], header[53:]
    if version == "ff" or header[2] != "-" or header[35] != "-" or header[52] != "-":
        return None
    try:
        trace_id, span_id, trace_flags = int(trace_hex, 16), int(span_hex, 16), int(flags, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    _, trace, _ = _otel
    state = carrier.get("tracestate")
    remote = trace.SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace_flags),
        trace_state=trace.TraceState.from_header([state]) if isinstance(state, str) else None,
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def server_span(
    name: str,
    carrier: Mapping[str, Any] | None,
    *,
    node: str | None = None,
    peer: str | None = None,
    size: int | None = None,
    kind: str = "server",
) -> Span | None:
    """Open the receiving side's span as a child of ``carrier``'s (a new trace when it has
    none) and make it current until :meth:`Span.end`. ``None`` when tracing is off.

    ``kind`` is ``server`` (answering a call) or ``consumer`` (a message handler).
    """
    tracer = _tracer
    if tracer is None:
        return None
    context, trace, _ = _otel
    attributes: dict[str, str | int] = {}
    if node:
        attributes["wiremesh.node"] = node
    if peer:
        attributes["wiremesh.peer"] = peer
    if size is not None:
        attributes["wiremesh.request_bytes"] = size
    span = tracer.start_span(
        name,
        context=_parent(carrier) if carrier else None,
        kind=_kinds.SERVER if kind == "server" else _kinds.CONSUMER,
        attributes=attributes,
    )
    token = context.attach(trace.set_span_in_context(span))
    return Span(span, token, {})


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids as hex (for log lines), or ``None``."""
    if _tracer is None:
        return None
    span_context = _otel[1].get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"
