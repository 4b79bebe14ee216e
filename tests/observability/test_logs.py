"""Structured logs: one JSON object per line, with the trace ids of the current span, and
no payload in them."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from wiremesh import Context, Service, rpc
from wiremesh.observability import tracing
from wiremesh.observability.logs import LogFormat, configure_logging
from wiremesh.testing import TestMesh

SECRET = "card-4111-1111-never-logged"


class Pay(Service):
    name = "pay"

    @rpc
    async def charge(self, ctx: Context, card: str) -> None:
        logging.getLogger("pay").info("charging a card")
        raise ValueError("the card was declined")


@contextlib.contextmanager
def logging_to(log_format: LogFormat) -> Iterator[io.StringIO]:
    """The process's logs in ``log_format`` into a string, restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(log_format, level="info", node="pay-test", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with logging_to("json") as stream:
        yield stream


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_json_lines_carry_trace_ids_and_never_the_payload(captured: io.StringIO) -> None:
    tracing.use_provider(TracerProvider())
    try:
        async with TestMesh(Pay) as mesh:
            with pytest.raises(Exception, match="declined"):
                await mesh.call("pay.charge", SECRET)
    finally:
        tracing.use_provider(None)
    logged = events(captured)
    mine = [e for e in logged if e["logger"] == "pay"]
    assert len(mine) == 1
    line = mine[0]
    assert line["level"] == "info"
    assert line["message"] == "charging a card"
    assert line["node"] == "pay-test"
    assert isinstance(line["trace_id"], str) and len(line["trace_id"]) == 32
    assert isinstance(line["span_id"], str) and len(line["span_id"]) == 16
    raised = [e for e in logged if e.get("exc_type") == "ValueError"]
    assert raised and raised[0]["level"] == "error"
    assert raised[0]["trace_id"] == line["trace_id"]  # the same call's trace
    assert SECRET not in captured.getvalue()


async def test_without_tracing_lines_have_no_trace_ids(captured: io.StringIO) -> None:
    logging.getLogger("wiremesh.test").warning("plain event %d", 7)
    (line,) = [e for e in events(captured) if e["logger"] == "wiremesh.test"]
    assert line["message"] == "plain event 7"
    assert line["level"] == "warning"
    assert "trace_id" not in line
    assert str(line["ts"]).endswith("Z")


def test_plain_format_is_one_line_per_event() -> None:
    with logging_to("plain") as stream:
        logging.getLogger("wiremesh.test").info("hello")
    assert stream.getvalue() == "INFO wiremesh.test: hello\n"
