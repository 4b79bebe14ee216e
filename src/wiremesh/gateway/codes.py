"""WebSocket close codes the gateway uses (RFC 6455 §7.4, and wiremesh's own 4000-4999).

:class:`CloseCode` names each code wiremesh gives a meaning to, as websockets'
``websockets.frames.CloseCode`` does for the RFC's; the named sets below say which codes
may travel in a close frame and which ones the JavaScript client reconnects after.
``docs/gateway.md`` (close codes) and ``docs/protocol.md`` §13.4 list them with what a
client should do, checked against this module by ``tests/gateway/test_codes.py``.

A handler that raises a wiremesh error closes its session with its status's code, the
``ws_close_code`` column of :data:`wiremesh.errors.STATUS_TABLE` (4000 + the HTTP status for the
private ones, e.g. 4404); a node may also close with any code of 3000-4999 of its own.
"""

from __future__ import annotations

import enum

__all__ = [
    "ABNORMAL",
    "GOING_AWAY",
    "IDLE_TIMEOUT",
    "INTERNAL_ERROR",
    "MESSAGE_TOO_BIG",
    "NORMAL",
    "POLICY_VIOLATION",
    "RATE_LIMITED",
    "RECONNECT",
    "REFUSED",
    "SENDABLE",
    "SERVICE_RESTART",
    "SLOW_CONSUMER",
    "TOKEN_EXPIRED",
    "UNSUPPORTED_DATA",
    "CloseCode",
    "sendable",
]


class CloseCode(enum.IntEnum):
    """Close codes wiremesh gives a meaning to."""

    #: the node or the client ended the session
    NORMAL = 1000
    #: the gateway shuts down or restarts
    GOING_AWAY = 1001
    #: a text message the service does not accept, or an unknown control message
    UNSUPPORTED_DATA = 1003
    #: never sent: a close frame without a code (what the ASGI server reports then)
    NO_STATUS = 1005
    #: never sent: the connection dropped without a close frame (what a node's hook sees
    #: when its gateway's stream ended)
    ABNORMAL = 1006
    #: a text message or a close reason that is not UTF-8 (the WebSocket layer)
    INVALID_DATA = 1007
    #: generic refusal after the WebSocket opened
    POLICY_VIOLATION = 1008
    #: a message over the size limit
    MESSAGE_TOO_BIG = 1009
    #: a client's code (a server did not negotiate an extension it needs), passed on when
    #: a node closes with it
    MANDATORY_EXTENSION = 1010
    #: the gateway or the node failed (no pong to a keepalive ping, too)
    INTERNAL_ERROR = 1011
    #: the pinned node died or drained: reconnect (to a live node)
    SERVICE_RESTART = 1012
    #: no node could take it now (``Unavailable`` raised by a handler)
    TRY_AGAIN_LATER = 1013
    #: a proxy in front of the gateway got no answer from it
    BAD_GATEWAY = 1014
    #: no message from the browser within the idle timeout
    IDLE_TIMEOUT = 4000
    #: the token expired, or a refresh was invalid
    TOKEN_EXPIRED = 4001
    #: the node refused the session, or a refresh is forbidden by the access rules
    REFUSED = 4003
    #: the browser does not read: its outbound queue overflowed (``max_queued`` messages
    #: or ``max_queued_bytes`` bytes)
    SLOW_CONSUMER = 4008
    #: too many messages: the rate limit
    RATE_LIMITED = 4029


#: the codes of 1000-2999 that a close frame may carry (RFC 6455 §7.4.1): a node's close
#: with any other code of that range reaches its browser as ``INTERNAL_ERROR``
SENDABLE = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_DATA,
        CloseCode.POLICY_VIOLATION,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.MANDATORY_EXTENSION,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.BAD_GATEWAY,
    }
)

#: the codes after which the JavaScript client (``clients/js/wiremesh.js``,
#: ``RECONNECT_CODES``) connects again; ``TOKEN_EXPIRED`` only with a token provider,
#: so it is not here
RECONNECT = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.NO_STATUS,
        CloseCode.ABNORMAL,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.BAD_GATEWAY,
        CloseCode.IDLE_TIMEOUT,
        CloseCode.SLOW_CONSUMER,
        CloseCode.RATE_LIMITED,
    }
)


def sendable(code: int) -> bool:
    """Whether a close frame may carry ``code``: one of :data:`SENDABLE`, or 3000-4999
    (registered and private codes).

    >>> sendable(1000), sendable(4404), sendable(1006), sendable(999)
    (True, True, False, False)
    """
    return code in SENDABLE or 3000 <= code <= 4999


# the members under their names, as the gateway's modules import them
NORMAL = CloseCode.NORMAL
GOING_AWAY = CloseCode.GOING_AWAY
UNSUPPORTED_DATA = CloseCode.UNSUPPORTED_DATA
ABNORMAL = CloseCode.ABNORMAL
POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
INTERNAL_ERROR = CloseCode.INTERNAL_ERROR
SERVICE_RESTART = CloseCode.SERVICE_RESTART
IDLE_TIMEOUT = CloseCode.IDLE_TIMEOUT
TOKEN_EXPIRED = CloseCode.TOKEN_EXPIRED
REFUSED = CloseCode.REFUSED
SLOW_CONSUMER = CloseCode.SLOW_CONSUMER
RATE_LIMITED = CloseCode.RATE_LIMITED
