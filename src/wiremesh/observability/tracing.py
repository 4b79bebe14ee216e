"""Tracing with OpenTelemetry: one trace across every hop, or nothing at all.

OpenTelemetry is an optional extra (``pip install 'wiremesh[otel]'``). Tracing is off
until :func:`configure` (or :func:`use_provider`, for tests) turns it on; while it is off,
every transport pays one ``is None`` test per message and nothing else.

Each transport does the same three things, through this module only:

- the sending side opens a span with :func:`client_span`, whose :class:`Span.carrier`
  (``traceparent``, ``tracestate``: W3C trace context) travels with the message: as gRPC
  metadata, in a mesh link frame's own fields, in AMQP headers, in a gateway frame;
- the receiving side opens its span with :func:`server_span` from the carrier it got, and
  makes it current, so that nested calls, publishes and emits continue the same trace;
- both close theirs with :meth:`Span.end`, giving the outcome (``ok`` or an error status).

Spans are named after what runs (``service.method``, ``publish topic``); their attributes
are the node, the peer, the status and sizes in bytes, never payloads or tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
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
    "frame_context",
    "server_span",
    "use_provider",
]

ExporterName = Literal["none", "console", "otlp"]

#: carrier keys of W3C trace context (gRPC metadata keys, AMQP headers, gateway frames)
TRACE_KEYS = ("traceparent", "tracestate")

log = logging.getLogger("wiremesh.tracing")

_recorder: Recorder | None = None  # while tracing is on
_otel: Any = None  # the pieces of OpenTelemetry's API used here, imported once: _Otel

# OpenTelemetry's SpanKind values
_SERVER, _CLIENT, _PRODUCER, _CONSUMER = 1, 2, 3, 4
#: trace flags as the last byte of a binary trace context
_FLAGS = tuple(bytes((flags,)) for flags in range(256))


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
    _otel = _Otel()
    _recorder = Recorder(provider)


class _Otel:
    """OpenTelemetry's context API, looked up once rather than per span.

    While a handler runs, OpenTelemetry's current span is a non-recording span of its
    own class here, whose ``SpanContext`` is made only when something asks for it: the
    spans wiremesh opens read the ids straight from it. With OpenTelemetry's default
    runtime context (context variables), the context is read and set through its
    variable directly; with any other, through the API.
    """

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY

        span_context, flags_of = trace.SpanContext, (trace.TraceFlags(0), trace.TraceFlags(1))
        self.trace = trace

        class Current(trace.NonRecordingSpan):
            """The span of a running handler, as OpenTelemetry's API sees it."""

            def __init__(self, ids: tuple[int, int, int, Any]) -> None:
                self.ids = ids  # trace id, span id, flags, trace state
                self._context: Any = None

            def get_span_context(self) -> Any:
                if self._context is None:
                    trace_id, span_id, flags, state = self.ids
                    flags_obj = flags_of[flags] if flags < 2 else trace.TraceFlags(flags)
                    self._context = span_context(trace_id, span_id, False, flags_obj, state)
                return self._context

        self.current_type = Current
        runtime = getattr(context, "_RUNTIME_CONTEXT", None)
        var = runtime._current_context if isinstance(runtime, ContextVarsRuntimeContext) else None
        context_type, key = context.Context, _SPAN_KEY

        if var is None:
            self.current: Callable[[], Any] = trace.get_current_span

            def attach(ids: tuple[int, int, int, Any]) -> Any:
                return context.attach(trace.set_span_in_context(Current(ids)))

            self.detach: Callable[[Any], None] = context.detach
        else:
            get = var.get

            def current() -> Any:
                return get().get(key)

            def attach(ids: tuple[int, int, int, Any]) -> Any:
                values = get().copy()
                values[key] = Current(ids)
                return var.set(context_type(values))

            def detach(token: Any) -> None:
                try:
                    var.reset(token)
                except (ValueError, RuntimeError):  # made in another context: as the API does
                    log.debug("a span's context was detached in another context")

            self.current = current
            self.detach = detach
        self.attach: Callable[[tuple[int, int, int, Any]], Any] = attach

    def current_ids(self) -> tuple[int, int, int, Any] | None:
        """Trace id, span id, flags and trace state of the current span, if any."""
        span = self.current()
        if span is None:
            return None
        if type(span) is self.current_type:
            ids: tuple[int, int, int, Any] = span.ids
            return ids
        found = span.get_span_context()
        if not found.is_valid:
            return None
        return found.trace_id, found.span_id, found.trace_flags, found.trace_state


def flush() -> None:
    """Hand every span recorded so far to the exporters now."""
    if _recorder is not None:
        _recorder.flush()


def shutdown() -> None:
    """Flush and stop (a process calls this before it exits)."""
    use_provider(None)


class Span:
    """One span of wiremesh's, open until :meth:`end`.

    A sending side's span gives its trace context to the message it sends: as
    :attr:`carrier` (W3C headers) or, in a mesh link's frame, as :meth:`trace` and
    :attr:`tracestate`; each is made when asked for.
    """

    __slots__ = ("_extra", "_ids", "_kind", "_name", "_start", "_state", "_token", "_where")

    def __init__(
        self,
        name: str,
        kind: int,
        ids: tuple[int, int, int, bool, int],
        where: tuple[str | None, str | None, int | None],
        token: Any,
        state: Any = None,
    ) -> None:
        self._name = name
        self._kind = kind
        self._ids = ids  # trace id, span id, parent span id (0: none), remote parent, flags
        self._where = where  # node, peer, request bytes: attributes, put together on export
        self._extra: dict[str, Any] | None = None
        self._start = time.time_ns()
        self._token = token
        self._state = state  # the W3C trace state (None: empty)

    @property
    def carrier(self) -> dict[str, str]:
        """The W3C trace context that travels with what this span sends: ``traceparent``,
        and ``tracestate`` when there is one (empty on the receiving side)."""
        if self._kind in (_SERVER, _CONSUMER):
            return {}
        trace_id, span_id, _, _, flags = self._ids
        carrier = {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}
        if self._state:
            carrier["tracestate"] = self._state.to_header()
        return carrier

    def trace(self) -> bytes:
        """The ``traceparent`` fields in binary, as a mesh link's frame carries them:
        trace id (16 bytes), span id (8), flags (1), big-endian."""
        trace_id, span_id, _, _, flags = self._ids
        return trace_id.to_bytes(16, "big") + span_id.to_bytes(8, "big") + _FLAGS[flags & 0xFF]

    @property
    def tracestate(self) -> str:
        """The W3C ``tracestate`` header ("" when there is none)."""
        return self._state.to_header() if self._state else ""

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._extra is None:
            self._extra = {}
        self._extra[key] = value

    def end(self, status: str = "ok", *, size: int | None = None) -> None:
        """Close the span with the outcome: ``ok`` or a wiremesh error status; ``size`` is
        the answer's, in bytes."""
        if self._token is not None:
            _otel.detach(self._token)
            self._token = None
        recorder = _recorder
        if recorder is None or not self._ids[4] & 1:  # off since, or not sampled
            return
        recorder.record(
            (
                self._name,
                self._kind,
                self._ids,
                self._start,
                time.time_ns(),
                self._where,
                size,
                status,
                self._extra,
            )
        )


def frame_context(span: Span | None) -> tuple[bytes, str]:
    """A mesh link frame's ``trace`` and ``tracestate`` for what ``span`` sends (empty
    ones without a span)."""
    return (b"", "") if span is None else (span.trace(), span.tracestate)


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
    current = _otel.current_ids()
    if current is not None:
        trace_id, parent, flags, state = current
    else:
        (trace_id, flags), parent, state = recorder.new_trace(name), 0, None
    # the W3C trace context is written by the span when asked for, rather than by
    # OpenTelemetry's propagator API: the same header, for a fraction of the cost
    return Span(
        name,
        _CLIENT if kind == "client" else _PRODUCER,
        (trace_id, recorder.new_span_id(), parent, False, flags),
        (node, None, size),
        None,
        state,
    )


def _parent(header: Any, state: Any) -> tuple[int, int, int, Any] | None:
    """Trace id, span id, flags and trace state of a W3C ``traceparent`` header and its
    ``tracestate`` (None when the header is absent or invalid)."""
    if not isinstance(header, str) or len(header) != 55 or header[:2] == "ff":
        return None
    if header[2] != "-" or header[35] != "-" or header[52] != "-":
        return None
    try:
        trace_id, span_id, flags = (
            int(header[3:35], 16),
            int(header[36:52], 16),
            int(header[53:], 16),
        )
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    trace_state = (
        _otel.trace.TraceState.from_header([state]) if isinstance(state, str) and state else None
    )
    return trace_id, span_id, flags, trace_state


def _binary_parent(trace: bytes, state: str) -> tuple[int, int, int, Any] | None:
    """:func:`_parent` of a link frame's binary ``trace`` (see :meth:`Span.trace`)."""
    if len(trace) != 25:
        return None
    trace_id, span_id = int.from_bytes(trace[:16], "big"), int.from_bytes(trace[16:24], "big")
    if not trace_id or not span_id:
        return None
    trace_state = _otel.trace.TraceState.from_header([state]) if state else None
    return trace_id, span_id, trace[24], trace_state


def server_span(
    name: str,
    carrier: Mapping[str, Any] | None,
    *,
    trace: bytes = b"",
    tracestate: str = "",
    node: str | None = None,
    peer: str | None = None,
    size: int | None = None,
    kind: str = "server",
) -> Span | None:
    """Open the receiving side's span as a child of the sender's (a new trace when there
    is none) and make it current until :meth:`Span.end`. ``None`` when tracing is off.

    The sender's trace context is ``trace`` and ``tracestate`` when given (a link's
    frame), else the W3C keys of ``carrier``. ``kind`` is ``server`` (answering a call)
    or ``consumer`` (a message handler).
    """
    recorder = _recorder
    if recorder is None:
        return None
    if trace:
        remote = _binary_parent(trace, tracestate)
    elif carrier:
        remote = _parent(carrier.get("traceparent"), carrier.get("tracestate"))
    else:
        remote = None
    if remote is not None:
        trace_id, parent, flags, state = remote
    else:
        (trace_id, flags), parent, state = recorder.new_trace(name), 0, None
    span_id = recorder.new_span_id()
    token = _otel.attach((trace_id, span_id, flags, state))
    return Span(
        name,
        _SERVER if kind == "server" else _CONSUMER,
        (trace_id, span_id, parent, remote is not None, flags),
        (node, peer, size),
        token,
        state,
    )


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids as hex (for log lines), or ``None``."""
    if _recorder is None:
        return None
    current = _otel.current_ids()
    if current is None:
        return None
    return f"{current[0]:032x}", f"{current[1]:016x}"
