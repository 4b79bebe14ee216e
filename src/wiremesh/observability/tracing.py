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

import time
from collections.abc import Mapping
from typing import Any, Literal

from wiremesh.observability.recorder import Recorder

__all__ = [
    "TRACE_KEYS",
    "ExporterName",
    "Span",
    "client_span",
    "configure",
    "enabled",
    "flush",
    "server_span",
    "use_provider",
]

ExporterName = Literal["none", "console", "otlp"]

#: carrier keys of W3C trace context (metadata keys, frame metadata keys, AMQP headers)
TRACE_KEYS = ("traceparent", "tracestate")

_recorder: Recorder | None = None  # while tracing is on
_otel: Any = None  # (opentelemetry.context, opentelemetry.trace), imported once

# OpenTelemetry's SpanKind values
_SERVER, _CLIENT, _PRODUCER, _CONSUMER = 1, 2, 3, 4


def enabled() -> bool:
    return _recorder is not None


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
    # the spans handlers open with OpenTelemetry's API go the same way, as children
    from opentelemetry import trace

    trace.set_tracer_provider(provider)


def use_provider(provider: Any) -> None:
    """Trace with this OpenTelemetry SDK ``TracerProvider`` and its span processors
    (``None``: tracing off, after flushing what was recorded). Tests give one with an
    in-memory exporter."""
    global _recorder, _otel
    old, _recorder = _recorder, None
    if old is not None:
        old.stop()  # hands every record over, then flushes the processors
        if old.provider is not provider:
            old.provider.shutdown()
    if provider is None:
        return
    if not hasattr(provider, "_active_span_processor"):
        from wiremesh.errors import ConfigError

        raise ConfigError("tracing needs the OpenTelemetry SDK's TracerProvider")
    from opentelemetry import context, trace

    _otel = (context, trace)
    _recorder = Recorder(provider)


def flush() -> None:
    """Hand every span recorded so far to the exporters now."""
    if _recorder is not None:
        _recorder.flush()


def shutdown() -> None:
    """Flush and stop (a process calls this before it exits)."""
    use_provider(None)


class Span:
    """One span of wiremesh's, open until :meth:`end`."""

    __slots__ = (
        "_attributes",
        "_flags",
        "_kind",
        "_name",
        "_parent",
        "_remote",
        "_span",
        "_start",
        "_token",
        "_trace",
        "carrier",
    )

    def __init__(
        self,
        name: str,
        kind: int,
        ids: tuple[int, int, int, bool, int],
        attributes: dict[str, Any],
        token: Any,
        carrier: Mapping[str, str],
    ) -> None:
        self._name = name
        self._kind = kind
        self._trace, self._span, self._parent, self._remote, self._flags = ids
        self._attributes = attributes
        self._start = time.time_ns()
        self._token = token
        #: what travels with the message (empty on the receiving side)
        self.carrier = carrier

    def set(self, key: str, value: str | int | float | bool) -> None:
        self._attributes[key] = value

    def end(self, status: str = "ok", *, size: int | None = None) -> None:
        """Close the span with the outcome: ``ok`` or a wiremesh error status."""
        if self._token is not None:
            _otel[0].detach(self._token)
            self._token = None
        recorder = _recorder
        if recorder is None or not self._flags & 1:  # off since, or not sampled
            return
        attributes = self._attributes
        if size is not None:
            attributes["wiremesh.answer_bytes"] = size
        attributes["wiremesh.status"] = status
        recorder.record(
            (
                self._name,
                self._kind,
                self._trace,
                self._span,
                self._parent,
                self._remote,
                self._flags,
                self._start,
                time.time_ns(),
                attributes,
                None if status == "ok" else status,
            )
        )


def _attributes(**found: str | int | None) -> dict[str, Any]:
    return {f"wiremesh.{key}": value for key, value in found.items() if value is not None}


def client_span(
    name: str, *, node: str | None = None, size: int | None = None, kind: str = "client"
) -> Span | None:
    """Open the sending side's span (``None`` when tracing is off); send its ``carrier``.

    ``kind`` is ``client`` (a call, which waits) or ``producer`` (publish, emit, push).
    The current span (the handler's, while one runs) is its parent.
    """
    recorder = _recorder
    if recorder is None:
        return None
    current = _otel[1].get_current_span().get_span_context()
    state = None
    if current.is_valid:
        trace_id, parent, flags = current.trace_id, current.span_id, current.trace_flags
        state = current.trace_state
    else:
        (trace_id, flags), parent = recorder.new_trace(name), 0
    span_id = recorder.new_span_id()
    # W3C trace context, written here rather than by OpenTelemetry's propagator API: the
    # same header, for a fraction of the cost on a path taken for every message
    carrier = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}
    if state:
        carrier["tracestate"] = state.to_header()
    return Span(
        name,
        _CLIENT if kind == "client" else _PRODUCER,
        (trace_id, span_id, parent, False, flags),
        _attributes(node=node, request_bytes=size),
        None,
        carrier,
    )


def _parent(carrier: Mapping[str, Any]) -> tuple[int, int, int, Any] | None:
    """Trace id, span id, flags and trace state of a W3C ``traceparent`` (None when
    absent or invalid)."""
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
    state = carrier.get("tracestate")
    trace_state = _otel[1].TraceState.from_header([state]) if isinstance(state, str) else None
    return trace_id, span_id, trace_flags & 0xFF, trace_state


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
    recorder = _recorder
    if recorder is None:
        return None
    context, trace = _otel
    remote = _parent(carrier) if carrier else None
    if remote is not None:
        trace_id, parent, flags, state = remote
    else:
        (trace_id, flags), parent, state = recorder.new_trace(name), 0, None
    span_id = recorder.new_span_id()
    current = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=trace.TraceFlags(flags),
            trace_state=state,
        )
    )
    token = context.attach(trace.set_span_in_context(current))
    return Span(
        name,
        _SERVER if kind == "server" else _CONSUMER,
        (trace_id, span_id, parent, remote is not None, flags),
        _attributes(node=node, peer=peer, request_bytes=size),
        token,
        {},
    )


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids as hex (for log lines), or ``None``."""
    if _recorder is None:
        return None
    span_context = _otel[1].get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"
