"""What the AsyncAPI document says of wiremesh's transports, whatever the services are.

Its three servers (the broker, the gateway, the mesh links), the messages of every socket
channel (frames and the gateway's control messages, ``docs/protocol.md`` §13.3), the
headers of durable messages (§16) and the prose that says how each kind of channel
travels. :mod:`.asyncapi` adds the services' channels, operations and payloads.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from wiremesh.messaging.base import HEADER_SENDER, HEADER_SENT_AT

__all__ = [
    "BINARY",
    "COMMAND",
    "EVENT",
    "INFO",
    "PUBLISH",
    "SECURITY_SCHEMES",
    "SOCKET",
    "SOCKET_OPERATIONS",
    "WS_BINDING",
    "headers_trait",
    "servers",
    "socket_messages",
]

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}

INFO = (
    "The asynchronous side of the mesh: durable events and commands (through the broker), "
    "publish topics (over the mesh links) and browser sockets (through the gateway). Each "
    "operation is a service's: it `receive`s what its handlers take, and a socket service "
    "`send`s frames back. The calls are in `/openapi.json`."
)
EVENT = (
    "Durable events whose topic this pattern matches (`*` one word, `#` any number): "
    "published to the topic exchange `wm.{mesh}.events` with the topic as routing key; "
    "each handler's queue is bound with the pattern. At least once, retried with backoff, "
    "then dead-lettered to `wm.{mesh}.dead`."
)
COMMAND = (
    "A durable command: published to the direct exchange `wm.{mesh}.commands` with "
    "`service.command` as routing key, into the queue `wm.{mesh}.command.{address}`, which "
    "a sender declares too, so a command waits for its service. One node handles each, "
    "at least once."
)
PUBLISH = (
    "Published messages whose topic this pattern matches (`*` one word, `#` any number): "
    "one PUBLISH frame (`topic`, `payload`, `codec`) on the mesh link to each subscribed "
    "node, at most once, in order per link; nothing is stored or retried. No AsyncAPI "
    "binding exists for it (docs/protocol.md §12)."
)
SOCKET = (
    "A browser session pinned to one node of {service} (`/ws/{service}/<node-id>`: that "
    "node). Binary frames are opaque and application-defined, both ways; text frames that "
    "are a JSON object with a `wm` key are the gateway's control channel "
    "(docs/protocol.md §13.3); close codes in §13.4."
)

# ----------------------------------------------------------------------- servers


def servers(broker: str, gateway: str, *, auth: bool) -> dict[str, Any]:
    """The broker (``[broker] url``: ``"embedded"``, ``amqp://…`` whose user and password
    are never shown, or empty when not known), the gateway at ``gateway`` (its base URL,
    ``http(s)://host:port``) and the mesh links."""
    url = urlsplit(gateway)
    found: dict[str, Any] = {
        "broker": _broker(broker),
        "gateway": {
            "host": url.netloc or "127.0.0.1:8080",
            "protocol": "wss" if url.scheme == "https" else "ws",
            "title": "The gateway",
            "description": (
                "The gateway's WebSockets: `/ws/<service>` with the subprotocol `wiremesh.v1` "
                "and a JWT (the subprotocol `bearer.<JWT>`, the cookie `wiremesh_token`, or "
                "an `Authorization: Bearer` header)."
            ),
        },
        "mesh": {
            "host": "{node}",
            "protocol": "grpc",
            "title": "The mesh links",
            "description": (
                "The mesh links: one bidirectional gRPC stream per pair of processes, "
                "`wiremesh.link.v1.Link/Open` (proto/wiremesh/link/v1/link.proto), on each "
                "node's gRPC address, with mutual TLS when the mesh has TLS on."
            ),
            "variables": {
                "node": {"description": "a node's gRPC address (`wiremesh nodes` lists them)"}
            },
        },
    }
    if auth:
        found["gateway"]["security"] = [{"$ref": "#/components/securitySchemes/bearer"}]
    return found


SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "A JWT, in the subprotocol `bearer.<JWT>`, the cookie `wiremesh_token` or the "
            "`Authorization` header; its `sub` is the session's principal."
        ),
    }
}


def _broker(broker: str) -> dict[str, Any]:
    if broker.startswith(("amqp://", "amqps://")):
        url = urlsplit(broker)
        host = url.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        server: dict[str, Any] = {
            "host": f"{host}:{url.port or (5671 if url.scheme == 'amqps' else 5672)}",
            "protocol": url.scheme,
            "protocolVersion": "0-9-1",
            "title": "RabbitMQ",
            "description": (
                "RabbitMQ (`[broker] url`). The AMQP bindings of the event and command "
                "channels name its exchanges and queues."
            ),
        }
        if len(url.path) > 1:
            server["pathname"] = f"/{unquote(url.path[1:])}"  # the vhost
        return server
    if broker == "embedded":
        return {
            "host": "{broker}",
            "protocol": "grpc",
            "title": "The embedded broker",
            "description": (
                "The embedded broker hosted by `wiremesh run` on one machine; it speaks "
                "wiremesh's own gRPC protocol (docs/protocol.md §15), not AMQP. The AMQP "
                "bindings of the event and command channels describe the same messages on "
                "RabbitMQ (`[broker] url = amqp://…`)."
            ),
            "variables": {
                "broker": {"description": "its address (`broker` in `.wiremesh/mesh.json`)"}
            },
        }
    return {
        "host": "{broker}",
        "protocol": "amqp",
        "title": "The broker",
        "description": (
            "The mesh's broker (`[broker] url`): RabbitMQ, which the AMQP bindings "
            "describe, or the embedded broker, which carries the same messages over "
            "wiremesh's own gRPC protocol (docs/protocol.md §15)."
        ),
        "variables": {"broker": {"description": "the host of `[broker] url`"}},
    }


# ------------------------------------------------------------------- durable messages


def headers_trait() -> dict[str, Any]:
    """The message trait of every event and command: the headers wiremesh reads."""
    from wiremesh.messaging.amqp.topology import ATTEMPT_HEADER, TOPIC_HEADER

    return {
        "headers": {
            "type": "object",
            "description": (
                "The headers wiremesh sets and reads (docs/protocol.md §16). Any other "
                "header reaches the handler in `ctx.message.headers`; `x-` headers "
                "belong to RabbitMQ."
            ),
            "properties": {
                ATTEMPT_HEADER: {
                    "type": "integer",
                    "minimum": 1,
                    "description": "1 on the first delivery, +1 per retry; absent: 1",
                },
                TOPIC_HEADER: {
                    "type": "string",
                    "description": "the topic or command target; absent: the routing key",
                },
                HEADER_SENDER: {"type": "string", "description": "the sending node's id"},
                HEADER_SENT_AT: {"type": "string", "description": "unix time of sending"},
                "traceparent": {"type": "string", "description": "W3C trace context"},
            },
        }
    }


# ---------------------------------------------------------------------- sockets

WS_BINDING: dict[str, Any] = {
    "method": "GET",
    "headers": {
        "type": "object",
        "properties": {
            "Sec-WebSocket-Protocol": {
                "type": "string",
                "description": "`wiremesh.v1`, and `bearer.<JWT>` when the token travels so",
            },
            "Origin": {"type": "string", "description": "checked against the allow-list"},
        },
    },
    "bindingVersion": "0.1.0",
}


def _control(name: str, wm: str, summary: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "title": f"Control: {wm}",
        "summary": summary,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "required": ["wm", *fields],
            "properties": {"wm": {"const": wm}, **fields},
        },
    }


_EXP = {"type": "integer", "description": "the token's expiry, unix seconds"}
_CHANNEL = {"type": "string", "description": "a channel's name (docs/channels.md)"}
_ID = {"type": "integer", "minimum": 0, "description": "the request's id, echoed"}
_OFFSET = {"type": "integer", "minimum": 0}
_DATA = {"description": "the publication: any JSON value"}
_MEMBER = {
    "type": "object",
    "properties": {
        "session": {"type": "string"},
        "principal": {"type": "string"},
        "gateway": {"type": "string"},
    },
}
#: the channels' control messages (docs/protocol.md, 13.5), by key
_CHANNEL_MESSAGES: dict[str, dict[str, Any]] = {
    "subscribe": _control(
        "Subscribe",
        "subscribe",
        "browser to gateway: subscribe; `since` asks for what came after a position",
        channel=_CHANNEL,
    ),
    "unsubscribe": _control(
        "Unsubscribe", "unsubscribe", "browser to gateway: leave a channel", channel=_CHANNEL
    ),
    "publish": _control(
        "Publish",
        "publish",
        "browser to gateway: publish (channels that allow it)",
        channel=_CHANNEL,
        data=_DATA,
    ),
    "presence": _control(
        "PresenceRequest", "presence", "browser to gateway: who is subscribed", channel=_CHANNEL
    ),
    "subscribed": _control(
        "Subscribed",
        "subscribed",
        "gateway to browser: the subscription holds, with what was recovered",
        channel=_CHANNEL,
        offset=_OFFSET,
        epoch={"type": "string"},
        recovered={"type": "boolean"},
        publications={"type": "array"},
    ),
    "pub": _control(
        "Publication",
        "pub",
        "gateway to browser: a publication of a subscribed channel",
        channel=_CHANNEL,
        offset=_OFFSET,
        epoch={"type": "string"},
        data=_DATA,
    ),
    "join": _control(
        "Join", "join", "gateway to browser: a session subscribed", channel=_CHANNEL, member=_MEMBER
    ),
    "leave": _control(
        "Leave", "leave", "gateway to browser: a session left", channel=_CHANNEL, member=_MEMBER
    ),
    "unsubscribed": _control(
        "Unsubscribed",
        "unsubscribed",
        "gateway to browser: the subscription ended",
        channel=_CHANNEL,
        code={"type": "integer"},
    ),
    "published": _control(
        "Published",
        "published",
        "gateway to browser: the browser's publication was accepted",
        id=_ID,
        offset=_OFFSET,
    ),
    "members": _control(
        "PresenceAnswer",
        "presence",
        "gateway to browser: who is subscribed",
        channel=_CHANNEL,
        members={"type": "array", "items": _MEMBER},
    ),
    "channel_error": _control(
        "ChannelError",
        "error",
        "gateway to browser: a channel request was refused (the session stays)",
        code={"type": "integer", "description": "4400, 4403, 4404, 4409, 4413, 4429, 4503"},
        reason={"type": "string"},
    ),
}
_MESSAGES: dict[str, dict[str, Any]] = {
    "binary": {
        "name": "BinaryFrame",
        "title": "A binary frame",
        "contentType": "application/octet-stream",
        "payload": {**BINARY, "description": "opaque, application-defined bytes"},
    },
    "text": {
        "name": "TextFrame",
        "title": "A text frame",
        "contentType": "text/plain",
        "payload": {"type": "string", "description": "not a JSON object with a `wm` key"},
    },
    "refresh": _control(
        "Refresh",
        "refresh",
        "browser to gateway: a new token for this session (the same `sub`)",
        token={"type": "string"},
    ),
    "refreshed": _control(
        "Refreshed", "refreshed", "gateway to browser: the refresh took", exp=_EXP
    ),
    "expiring": _control(
        "Expiring", "expiring", "gateway to browser: the token expires soon", exp=_EXP
    ),
    **{key: message for key, message in _CHANNEL_MESSAGES.items()},
}


def socket_messages(text: bool) -> dict[str, dict[str, Any]]:
    """The messages of a socket channel by key: its frames (text ones only when the
    service takes text), then the gateway's control messages."""
    return {key: message for key, message in _MESSAGES.items() if text or key != "text"}


#: ``(operation id suffix, action, message keys, summary)`` of a socket channel; "frames"
#: stands for the channel's frames (binary, and text when the service takes it): what
#: the node sends back with ``session.send`` is binary for ``bytes`` and text for ``str``
SOCKET_OPERATIONS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("receive", "receive", ("frames",), "The frames browsers send"),
    ("send", "send", ("frames",), "The frames the node sends back (`session.send`)"),
    ("control", "receive", ("refresh",), "A browser's new token, for the gateway"),
    ("notice", "send", ("refreshed", "expiring"), "The gateway's notices"),
    (
        "channels",
        "receive",
        ("subscribe", "unsubscribe", "publish", "presence"),
        "A browser's channel requests (docs/channels.md)",
    ),
    (
        "channel_notices",
        "send",
        (
            "subscribed",
            "pub",
            "join",
            "leave",
            "unsubscribed",
            "published",
            "members",
            "channel_error",
        ),
        "The channels' publications and answers",
    ),
)
