"""Logs: one event per line, plain or JSON, with the trace ids of the span it belongs to.

wiremesh logs what happened (a node started, a handler raised, a message was dropped),
never payloads, tokens or secrets. :func:`configure_logging` sets up a process's root
logger; the supervisor, node and gateway processes call it from their settings
(``[observability] log_format``, ``WIREMESH_LOG_FORMAT``, ``WIREMESH_LOG_LEVEL``).

A JSON line: ``{"ts": "2026-11-25T04:12:03.512Z", "level": "warning", "logger":
"wiremesh.publish", "message": "...", "node": "orders-3f9a", "trace_id": "...",
"span_id": "..."}`` plus ``exc_type`` and ``exc`` (the traceback) when an exception is
logged. Extra fields given with ``log.info(..., extra={"wm": {...}})`` are merged in.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Literal, TextIO

from wiremesh.observability import tracing

__all__ = ["JsonFormatter", "LogFormat", "PlainFormatter", "configure_logging"]

LogFormat = Literal["plain", "json"]


def _trace_fields() -> dict[str, str]:
    ids = tracing.current_ids()
    if ids is None:
        return {}
    return {"trace_id": ids[0], "span_id": ids[1]}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ms = int(record.msecs)
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node:
            event["node"] = self.node
        event.update(_trace_fields())
        extra = getattr(record, "wm", None)
        if isinstance(extra, dict):
            event.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            event["exc_type"] = record.exc_info[0].__name__
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``LEVEL logger: message``, with ``[trace=…]`` when a span is current."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = tracing.current_ids()
        if ids is None:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [trace={ids[0]}]{newline}{rest}"


def configure_logging(
    log_format: LogFormat | None = None,
    *,
    level: str | None = None,
    node: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send this process's logs to ``stream`` (stderr) in ``log_format``.

    ``log_format`` and ``level`` default to ``WIREMESH_LOG_FORMAT`` and
    ``WIREMESH_LOG_LEVEL`` (``plain``, ``INFO``).
    """
    chosen = log_format or os.environ.get("WIREMESH_LOG_FORMAT", "plain")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node) if chosen == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("WIREMESH_LOG_LEVEL", "INFO")).upper())
    logging.getLogger("grpc").setLevel(logging.ERROR)
