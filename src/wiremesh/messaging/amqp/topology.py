"""The AMQP topology of a mesh, and how an :class:`Envelope` becomes an AMQP message.

No I/O here: names, queue arguments, message properties and headers, the delay buckets of
retries. ``docs/protocol.md`` (section *AMQP topology*) documents every value below, for
programs that talk to a wiremesh mesh with nothing but an AMQP client.

Per mesh ``M``:

=============================  ========  ==============================================
name                           type      what
=============================  ========  ==============================================
``wm.M.events``                topic     events; routing key = the topic
``wm.M.commands``              direct    commands; routing key = ``service.command``
``wm.M.dead``                  fanout    dead letters, to the queue ``wm.M.dead``
``wm.M.delay``                 headers   retries and delayed messages waiting, to
                                         ``wm.M.delay.<ms>`` queues
=============================  ========  ==============================================

Queues: ``wm.M.event.<service>.<handler>`` (pool and singleton, durable),
``wm.M.event.<service>.<handler>@<node>`` (broadcast, exclusive, auto-delete),
``wm.M.command.<service>.<command>`` (durable; a timer's ticks,
``wm.M.command.<service>.tick:<method>``, single active consumer), ``wm.M.dead``,
``wm.M.delay.<ms>`` and ``wm.M.delayed``.

A delayed message (``emit(..., delay=…)``, its ``wm-due`` header) hops through the delay
queues: each hop waits in the largest bucket no longer than the time left, then expires
into ``wm.M.delayed``, where a node takes it (:func:`next_hop`) and sends it on to the next
bucket, or, once less than the smallest bucket is left, to the exchange and routing key
its ``wm-due-exchange`` and ``wm-due-key`` headers name, after waiting what is left. So it
arrives when due plus a node's turn, never before, whatever its delay (a delay shorter
than the smallest bucket, 50 ms, waits that long).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wiremesh.core.schedule import TICK_PREFIX
from wiremesh.messaging.base import Binding, DeadLetter, Envelope, Kind

__all__ = [
    "ATTEMPT_HEADER",
    "CONTENT_TYPES",
    "DEAD_AMQP_QUEUE_HEADER",
    "DEAD_QUEUE_HEADER",
    "DEAD_REASON_HEADER",
    "DELAY_HEADER",
    "DIED_AT_HEADER",
    "DUE_EXCHANGE_HEADER",
    "DUE_KEY_HEADER",
    "TOPIC_HEADER",
    "Hop",
    "Topology",
    "bucket_within",
    "codec_for",
    "delay_bucket",
    "delayed_hop",
    "envelope_from",
    "headers_for",
    "is_tick_target",
    "next_hop",
    "queue_arguments",
]

#: the delivery attempt, an integer: 1 on the first delivery, +1 per retry
ATTEMPT_HEADER = "wm-attempt"
#: the event topic or command target, so that a message keeps it through retries
TOPIC_HEADER = "wm-topic"
#: the delay bucket of a waiting retry, in milliseconds (a string)
DELAY_HEADER = "wm-delay"
#: why a message was dead-lettered
DEAD_REASON_HEADER = "wm-dead-reason"
#: the queue it died in, as ``wiremesh dlq`` shows it (``service/handler``)
DEAD_QUEUE_HEADER = "wm-dead-queue"
#: the AMQP name of that queue, where ``replay`` puts it back
DEAD_AMQP_QUEUE_HEADER = "wm-dead-amqp-queue"
#: unix time of its death, a float written as a string
DIED_AT_HEADER = "wm-died-at"
#: the reason a retry was asked for (informational)
RETRY_REASON_HEADER = "wm-retry-reason"
#: where a delayed message goes once due: the exchange and the routing key
DUE_EXCHANGE_HEADER = "wm-due-exchange"
DUE_KEY_HEADER = "wm-due-key"

#: headers wiremesh owns: they never travel inside ``Envelope.headers``
OWN_HEADERS = frozenset(
    {
        ATTEMPT_HEADER,
        TOPIC_HEADER,
        DELAY_HEADER,
        DEAD_REASON_HEADER,
        DEAD_QUEUE_HEADER,
        DEAD_AMQP_QUEUE_HEADER,
        DIED_AT_HEADER,
        RETRY_REASON_HEADER,
        DUE_EXCHANGE_HEADER,
        DUE_KEY_HEADER,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)

#: the headers a delayed message carries only between hops
_HOP_HEADERS = frozenset({DELAY_HEADER, DUE_EXCHANGE_HEADER, DUE_KEY_HEADER})

#: codec -> AMQP ``content_type``
CONTENT_TYPES: dict[str, str] = {
    "msgpack": "application/msgpack",
    "json": "application/json",
    "raw": "application/octet-stream",
    "proto": "application/x-protobuf",
}
_CODECS = {v: k for k, v in CONTENT_TYPES.items()}
_CODECS.update({"application/x-msgpack": "msgpack", "application/vnd.msgpack": "msgpack"})

#: retry delays are rounded to the nearest of ``1000 * 2 ** (k / 4)`` ms for a whole ``k``
#: (a geometric ladder through 1 s, 2 s, 4 s ... with a step of about 19 %), at least
#: 50 ms and at most about 12 days
BUCKETS_PER_DOUBLING = 4
MIN_BUCKET_MS = 50
_MAX_K = BUCKETS_PER_DOUBLING * 20


def codec_for(content_type: str | None) -> str:
    """The codec of an incoming ``content_type``. Absent means msgpack (the default);
    ``application/json; charset=utf-8`` is JSON. An unknown type is handed on as it is, so
    that the consumer dead-letters the message as one that does not decode."""
    if not content_type:
        return "msgpack"
    base = content_type.split(";", 1)[0].strip().lower()
    return _CODECS.get(base, content_type)


def bucket_within(seconds: float) -> int | None:
    """The longest delay bucket (ms) no longer than ``seconds``; None when even the
    smallest is longer (the message is due)."""
    ms = seconds * 1000.0
    if ms < MIN_BUCKET_MS:
        return None
    k = min(math.floor(BUCKETS_PER_DOUBLING * math.log2(ms / 1000.0)), _MAX_K)
    bucket = round(1000.0 * 2 ** (k / BUCKETS_PER_DOUBLING))
    while bucket > ms and k > -_MAX_K:  # rounding may have gone past it
        k -= 1
        bucket = round(1000.0 * 2 ** (k / BUCKETS_PER_DOUBLING))
    return max(MIN_BUCKET_MS, bucket)


@dataclass(frozen=True, slots=True)
class Hop:
    """Where a delayed message goes next: an exchange, a routing key and its headers."""

    exchange: str
    routing_key: str
    headers: dict[str, Any]
    #: the delay bucket it waits in (None: it goes where it was sent)
    bucket: int | None
    #: seconds to wait before sending it where it was sent: what is left of its delay,
    #: less than the smallest bucket (so it never arrives early)
    wait: float = 0.0


def next_hop(topology: Topology, headers: Mapping[str, Any], due: float, now: float) -> Hop | None:
    """Where a delayed message with ``headers``, due at ``due``, goes at ``now``: the
    next delay bucket, or the exchange and key it was sent to; None when its
    ``wm-due-exchange`` is not one of the mesh's (dead-letter it)."""
    exchange = _text(headers.get(DUE_EXCHANGE_HEADER, ""))
    key = _text(headers.get(DUE_KEY_HEADER, ""))
    if exchange not in (topology.events, topology.commands) or not key:
        return None
    # RabbitMQ's own headers (x-death of each hop's expiry) stay behind
    own = {k: v for k, v in headers.items() if not k.startswith("x-")}
    bucket = bucket_within(due - now)
    if bucket is None:
        rest = {k: v for k, v in own.items() if k not in _HOP_HEADERS}
        return Hop(exchange, key, rest, None, max(0.0, due - now))
    onward = {**own, DELAY_HEADER: str(bucket)}
    return Hop(topology.delay, topology.delayed, onward, bucket)


def delayed_hop(
    topology: Topology, envelope: Envelope, exchange: str, due: float, now: float
) -> Hop | None:
    """The first hop of ``envelope``, sent to ``exchange`` and due at ``due``; None when it
    is due already (send it as it is). A delay shorter than the smallest bucket waits in
    that bucket: a little late, never early."""
    if due <= now:
        return None
    headers = headers_for(envelope)
    headers[DUE_EXCHANGE_HEADER] = exchange
    headers[DUE_KEY_HEADER] = envelope.topic
    hop = next_hop(topology, headers, due, now)
    if hop is None or hop.bucket is not None:
        return hop
    onward = {**headers, DELAY_HEADER: str(MIN_BUCKET_MS)}
    return Hop(topology.delay, topology.delayed, onward, MIN_BUCKET_MS)


def delay_bucket(delay: float) -> int:
    """The delay queue (its TTL in milliseconds) that stands for ``delay`` seconds."""
    ms = delay * 1000.0
    if ms <= MIN_BUCKET_MS:
        return MIN_BUCKET_MS
    k = min(round(BUCKETS_PER_DOUBLING * math.log2(ms / 1000.0)), _MAX_K)
    return max(MIN_BUCKET_MS, round(1000.0 * 2 ** (k / BUCKETS_PER_DOUBLING)))


@dataclass(frozen=True, slots=True)
class Topology:
    """The names of one mesh's exchanges and queues."""

    mesh: str

    @property
    def events(self) -> str:
        return f"wm.{self.mesh}.events"

    @property
    def commands(self) -> str:
        return f"wm.{self.mesh}.commands"

    @property
    def dead(self) -> str:
        """The dead-letter exchange (fanout) and its one queue: the same name."""
        return f"wm.{self.mesh}.dead"

    @property
    def delay(self) -> str:
        return f"wm.{self.mesh}.delay"

    def delay_queue(self, bucket_ms: int) -> str:
        return f"wm.{self.mesh}.delay.{bucket_ms}"

    @property
    def delayed(self) -> str:
        """The queue delayed messages come back to between hops (see :func:`next_hop`)."""
        return f"wm.{self.mesh}.delayed"

    def command_queue(self, target: str) -> str:
        """The queue of the command ``service.command``."""
        return f"wm.{self.mesh}.command.{target}"

    def queue(self, binding: Binding) -> str:
        """The AMQP queue ``binding`` consumes from."""
        if binding.kind == "command":
            return self.command_queue(binding.patterns[0])
        name = f"wm.{self.mesh}.event.{binding.service}.{binding.handler}"
        return f"{name}@{binding.node_id}" if binding.delivery == "broadcast" else name

    def display_name(self, amqp_queue: str) -> str:
        """``service/handler`` (``service/handler@node``) for an AMQP queue of this mesh;
        for a command queue ``service/command``; any other name as it is."""
        for prefix in (f"wm.{self.mesh}.event.", f"wm.{self.mesh}.command."):
            if amqp_queue.startswith(prefix):
                service, _, rest = amqp_queue[len(prefix) :].partition(".")
                return f"{service}/{rest}" if rest else amqp_queue
        return amqp_queue


def queue_arguments(
    topology: Topology, binding: Binding | None, *, quorum: bool, target: str | None = None
) -> dict[str, Any]:
    """The ``x-`` arguments of a consumer queue (``binding``; ``None``: the queue of the
    command ``target``, declared by its sender). A singleton event handler's queue, and a
    timer's ticks (``<service>.tick:<method>``), have one active consumer at a time."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": topology.dead}
    broadcast = binding is not None and binding.delivery == "broadcast"
    if quorum and not broadcast:  # exclusive queues cannot be quorum queues
        arguments["x-queue-type"] = "quorum"
    if binding is not None and binding.kind == "command":
        target = binding.patterns[0]
    if (binding is not None and binding.kind == "event" and binding.delivery == "singleton") or (
        target is not None and is_tick_target(target)
    ):
        arguments["x-single-active-consumer"] = True
    return arguments


def is_tick_target(target: str) -> bool:
    """Whether the command ``target`` carries a timer's ticks (``<service>.tick:<method>``)."""
    return target.partition(".")[2].startswith(TICK_PREFIX)


def delay_queue_arguments(bucket_ms: int, *, quorum: bool) -> dict[str, Any]:
    """A delay queue: its messages expire after ``bucket_ms`` and are then dead-lettered
    to the default exchange under the routing key they were published with, which is
    the name of the queue they wait to go back to."""
    arguments: dict[str, Any] = {
        "x-message-ttl": bucket_ms,
        "x-dead-letter-exchange": "",
    }
    if quorum:
        arguments["x-queue-type"] = "quorum"
    return arguments


def headers_for(envelope: Envelope) -> dict[str, Any]:
    """The AMQP headers of ``envelope``: its own headers, then wiremesh's."""
    headers: dict[str, Any] = dict(envelope.headers)
    headers[ATTEMPT_HEADER] = envelope.attempt
    headers[TOPIC_HEADER] = envelope.topic
    return headers


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


#: the largest attempt number read from a header: a foreign publisher's digits must still
#: fit in the AMQP integer wiremesh writes back on the retry or dead-letter copy
MAX_ATTEMPT = 2**31 - 1


def _attempt(value: Any) -> int:
    try:
        attempt = int(_text(value)) if not isinstance(value, int) else value
    except ValueError:
        return 1
    return min(max(attempt, 1), MAX_ATTEMPT)


def envelope_from(
    *,
    body: bytes,
    headers: Mapping[str, Any] | None,
    message_id: str | None,
    message_type: str | None,
    content_type: str | None,
    routing_key: str | None,
    default_kind: Kind,
    exchange: str = "",
) -> Envelope:
    """The envelope an incoming AMQP message stands for.

    A message from a program that knows nothing of wiremesh needs only a body and, for
    anything but msgpack, a ``content_type``: the topic comes from its routing key, the
    kind from the exchange it came through, a missing ``message_id`` is made up (such a
    message cannot be recognised as a duplicate) and ``wm-attempt`` starts at 1.

    ``wm-attempt`` is read only from a message that came through the default exchange
    (``exchange`` ``""``): a retry back from its delay queue, or a replayed dead letter.
    A message published to the mesh's exchanges is a first delivery, whatever its
    headers say, so that a publisher cannot shrink a handler's retry budget.
    """
    headers = headers or {}
    kind: Kind = message_type if message_type in ("event", "command") else default_kind  # type: ignore[assignment]
    topic_value = headers.get(TOPIC_HEADER)
    topic = _text(topic_value) if topic_value is not None else (routing_key or "")
    return Envelope(
        id=message_id or uuid.uuid4().hex,
        kind=kind,
        topic=topic,
        body=body,
        codec=codec_for(content_type),
        headers={k: _text(v) for k, v in headers.items() if k not in OWN_HEADERS},
        attempt=_attempt(headers.get(ATTEMPT_HEADER, 1)) if exchange == "" else 1,
    )


def dead_letter_from(
    topology: Topology, envelope: Envelope, headers: Mapping[str, Any] | None
) -> DeadLetter:
    """The :class:`DeadLetter` a message of the dead-letter queue stands for: one that
    wiremesh put there (with its ``wm-dead-*`` headers) or one the broker dead-lettered
    by itself (rejected, expired, over a delivery limit: its ``x-death`` header)."""
    headers = headers or {}
    reason = headers.get(DEAD_REASON_HEADER)
    queue = headers.get(DEAD_QUEUE_HEADER)
    died_at = headers.get(DIED_AT_HEADER)
    if reason is None:
        death = _first_death(headers)
        why = _text(death.get("reason", "unknown")) if death else "unknown"
        reason = f"dead-lettered by the broker: {why}"
        if queue is None and death and death.get("queue") is not None:
            queue = topology.display_name(_text(death["queue"]))
        if died_at is None and death and death.get("time") is not None:
            died_at = _unix(death["time"])
    return DeadLetter(
        envelope=envelope,
        reason=_text(reason),
        queue=_text(queue) if queue is not None else "",
        died_at=_float(died_at),
    )


def amqp_queue_of_dead(headers: Mapping[str, Any] | None) -> str | None:
    """The AMQP queue a dead letter goes back to on replay, if known."""
    headers = headers or {}
    queue = headers.get(DEAD_AMQP_QUEUE_HEADER)
    if queue is not None:
        return _text(queue)
    death = _first_death(headers)
    if death and death.get("queue") is not None:
        return _text(death["queue"])
    return None


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list | tuple) and deaths and isinstance(deaths[0], Mapping):
        first: Mapping[str, Any] = deaths[0]
        return first
    return None


def _unix(value: Any) -> float:
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return _float(value)


def _float(value: Any) -> float:
    if value is None:
        return 0.0
    try:
        return float(_text(value) if not isinstance(value, int | float) else value)
    except ValueError:
        return 0.0


def now() -> float:
    return time.time()
