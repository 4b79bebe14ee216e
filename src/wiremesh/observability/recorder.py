"""Recording wiremesh's own spans cheaply, for OpenTelemetry's SDK to export.

A span opened by the OpenTelemetry SDK is, on every call, a sampler call, a span object
with locked attributes and a snapshot at its end, all on the caller's path. So wiremesh
records its spans itself: ids from a seeded generator, clocks in nanoseconds, a plain
tuple appended to a bounded queue at the end (what that costs a call is
``tracing_on_overhead`` in ``benchmarks/rpc.py``: throughput with tracing on in both
processes, against off, in the same run).
A background thread turns the records into the SDK's ``ReadableSpan`` and hands them on
in batches: straight to the exporter of a ``BatchSpanProcessor`` or
``SimpleSpanProcessor`` (this thread already batches, so theirs would only add a second
queue, a lock and a thread per span), and to any other processor one span at a time.

What the rest of the process sees is OpenTelemetry's own: while a handler runs, its span
is current in OpenTelemetry's context (a non-recording span with the same ids), so spans
opened with the OpenTelemetry API inside a handler are its children, and log lines carry
its ids. Sampling follows the provider's sampler for a new trace and the parent's
decision otherwise (``ParentBased``, the SDK's default).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Recorder", "SpanRecord"]

log = logging.getLogger("wiremesh.tracing")

#: records waiting for the exporting thread; past it the oldest are dropped (and counted)
QUEUE_LIMIT = 65536
#: the exporting thread hands what is recorded over at least this often (seconds) ...
EXPORT_EVERY = 0.2
#: ... or as soon as this many records wait (and at most this many go in one export)
EXPORT_BATCH = 512

# a record: (name, kind, (trace_id, span_id, parent_id, remote_parent, flags), start_ns,
#            end_ns, (node, peer, request_bytes), answer_bytes, status, other attributes);
# the attributes are put together by the exporting thread, not on the traced path
SpanRecord = tuple[
    str,
    int,
    tuple[int, int, int, bool, int],
    int,
    int,
    tuple[str | None, str | None, int | None],
    int | None,
    str,
    dict[str, Any] | None,
]


class Recorder:
    """The spans of one process, on their way to ``provider``'s processors."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.provider = provider
        self.processor = provider._active_span_processor  # every processor added to it
        self.resource = provider.resource
        self.sampler = provider.sampler
        # the SDK's default (and AlwaysOn) samples every new trace: no need to ask it
        description = self.sampler.get_description()
        self._always = description == "AlwaysOnSampler" or description.startswith(
            "ParentBased{root:AlwaysOnSampler,"
        )
        self.scope = InstrumentationScope("wiremesh")
        self._exporters, self._others = _sinks(self.processor)
        self.make_span = _span_maker(self.resource, self.scope)
        self._random = random.Random(os.urandom(16))
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one exporting at a time: the thread or a flush
        self._stopped = False
        #: records dropped because the exporting thread fell behind
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="wiremesh-spans", daemon=True)
        self._thread.start()

    def new_trace(self, name: str) -> tuple[int, int]:
        """A new trace id, and its flags (1: sampled) by the provider's sampler."""
        trace_id = self._random.getrandbits(128) or 1
        if self._always:
            return trace_id, 1
        decision = self.sampler.should_sample(None, trace_id, name).decision
        return trace_id, 1 if decision.is_sampled() else 0

    def new_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def record(self, record: SpanRecord) -> None:
        queue = self._queue
        if len(queue) >= QUEUE_LIMIT:
            queue.popleft()
            self.dropped += 1
        queue.append(record)
        if len(queue) == EXPORT_BATCH:
            self._wake.set()

    def flush(self) -> None:
        """Hand every record over now (in this thread), then flush the processors."""
        self._export()
        self.processor.force_flush()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=2.0)
        self.flush()
        if self.dropped:
            log.warning("%d spans were dropped: the exporter could not keep up", self.dropped)

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(EXPORT_EVERY)
            self._wake.clear()
            try:
                self._export()
            except Exception:  # an exporter's failure never ends the thread
                log.exception("handing spans to the exporter failed")

    def _export(self) -> None:
        with self._lock:
            while self._queue:
                spans = self._spans(EXPORT_BATCH)
                for export in self._exporters:
                    export(spans)
                for on_end in self._others:
                    for span in spans:
                        on_end(span)

    def _spans(self, limit: int) -> list[Any]:
        """Up to ``limit`` records off the queue, as the SDK's ``ReadableSpan``."""
        make = self.make_span
        spans = []
        pop = self._queue.popleft
        for _ in range(limit):
            try:
                name, kind, ids, start, end, where, answer_bytes, status, extra = pop()
            except IndexError:
                break
            node, peer, request_bytes = where
            attributes: dict[str, Any] = {"wiremesh.status": status}
            if node is not None:
                attributes["wiremesh.node"] = node
            if peer is not None:
                attributes["wiremesh.peer"] = peer
            if request_bytes is not None:
                attributes["wiremesh.request_bytes"] = request_bytes
            if answer_bytes is not None:
                attributes["wiremesh.answer_bytes"] = answer_bytes
            if extra:
                attributes.update(extra)
            spans.append(make(name, kind, ids, start, end, attributes, status))
        return spans


_Make = Callable[[str, int, tuple[int, int, int, bool, int], int, int, dict[str, Any], str], Any]


def _span_maker(resource: Any, scope: Any) -> _Make:
    """A function that makes the SDK's ``ReadableSpan`` of one record.

    Rather than through the constructors (``SpanContext`` checks its ids as it is made,
    and every id here is one wiremesh made valid), a span is made as the constructor
    would make it, from a copy of the attributes of one it made, with its
    ``SpanContext`` tuples built directly. A first span made both ways must come out
    equal, else (another SDK version) the constructor is used.
    """
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.span import DEFAULT_TRACE_STATE

    flags_of = (TraceFlags(0), TraceFlags(1))
    kinds = list(SpanKind)  # by value: INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
    unset = Status(StatusCode.UNSET)

    def status_of(status: str) -> Any:
        return unset if status == "ok" else Status(StatusCode.ERROR, status)

    def built(
        name: str,
        kind: int,
        ids: tuple[int, int, int, bool, int],
        start: int,
        end: int,
        attributes: dict[str, Any],
        status: str,
    ) -> Any:
        trace_id, span_id, parent_id, remote, flags = ids
        sampled = flags_of[flags] if flags < 2 else TraceFlags(flags)
        return ReadableSpan(
            name=name,
            context=SpanContext(trace_id, span_id, False, sampled),
            parent=SpanContext(trace_id, parent_id, remote, sampled) if parent_id else None,
            resource=resource,
            attributes=attributes,
            kind=kinds[kind],
            status=status_of(status),
            start_time=start,
            end_time=end,
            instrumentation_scope=scope,
        )

    template = dict(vars(built("", 1, (1, 2, 3, True, 1), 1, 2, {}, "ok")))
    new, new_tuple = object.__new__, tuple.__new__
    no_state = DEFAULT_TRACE_STATE

    def quick(
        name: str,
        kind: int,
        ids: tuple[int, int, int, bool, int],
        start: int,
        end: int,
        attributes: dict[str, Any],
        status: str,
    ) -> Any:
        trace_id, span_id, parent_id, remote, flags = ids
        sampled = flags_of[flags] if flags < 2 else TraceFlags(flags)
        values = template.copy()
        values["_name"] = name
        # SpanContext's own fields, valid ids being all wiremesh records
        values["_context"] = new_tuple(
            SpanContext, (trace_id, span_id, False, sampled, no_state, True)
        )
        values["_parent"] = (
            new_tuple(SpanContext, (trace_id, parent_id, remote, sampled, no_state, True))
            if parent_id
            else None
        )
        values["_attributes"] = attributes
        values["_kind"] = kinds[kind]
        values["_status"] = status_of(status)
        values["_start_time"] = start
        values["_end_time"] = end
        span = new(ReadableSpan)
        span.__dict__ = values
        return span

    for record in (
        ("a", 1, (7, 8, 9, True, 1), 10, 20, {"k": 1}, "ok"),
        ("b", 3, (7, 8, 0, False, 0), 10, 20, {}, "internal"),
    ):
        one, other = vars(built(*record)), vars(quick(*record))
        status, other_status = one.pop("_status"), other.pop("_status")
        if one != other or (status.status_code, status.description) != (
            other_status.status_code,
            other_status.description,
        ):
            return built
    return quick


def _sinks(processor: Any) -> tuple[list[Callable[[Any], Any]], list[Callable[[Any], None]]]:
    """Where finished spans go: the ``export`` of each exporter that a batching or simple
    span processor would call, and the ``on_end`` of every other processor."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processors = getattr(processor, "_span_processors", None)
    if processors is None:  # not the SDK's multi-processor: hand each span to it
        return [], [processor.on_end]
    exporters: list[Callable[[Any], Any]] = []
    others: list[Callable[[Any], None]] = []
    for each in processors:
        if type(each) in (BatchSpanProcessor, SimpleSpanProcessor):
            exporters.append(each.span_exporter.export)
        else:
            others.append(each.on_end)
    return exporters, others
