"""The seam between the messaging core and its broker backends.

A backend (:mod:`wiremesh.messaging.embedded`, :mod:`wiremesh.messaging.amqp`) carries
:class:`Envelope` values durably: it accepts them (:meth:`Broker.publish`), hands them to
the handlers bound to them (:meth:`Broker.consume`) and keeps each one until the consumer
says :meth:`Received.ack`, :meth:`Received.retry` or :meth:`Received.dead`. Every decision
(decode, validate, run the handler, retry or dead-letter, drop a duplicate) is the core's
(:mod:`wiremesh.messaging.consumer`, :mod:`wiremesh.core.delivery`); a backend only carries
it out. This module imports no backend: :mod:`wiremesh.messaging.backends` opens the one
an address names.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from wiremesh.core.delivery import Delivery
from wiremesh.errors import InvalidPayload

__all__ = [
    "DEAD_LETTERS_LIMIT",
    "HEADER_DUE",
    "HEADER_SENDER",
    "HEADER_SENT_AT",
    "HEADER_TICK",
    "HEADER_TICK_RAN",
    "HEADER_TRACEPARENT",
    "Binding",
    "Broker",
    "DeadLetter",
    "Delivery",
    "Envelope",
    "Kind",
    "OnReceived",
    "Received",
    "Subscription",
    "due_from_header",
    "due_time",
    "new_message_id",
]

Kind = Literal["event", "command"]
#: how many dead letters a listing returns unless told
DEAD_LETTERS_LIMIT = 100

HEADER_TRACEPARENT = "traceparent"
#: the sending node id (or ``client`` for a program outside the mesh)
HEADER_SENDER = "wm-sender"
#: unix time of the emit, a float written as a string
HEADER_SENT_AT = "wm-sent-at"
#: unix time a delayed message is due, a float written as a string: the broker hands it to
#: no consumer before (``emit(..., delay=…)``, ``send(..., at=…)``)
HEADER_DUE = "wm-due"
#: the tick a timer's tick command is for, ISO 8601 with its UTC offset
#: (:mod:`wiremesh.messaging.timers`)
HEADER_TICK = "wm-tick"
#: on a timer's tick command: this tick ran (a marker, see :mod:`wiremesh.messaging.timers`)
HEADER_TICK_RAN = "wm-tick-ran"
#: the longest delay a message may have: a year
MAX_DELAY = 366 * 86400.0


def due_time(delay: float | None, at: float | datetime | None, *, now: float) -> float | None:
    """When a message sent at ``now`` (unix time) is due: ``delay`` seconds later, or
    ``at`` (unix time, or an aware datetime); None for neither. Raises
    :class:`~wiremesh.errors.InvalidPayload` for both, a negative or too long delay, or
    a naive datetime. A time that has passed is due at once."""
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise InvalidPayload("give a message delay= or at=, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise InvalidPayload(f"delay= is seconds, 0 or more, not {delay!r}")
        due = now + float(delay)
    elif isinstance(at, datetime):
        if at.tzinfo is None:
            raise InvalidPayload(
                "at= needs an aware datetime (datetime.now(UTC) + ..., not a naive one)"
            )
        due = at.timestamp()
    elif isinstance(at, int | float) and not isinstance(at, bool):
        due = float(at)
    else:
        raise InvalidPayload(f"at= is a unix time or an aware datetime, not {at!r}")
    if not math.isfinite(due) or due - now > MAX_DELAY:
        raise InvalidPayload(f"a message may be delayed a year at most, not until {due!r}")
    return due if due > now else None


def due_from_header(text: str | None) -> float | None:
    """The unix time a message whose ``wm-due`` header is ``text`` is due (None: no
    header, or one that is no number: at once)."""
    if not text:
        return None
    try:
        due = float(text)
    except ValueError:
        return None
    return due if math.isfinite(due) else None


#: random bits of a message id, from a generator seeded by the OS (again in a forked child,
#: which must not repeat its parent's ids), instead of a system call per id as
#: ``uuid.uuid4()`` makes
_id_random = random.Random()
os.register_at_fork(after_in_child=_id_random.seed)
#: the bits a version-4 uuid fixes: version (4) and variant (RFC 4122)
_UUID4_KEEP = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
_UUID4_SET = 0x00000000_0000_4000_8000_000000000000


def new_message_id() -> str:
    """A fresh message id: a random uuid4 as 32 lowercase hex digits."""
    return "%032x" % (_id_random.getrandbits(128) & _UUID4_KEEP | _UUID4_SET)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as every backend carries it."""

    #: message id, uuid4 hex; the inbox drops duplicates by it
    id: str
    kind: Kind
    #: event topic (``orders.created``) or command target (``billing.charge``)
    topic: str
    #: the payload encoded with ``codec``
    body: bytes
    #: ``msgpack`` (default), ``json``, ``raw`` or ``proto``
    codec: str
    headers: Mapping[str, str] = field(default_factory=dict)
    #: 1 on the first delivery, +1 per retry
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Binding:
    """What one handler consumes."""

    #: the consuming service
    service: str
    #: the handler's name (its method name), unique within the service
    handler: str
    kind: Kind
    #: event topic patterns (``*`` one word, ``#`` any words: :mod:`wiremesh.core.topics`);
    #: for a command, ``("<service>.<command>",)``
    patterns: tuple[str, ...]
    #: commands are always ``pool``
    delivery: Delivery
    #: the consuming node (for broadcast queues and the singleton)
    node_id: str
    #: most unacknowledged messages handed to this handler at once
    prefetch: int

    @property
    def queue(self) -> str:
        """The queue's name as the dead letters and ``wiremesh dlq`` show it:
        ``service/handler`` (``service/handler@node`` for broadcast; ``service/command``
        for a command, whichever method handles it)."""
        if self.kind == "command":
            service, _, command = self.patterns[0].partition(".")
            return f"{service}/{command}"
        base = f"{self.service}/{self.handler}"
        return f"{base}@{self.node_id}" if self.delivery == "broadcast" else base


class Received(Protocol):
    """One message handed to a consumer; exactly one of the three settles it."""

    @property
    def envelope(self) -> Envelope: ...

    async def ack(self) -> None:
        """The handler succeeded (or the message was a duplicate): forget it."""

    async def retry(self, delay: float, reason: str) -> None:
        """Deliver it again after ``delay`` seconds, with ``attempt + 1``."""

    async def dead(self, reason: str) -> None:
        """Move it to the dead letters, with the reason."""


#: what a consumer gives :meth:`Broker.consume`: called with each message it receives
OnReceived = Callable[[Received], Awaitable[None]]


class Subscription(Protocol):
    async def cancel(self) -> None:
        """Stop receiving; unacknowledged messages go back to the broker."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    envelope: Envelope
    reason: str
    #: where it was consumed from (``service/handler``)
    queue: str
    #: unix time
    died_at: float


class Broker(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, envelopes: Sequence[Envelope], *, timeout: float) -> None:
        """Return once every envelope is durably accepted, never waiting for a consumer.

        Raises :class:`wiremesh.errors.BrokerUnavailable` when it cannot within
        ``timeout``; nothing is half sent: either all are accepted or the caller may send
        all again (their ids make a resend harmless).
        """

    async def consume(self, binding: Binding, handler: OnReceived) -> Subscription:
        """Call ``handler`` for each message bound to ``binding``, at most
        ``binding.prefetch`` at once, keeping each message until it is settled.
        Reconnects by itself."""

    async def dead_letters(self, *, limit: int = DEAD_LETTERS_LIMIT) -> list[DeadLetter]: ...

    async def dead_letter(self, message_id: str) -> DeadLetter | None: ...

    async def replay(self, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on their queue with ``attempt`` reset; ``None`` = all.
        Returns how many."""

    async def purge(self, message_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters; ``None`` = all. Returns how many."""
