"""The rules of one browser's WebSocket session at the gateway, with no I/O.

Everything that decides when a browser's session must close lives in this file: the
message rate, the message size, the control channel (token refresh), the token's expiry,
the idle timeout, the keepalive ping, and the backlog of messages waiting for a browser
that does not read. :class:`SessionRules` holds one session's state and takes *events*
(plain values, the time among them: it has no clock of its own); each method returns the
*action* the caller must perform. The gateway's ``Connection``
(``wiremesh/gateway/connection.py``) feeds it and performs what it says.

Events, and the actions they may return:

- a binary message from the browser, :meth:`~SessionRules.received`: ACCEPT or a Close;
- a text message, :meth:`~SessionRules.received_text`: ACCEPT, a :class:`Refresh` or a
  Close; the token of a refresh proved someone, :meth:`~SessionRules.token_refreshed`:
  ACCEPT or a Close; it proved nothing, :meth:`~SessionRules.token_refused`: a Close;
- a message to wait for a browser that does not read, :meth:`~SessionRules.queued`:
  ACCEPT or a Close; one of them written, :meth:`~SessionRules.dequeued`; none left,
  :meth:`~SessionRules.drained`;
- the gateway's shared timer, :meth:`~SessionRules.due`: ACCEPT, an :class:`Expiring` or
  a Close; and for the keepalive, :meth:`~SessionRules.keepalive`: ACCEPT, PING or a Close.

``ACCEPT`` (nothing to do, go on) and ``PING`` are shared constants, and every
:class:`Close` a rule decides is a constant of this module too: the events of the hot path
(a message in, a message queued) allocate nothing. After a :class:`Close`, the session is
over: feed it no more events.

Two clocks: ``now`` is monotonic seconds (the event loop's time: message times, the idle
timeout, pings), ``wall`` is seconds since the epoch (a JWT's ``exp``)::

    >>> from wiremesh.core.bucket import TokenBucket
    >>> limits = SessionLimits(max_queued=2, max_queued_bytes=100, idle_timeout=60.0,
    ...                        refresh_before=30.0, ping_interval=20.0, ping_timeout=20.0)
    >>> rules = SessionRules(limits, principal="ada", expires_at=1000.0, max_bytes=10,
    ...                      text=False, bucket=TokenBucket(1.0, 2.0, now=0.0), now=0.0)
    >>> rules.received(10, now=0.0)
    <Accept.ACCEPT: 'accept'>
    >>> rules.received(11, now=0.0)
    Close(code=1009, reason='message too big')
    >>> rules.received(1, now=0.0)
    Close(code=4029, reason='too many messages')
    >>> rules.due(now=1.0, wall=980.0)
    Expiring(expires_at=1000.0)
    >>> rules.due(now=2.0, wall=1000.0)
    Close(code=4001, reason='token expired')

The close codes are those of ``wiremesh.gateway.codes.CloseCode`` (RFC 6455 §7.4 and
wiremesh's own 4000-4999, documented in ``docs/gateway.md``); ``core/`` cannot import the
gateway, so the codes a rule decides are repeated below, and
``tests/core/test_socket_session.py`` keeps them equal to the enum's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from wiremesh.core import control
from wiremesh.core.bucket import TokenBucket

__all__ = [
    "ACCEPT",
    "CHANNEL_COMMANDS",
    "IDLE",
    "INVALID_TOKEN",
    "NO_PONG",
    "NO_TOKEN",
    "OTHER_PRINCIPAL",
    "PING",
    "RATE",
    "REFRESH_FORBIDDEN",
    "SLOW_CONSUMER",
    "TEXT_REFUSED",
    "TOKEN_EXPIRED",
    "TOO_BIG",
    "UNKNOWN_CONTROL",
    "Accept",
    "ChannelCommand",
    "Close",
    "Expiring",
    "Ping",
    "Refresh",
    "SessionLimits",
    "SessionRules",
]


# ---------------------------------------------------------------------------- actions


class Accept(enum.Enum):
    """The event breaks no rule: go on (forward the message, queue it, keep the session)."""

    ACCEPT = "accept"


class Ping(enum.Enum):
    """Send the browser a keepalive ping now."""

    PING = "ping"


ACCEPT: Final = Accept.ACCEPT
PING: Final = Ping.PING


@dataclass(frozen=True, slots=True)
class Close:
    """Close the session's WebSocket with ``code`` and ``reason`` (its close frame's)."""

    code: int
    reason: str


#: the control messages of channels (``docs/protocol.md``, "Channels")
CHANNEL_COMMANDS: Final = frozenset({"subscribe", "unsubscribe", "publish", "presence"})


@dataclass(frozen=True, slots=True)
class ChannelCommand:
    """The browser sent a channel's control message (one of :data:`CHANNEL_COMMANDS`):
    the gateway's channels answer it."""

    command: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refresh:
    """The browser sent a new token (``{"wm": "refresh", "token": ...}``): check it, then
    report the outcome with :meth:`SessionRules.token_refreshed` or
    :meth:`SessionRules.token_refused`."""

    token: str


@dataclass(frozen=True, slots=True)
class Expiring:
    """Tell the browser its token expires at ``expires_at`` (``{"wm": "expiring"}``), so
    that it refreshes it in time."""

    expires_at: float


# the close codes a rule decides (gateway/codes.py's CloseCode names them all)
_UNSUPPORTED_DATA = 1003
_MESSAGE_TOO_BIG = 1009
_INTERNAL_ERROR = 1011
_IDLE_TIMEOUT = 4000
_TOKEN_EXPIRED = 4001
_REFUSED = 4003
_SLOW_CONSUMER = 4008
_RATE_LIMITED = 4029

#: more messages than the rate allows
RATE: Final = Close(_RATE_LIMITED, "too many messages")
#: a message over the session's size limit
TOO_BIG: Final = Close(_MESSAGE_TOO_BIG, "message too big")
#: a text message to a service that takes none
TEXT_REFUSED: Final = Close(_UNSUPPORTED_DATA, "text messages are not accepted")
#: a control message other than a refresh
UNKNOWN_CONTROL: Final = Close(_UNSUPPORTED_DATA, "unknown control message")
#: a refresh without a token
NO_TOKEN: Final = Close(_TOKEN_EXPIRED, "refresh without a token")
#: a refresh whose token proves nothing
INVALID_TOKEN: Final = Close(_TOKEN_EXPIRED, "invalid token")
#: a refresh whose token is another principal's
OTHER_PRINCIPAL: Final = Close(_TOKEN_EXPIRED, "the token is for another principal")
#: a refresh whose token the service's access rules refuse
REFRESH_FORBIDDEN: Final = Close(_REFUSED, "forbidden")
#: the token expired before a refresh came
TOKEN_EXPIRED: Final = Close(_TOKEN_EXPIRED, "token expired")
#: no message from the browser within the idle timeout
IDLE: Final = Close(_IDLE_TIMEOUT, "idle timeout")
#: the browser does not read: its queue is full
SLOW_CONSUMER: Final = Close(_SLOW_CONSUMER, "slow consumer")
#: no pong to a keepalive ping in time: the connection is dead (the adapter drops it)
NO_PONG: Final = Close(_INTERNAL_ERROR, "keepalive ping timeout")


# ---------------------------------------------------------------------------- the rules


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The limits every session of a gateway shares (``[gateway.limits]`` and
    ``[gateway] refresh_before``, where their defaults are defined).

    ``max_queued`` messages or ``max_queued_bytes`` bytes may wait for a browser that does
    not read; ``idle_timeout`` seconds without a message close a session (0: never);
    ``refresh_before`` seconds before its token expires, the browser is told; every
    ``ping_interval`` seconds without a message (0: never) a ping goes out, and one not
    answered within ``ping_timeout`` seconds ends the connection.
    """

    max_queued: int
    max_queued_bytes: int
    idle_timeout: float
    refresh_before: float
    ping_interval: float
    ping_timeout: float


class SessionRules:
    """One session's rules and the state they need: its rate ``bucket``, ``max_bytes`` per
    message, whether its service takes ``text`` messages, its ``principal`` and when its
    token ``expires_at`` (wall seconds); ``now`` is when it opened (monotonic seconds)."""

    __slots__ = (
        "bucket",
        "expires_at",
        "last_seen",
        "limits",
        "max_bytes",
        "principal",
        "queued_bytes",
        "queued_messages",
        "text",
        "warned",
    )

    def __init__(
        self,
        limits: SessionLimits,
        *,
        principal: str,
        expires_at: float,
        max_bytes: int,
        text: bool,
        bucket: TokenBucket,
        now: float,
    ) -> None:
        self.limits = limits
        self.principal = principal
        #: when the session's token expires (wall seconds); a refresh moves it
        self.expires_at = expires_at
        self.max_bytes = max_bytes
        self.text = text
        self.bucket = bucket
        #: when the browser last sent a message (monotonic seconds)
        self.last_seen = now
        #: whether the browser was told that its token expires soon
        self.warned = False
        #: messages, and their bytes (characters for a text message), waiting for the
        #: browser to read
        self.queued_messages = 0
        self.queued_bytes = 0

    # ------------------------------------------------------------------ from the browser

    def received(self, size: int, now: float) -> Accept | Close:
        """A binary message of ``size`` bytes arrived at ``now``: ACCEPT (forward it),
        :data:`RATE` or :data:`TOO_BIG`. A message exactly ``max_bytes`` long fits."""
        self.last_seen = now
        if not self.bucket.take(now):
            return RATE
        if size > self.max_bytes:
            return TOO_BIG
        return ACCEPT

    def received_text(
        self, text: str, size: int, now: float
    ) -> Accept | Refresh | ChannelCommand | Close:
        """A text message arrived at ``now``, ``size`` bytes in UTF-8. A control message
        (``{"wm": ...}``, see :mod:`wiremesh.core.control`) is the gateway's: a
        :class:`Refresh`, or :data:`NO_TOKEN`, :data:`UNKNOWN_CONTROL`. Any other text is
        the service's: ACCEPT (forward it as text), :data:`TEXT_REFUSED` when the service
        takes none, :data:`TOO_BIG`. The rate comes first (:data:`RATE`); a control
        message is not held to the size limit."""
        self.last_seen = now
        if not self.bucket.take(now):
            return RATE
        command = control.parse(text)
        if command is not None:
            kind = command.get("wm")
            if isinstance(kind, str) and kind in CHANNEL_COMMANDS:
                return ChannelCommand(command)
            if kind != "refresh":
                return UNKNOWN_CONTROL
            token = command.get("token")
            if not isinstance(token, str) or not token:
                return NO_TOKEN
            return Refresh(token)
        if not self.text:
            return TEXT_REFUSED
        if size > self.max_bytes:
            return TOO_BIG
        return ACCEPT

    def token_refreshed(
        self, principal: str, expires_at: float, *, allowed: bool
    ) -> Accept | Close:
        """The token of a :class:`Refresh` proved ``principal``, valid until ``expires_at``
        (wall seconds), and ``allowed`` says whether the service's access rules let it in:
        ACCEPT (the session now expires at ``expires_at``, even if that is sooner than
        before, and the browser is to be told), :data:`OTHER_PRINCIPAL` or
        :data:`REFRESH_FORBIDDEN`."""
        if principal != self.principal:
            return OTHER_PRINCIPAL
        if not allowed:
            return REFRESH_FORBIDDEN
        self.expires_at = expires_at
        self.warned = False
        return ACCEPT

    def token_refused(self) -> Close:
        """The token of a :class:`Refresh` proved nothing (bad, expired, not yet valid)."""
        return INVALID_TOKEN

    # ------------------------------------------------------------------ to the browser

    def queued(self, size: int) -> Accept | Close:
        """A message of ``size`` bytes is to wait for the browser, which does not read:
        ACCEPT (queue it), or :data:`SLOW_CONSUMER` when ``max_queued`` messages already
        wait, or when it would take the queue past ``max_queued_bytes`` (a message alone
        in the queue always fits, whatever its size)."""
        limits = self.limits
        messages = self.queued_messages
        total = self.queued_bytes + size
        if messages >= limits.max_queued or (total > limits.max_queued_bytes and messages):
            return SLOW_CONSUMER
        self.queued_messages = messages + 1
        self.queued_bytes = total
        return ACCEPT

    def dequeued(self, size: int) -> None:
        """A queued message of ``size`` bytes was written."""
        self.queued_messages -= 1
        self.queued_bytes -= size

    def drained(self) -> None:
        """Nothing waits any more (the queue was written, or dropped)."""
        self.queued_messages = 0
        self.queued_bytes = 0

    # ------------------------------------------------------------------ the timer

    def due(self, now: float, wall: float) -> Accept | Expiring | Close:
        """The shared timer ran at ``now`` (monotonic) and ``wall`` (epoch seconds):
        :data:`TOKEN_EXPIRED` from the token's expiry on, :data:`IDLE` past the idle
        timeout since the last message, once an :class:`Expiring` within
        ``refresh_before`` of the expiry (again after each refresh), else ACCEPT."""
        if wall >= self.expires_at:
            return TOKEN_EXPIRED
        idle = self.limits.idle_timeout
        if idle and now - self.last_seen > idle:
            return IDLE
        if not self.warned and wall >= self.expires_at - self.limits.refresh_before:
            self.warned = True
            return Expiring(self.expires_at)
        return ACCEPT

    def keepalive(
        self, now: float, ping_pending_since: float, last_ping_sent: float
    ) -> Accept | Ping | Close:
        """The shared timer ran at ``now``; the connection's last ping still unanswered was
        sent at ``ping_pending_since`` (0: none is) and its last ping at
        ``last_ping_sent``: :data:`NO_PONG` when the pending one is older than
        ``ping_timeout``, PING when neither a message nor a ping came for
        ``ping_interval`` seconds, else ACCEPT (always, with ``ping_interval`` 0)."""
        limits = self.limits
        if not limits.ping_interval:
            return ACCEPT
        if ping_pending_since:
            if now - ping_pending_since > limits.ping_timeout:
                return NO_PONG
            return ACCEPT
        if now - max(self.last_seen, last_ping_sent) >= limits.ping_interval:
            return PING
        return ACCEPT
