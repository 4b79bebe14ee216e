"""Recording wiremesh's own spans cheaply, for OpenTelemetry's SDK to export.

A span opened by the OpenTelemetry SDK costs 15-20 µs of Python on this path (a sampler
call, a span object with locked attributes, a snapshot at its end); a wiremesh call
costs about 30 µs in all. So wiremesh records its spans itself: ids from a seeded
generator, clocks in nanoseconds, a plain record appended to a bounded queue at the
end. A background thread turns the records into the SDK's ``ReadableSpan`` and hands them
to the provider's span processors (batching, exporters) as if the SDK had made them.

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
from typing import Any

__all__ = ["Recorder", "SpanRecord"]

log = logging.getLogger("wiremesh.tracing")

#: records waiting for the exporting thread; past it the oldest are dropped (and counted)
QUEUE_LIMIT = 65536
#: the exporting thread hands what is recorded over at least this often (seconds) ...
EXPORT_EVERY = 0.2
#: ... or as soon as this many records wait
EXPORT_BATCH = 512

# a record: (name, kind, trace_id, span_id, parent_id, remote_parent, flags, start_ns,
#            end_ns, attributes, error)
SpanRecord = tuple[str, int, int, int, int, bool, int, int, int, dict[str, Any], str | None]


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
        self._random = random.Random(os.urandom(16))
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
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
        if len(queue) >= EXPORT_BATCH:
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
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        queue = self._queue
        on_end = self.processor.on_end
        while queue:
            try:
                (name, kind, trace_id, span_id, parent_id, remote, flags, start, end, attributes,
                 error) = queue.popleft()  # fmt: skip
            except IndexError:
                return
            sampled = TraceFlags(flags)
            parent = (
                SpanContext(trace_id, parent_id, is_remote=remote, trace_flags=sampled)
                if parent_id
                else None
            )
            on_end(
                ReadableSpan(
                    name=name,
                    context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=sampled),
                    parent=parent,
                    resource=self.resource,
                    attributes=attributes,
                    kind=SpanKind(kind),
                    status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=self.scope,
                )
            )
