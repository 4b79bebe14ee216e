"""Sending durable messages: ``ctx.emit`` and ``ctx.send`` straight to the broker.

:func:`make_envelope` checks the topic or target and encodes the payload; an
:class:`Outbound` hands envelopes to the broker and returns once they are durably
accepted. A node attaches its outbound to its caller (:func:`attach`), which is how a
:class:`~wiremesh.Context` made by any transport finds it (:func:`outbound_of`).
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from wiremesh.core.codec import CodecName, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import PUBLISH_TIMEOUT
from wiremesh.core.topics import check_topic
from wiremesh.errors import InvalidPayload
from wiremesh.messaging.base import (
    HEADER_DUE,
    HEADER_SENDER,
    HEADER_SENT_AT,
    Broker,
    Envelope,
    Kind,
    due_time,
    new_message_id,
)
from wiremesh.observability import tracing

__all__ = ["Outbound", "attach", "check_command", "detach", "make_envelope", "outbound_of"]

#: (``tick:`` before the command: a timer's ticks, see :mod:`wiremesh.messaging.timers`)
_COMMAND = re.compile(r"^[a-z][a-z0-9_-]{0,62}\.(?:tick:)?[A-Za-z_][A-Za-z0-9_]*$")
#: (kind, topic) pairs found valid already, not checked again
_checked: set[tuple[str, str]] = set()


def check_command(target: str) -> str:
    """``target`` if it names a command (``service.command``), else :class:`InvalidPayload`."""
    if not isinstance(target, str) or not _COMMAND.fullmatch(target):
        raise InvalidPayload(f"bad command target {target!r}: write 'service.command'")
    return target


def make_envelope(
    kind: Kind,
    topic: str,
    payload: Any,
    codec: CodecName,
    headers: Mapping[str, str] | None,
    *,
    sender: str,
    delay: float | None = None,
    at: float | datetime | None = None,
) -> Envelope:
    """A new envelope for ``payload`` (a delayed message with ``delay`` or ``at``: see
    :func:`~wiremesh.messaging.base.due_time`); raises :class:`InvalidPayload` for a bad
    topic, target, codec, payload or due time."""
    if not isinstance(topic, str) or (kind, topic) not in _checked:
        if kind == "command":
            check_command(topic)
        else:
            check_topic(topic)
        if len(_checked) >= 4096:
            _checked.clear()
        _checked.add((kind, topic))
    body = encode(payload, codec)
    now = time.time()
    due = due_time(delay, at, now=now)
    head = {**(headers or {}), HEADER_SENDER: sender, HEADER_SENT_AT: repr(now)}
    if due is not None:
        head[HEADER_DUE] = repr(due)
    if tracing.enabled():
        # the trace goes on with the message, through the outbox and the broker if need be
        span = tracing.client_span(
            f"{'emit' if kind == 'event' else 'send'} {topic}", size=len(body), kind="producer"
        )
        if span is not None:
            head.update(span.carrier)
            span.end()
    return Envelope(new_message_id(), kind, topic, body, codec, head)


class Outbound:
    """Emits events and sends commands through ``broker``, as ``sender``."""

    def __init__(
        self, broker: Broker, *, sender: str, default_timeout: float = PUBLISH_TIMEOUT
    ) -> None:
        self.broker = broker
        self.sender = sender
        self.default_timeout = default_timeout

    async def emit(
        self,
        topic: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        envelope = make_envelope(
            "event", topic, payload, codec, headers, sender=self.sender, delay=delay, at=at
        )
        await self.broker.publish([envelope], timeout=self._timeout(timeout, deadline))
        return envelope.id

    async def send(
        self,
        target: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: Deadline | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        envelope = make_envelope(
            "command", target, payload, codec, headers, sender=self.sender, delay=delay, at=at
        )
        await self.broker.publish([envelope], timeout=self._timeout(timeout, deadline))
        return envelope.id

    def _timeout(self, timeout: float | None, deadline: Deadline | None) -> float:
        seconds = self.default_timeout if timeout is None else timeout
        if deadline is not None:
            seconds = min(seconds, deadline.remaining(now=time.monotonic()))
        return max(seconds, 0.001)


_attached: weakref.WeakKeyDictionary[object, Outbound] = weakref.WeakKeyDictionary()


def attach(caller: object, outbound: Outbound) -> None:
    """Make ``outbound`` the one every context calling through ``caller`` emits with."""
    _attached[caller] = outbound


def detach(caller: object) -> None:
    _attached.pop(caller, None)


def outbound_of(caller: object) -> Outbound | None:
    try:
        return _attached.get(caller)
    except TypeError:  # a caller that cannot be weakly referenced has none
        return None
