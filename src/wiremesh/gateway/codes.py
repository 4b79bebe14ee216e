"""WebSocket close codes the gateway uses (RFC 6455 7.4, and wiremesh's own 4000-4999).

``docs/protocol.md`` lists them with what a client should do; the JavaScript client
reconnects on the ones marked so there.
"""

from __future__ import annotations

__all__ = [
    "ABNORMAL",
    "GOING_AWAY",
    "IDLE_TIMEOUT",
    "INTERNAL_ERROR",
    "MESSAGE_TOO_BIG",
    "NORMAL",
    "POLICY_VIOLATION",
    "RATE_LIMITED",
    "REFUSED",
    "SERVICE_RESTART",
    "SLOW_CONSUMER",
    "TOKEN_EXPIRED",
    "UNSUPPORTED_DATA",
]

#: the node or the client ended the session
NORMAL = 1000
#: the gateway shuts down or restarts
GOING_AWAY = 1001
#: a text message the service does not accept, or an unknown control message
UNSUPPORTED_DATA = 1003
#: never sent: the connection dropped without a close frame (what a node's hook sees
#: when its gateway's stream ended)
ABNORMAL = 1006
#: generic refusal after the WebSocket opened
POLICY_VIOLATION = 1008
#: a message over the size limit
MESSAGE_TOO_BIG = 1009
#: the gateway or the node failed
INTERNAL_ERROR = 1011
#: the pinned node died or drained: reconnect (to a live node)
SERVICE_RESTART = 1012
#: no message from the browser within the idle timeout
IDLE_TIMEOUT = 4000
#: the token expired, or a refresh was invalid
TOKEN_EXPIRED = 4001
#: the node refused the session
REFUSED = 4003
#: the browser does not read: its outbound queue overflowed (``max_queued`` messages or
#: ``max_queued_bytes`` bytes)
SLOW_CONSUMER = 4008
#: too many messages: the rate limit
RATE_LIMITED = 4029
