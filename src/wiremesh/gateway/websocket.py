"""The WebSocket door: ``/ws/<service>`` and ``/ws/<service>/<node-id>``.

:func:`check` decides what an upgrade gets, in this order, each refusal an HTTP status
before the WebSocket opens: too many connections from the address (429), an Origin not
allowed (403), no or bad token (401), no such service or node (404), access rules not met
(403), no live node (503), too many connections of the principal (429). A plain ``GET``
on the same path gets the same answer, or 426 when the upgrade would be accepted. Each
answer is a problem body (:mod:`.problem`): :meth:`Refusal.problem`.

:func:`serve_websocket` is the ASGI handler: it accepts and pins the session to its node;
on wiremesh's own WebSocket protocol it then returns, leaving the session to the
protocol's callbacks (an idle session holds no task), and on another ASGI server it reads
the browser's messages until the connection ends. Messages go to the node's
stream as they come (coalesced by the stream), text messages are the control channel
(token refresh) unless the service takes text.

:class:`SocketDoor` is the door as one ASGI application (``websocket`` scopes, and the
plain requests under ``/ws/``), over a :class:`SocketHost`: what the door needs of the
gateway it serves.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from wiremesh.core.bucket import TokenBucket
from wiremesh.core.model import NodeInfo
from wiremesh.errors import NotFound, PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import (
    SUBPROTOCOL,
    Identity,
    check_access,
    claims_json,
    find_token,
    origin_allowed,
)
from wiremesh.gateway.codes import CloseCode
from wiremesh.gateway.connection import Connection, ConnectionHost
from wiremesh.gateway.frame_stream import CLOSE, OPEN, Frame, FrameStream
from wiremesh.gateway.problem import (
    Problem,
    method_not_allowed,
    problem_for,
    problem_for_status,
    upgrade_required,
)
from wiremesh.gateway.settings import GatewaySettings
from wiremesh.gateway.socket_hub import SOCKET_KEY
from wiremesh.gateway.socket_protocol import EXTENSION
from wiremesh.gateway.table import SessionTable

__all__ = [
    "Refusal",
    "SocketDoor",
    "SocketHost",
    "Ticket",
    "check",
    "is_socket_path",
    "refuse",
    "serve_websocket",
]

log = logging.getLogger("wiremesh.gateway")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Refusal:
    """An upgrade refused before the WebSocket opens: its HTTP status, what to say, and
    its ``Retry-After`` header if any (the one header a refusal carries)."""

    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def problem(self, instance: str) -> Problem:
        """The answer: a problem of :attr:`status` (with its ``Retry-After``)."""
        retry_after = next((v for k, v in self.headers if k.lower() == "retry-after"), None)
        return problem_for_status(
            self.status,
            self.detail,
            instance,
            retry_after=None if retry_after is None else int(retry_after),
        )


@dataclass
class Ticket:
    """An upgrade that may go on: who, to which node, with which limits."""

    identity: Identity
    service: str
    node: NodeInfo
    ip: str
    origin: str
    text: bool
    max_bytes: int
    subprotocol: str | None
    path: str
    extra: dict[str, Any] = field(default_factory=dict)


class SocketHost(ConnectionHost, Protocol):
    """What the WebSocket door needs of the gateway it serves, beside what each of its
    connections needs (:class:`~wiremesh.gateway.connection.ConnectionHost`)."""

    @property
    def settings(self) -> GatewaySettings:
        """Where tokens may travel, the limits, the services' rules."""

    @property
    def gateway_id(self) -> str:
        """The first part of every session id."""

    @property
    def table(self) -> SessionTable[Connection]:
        """The sessions, counted per principal and address."""

    @property
    def origins(self) -> frozenset[str]:
        """The Origins allowed (the gateway's own among them)."""

    def route(self, service: str, node_id: str) -> NodeInfo | Refusal:
        """The node a new session of ``service`` (or the named node) is pinned to."""

    def stream_to(self, node_id: str) -> FrameStream | None:
        """The open stream to the node ``node_id``, if any."""

    def loop_time(self) -> float:
        """The event loop's time."""

    def channels_ended(self, connection: Connection) -> None:
        """``connection`` ended while subscribed to channels: end its subscriptions."""


class SocketDoor:
    """The WebSocket door of ``host`` as one ASGI application: a ``websocket`` scope is a
    session (:func:`serve_websocket`; an upgrade to a path that is not
    ``/ws/<service>[/<node>]`` gets a 404 problem), and a plain ``GET`` under ``/ws/``
    gets the answer its upgrade would (:func:`check`), or 426 when it would be
    accepted."""

    def __init__(self, host: SocketHost) -> None:
        self.host = host

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["type"] == "websocket":
            if is_socket_path(path):
                await serve_websocket(self.host, scope, receive, send)
                return
            await receive()
            error = NotFound("no WebSocket here: use /ws/<service> or /ws/<service>/<node>")
            await refuse(send, scope, problem_for(error, path))
            return
        method = scope["method"]
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if method not in ("GET", "HEAD"):
            problem = method_not_allowed("GET, HEAD", path)
        elif not is_socket_path(path):
            problem = problem_for(NotFound("use /ws/<service> or /ws/<service>/<node>"), path)
        else:
            result = check(self.host, scope, count=False)
            if isinstance(result, Refusal):
                problem = result.problem(path)
            else:
                problem = upgrade_required(
                    "this endpoint takes a WebSocket, which would be accepted", path
                )
                extra = ((b"upgrade", b"websocket"),)
        body = problem.encode()
        headers = [*problem.headers(), *extra, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


def is_socket_path(path: str) -> bool:
    """Whether ``path`` is ``/ws/<service>`` or ``/ws/<service>/<node>``."""
    parts = path.split("/")
    return len(parts) in (3, 4) and parts[1] == "ws" and all(parts[2:])


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def subprotocols_of(headers: list[tuple[bytes, bytes]]) -> list[str]:
    found: list[str] = []
    for key, value in headers:
        if key == b"sec-websocket-protocol":
            found.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    return found


def check(host: SocketHost, scope: Mapping[str, Any], *, count: bool) -> Ticket | Refusal:
    """What an upgrade of ``scope`` gets. With ``count``, a ticket counts the connection
    against the per-address and per-principal limits (release it with
    ``host.table.release`` if the upgrade does not happen)."""
    settings = host.settings
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    client = scope.get("client") or ("", 0)
    ip = str(client[0])
    table = host.table
    if table.ip_full(ip):
        return Refusal(429, "too many connections from this address", (("retry-after", "5"),))
    origin = header(headers, b"origin")
    if not origin_allowed(origin, host.origins):
        return Refusal(403, "this Origin is not allowed")
    subprotocols = list(scope.get("subprotocols") or ()) or subprotocols_of(headers)
    token = find_token(
        headers,
        subprotocols,
        scope.get("query_string", b""),
        cookie=settings.cookie_token,
        query=settings.query_token,
    )
    if token is None:
        return Refusal(401, "no token: send one in Sec-WebSocket-Protocol (bearer.<token>)")
    try:
        identity = host.verifier.verify(token)
    except Unauthenticated as exc:
        return Refusal(401, exc.message)
    parts = scope["path"].split("/")
    service, node_id = parts[2], (parts[3] if len(parts) > 3 else "")
    route = host.route(service, node_id)
    if isinstance(route, Refusal):
        return route
    rules = host.access_rules(service)
    try:
        check_access(identity.claims, rules)
    except PermissionDenied as exc:
        return Refusal(403, exc.message)
    if count and not table.admit(identity.principal, ip):
        return Refusal(
            429, "too many connections of this principal or address", (("retry-after", "5"),)
        )
    if not count and table.principal_full(identity.principal):
        return Refusal(429, "too many connections of this principal", (("retry-after", "5"),))
    limits = settings.limits
    max_bytes = (rules.max_message_bytes if rules else None) or limits.max_message_bytes
    text = bool(rules and rules.text) or route.metadata.get(SOCKET_KEY) == "text"
    return Ticket(
        identity=identity,
        service=service,
        node=route,
        ip=ip,
        origin=origin or "",
        text=text,
        max_bytes=max_bytes,
        subprotocol=SUBPROTOCOL if SUBPROTOCOL in subprotocols else None,
        path=scope["path"],
    )


async def refuse(send: Send, scope: Mapping[str, Any], problem: Problem) -> None:
    """Answer an upgrade with ``problem``, before the WebSocket opens; a server without
    ASGI's ``websocket.http.response`` extension can only close (its own 403)."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
        return
    body = problem.encode()
    headers = [*problem.headers(), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "websocket.http.response.start", "status": problem.status, "headers": headers}
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def serve_websocket(
    host: SocketHost, scope: Mapping[str, Any], receive: Receive, send: Send
) -> None:
    """The ASGI handler of one WebSocket connection."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    ticket = check(host, scope, count=True)
    if isinstance(ticket, Refusal):
        log.info(
            "refused %s from %s: %d %s",
            scope["path"],
            (scope.get("client") or ("?",))[0],
            ticket.status,
            ticket.detail,
        )
        host.meter.refused[ticket.status] += 1
        await refuse(send, scope, ticket.problem(scope["path"]))
        return
    identity = ticket.identity
    table = host.table
    stream = host.stream_to(ticket.node.node_id)
    if stream is None:  # the node left between check() and now
        table.release(identity.principal, ticket.ip)
        refusal = Refusal(503, "the node is not reachable", (("retry-after", "1"),))
        host.meter.refused[503] += 1
        await refuse(send, scope, refusal.problem(scope["path"]))
        return
    limits = host.settings.limits
    socket = (scope.get("extensions") or {}).get(EXTENSION)
    number = table.next_number()
    claims = claims_json(identity.claims)
    connection = Connection(
        host,
        number=number,
        session_id=f"{host.gateway_id}.{number}",
        principal=identity.principal,
        ip=ticket.ip,
        node_id=ticket.node.node_id,
        service=ticket.service,
        stream=stream,
        socket=socket,
        asgi_send=send,
        bucket=TokenBucket(limits.messages_per_second, limits.burst, host.loop_time()),
        expires_at=identity.expires_at,
        max_bytes=ticket.max_bytes,
        text=ticket.text,
        claims=claims,
    )
    table.add(connection)
    stream.send(
        Frame(
            kind=OPEN,
            session=number,
            session_id=connection.session_id,
            principal=identity.principal,
            claims=claims,
            service=ticket.service,
            path=ticket.path,
            origin=ticket.origin,
            remote=ticket.ip,
        )
    )
    if socket is not None:
        # wiremesh's own protocol: the session lives in its callbacks from now on (the
        # browser's messages go to on_message, the end to _ended), and this task ends
        socket.receiver = connection.on_message
        try:
            await send({"type": "websocket.accept", "subprotocol": ticket.subprotocol})
        except BaseException:
            _ended(host, connection, CloseCode.ABNORMAL, "")
            raise
        log.debug("session %s opened on %s", connection.session_id, connection.node_id)
        socket.detach(functools.partial(_ended, host, connection))
        return
    code: int = CloseCode.ABNORMAL
    reason = ""
    try:
        await send({"type": "websocket.accept", "subprotocol": ticket.subprotocol})
        log.debug("session %s opened on %s", connection.session_id, connection.node_id)
        code, reason = await _read(connection, receive)
    finally:
        _ended(host, connection, code, reason)


def _ended(host: SocketHost, connection: Connection, code: int, reason: str) -> None:
    """A session's connection ended with ``code`` and ``reason`` (unless the gateway closed
    it, with its own): the gateway forgets it and tells its node."""
    socket = connection.socket
    if socket is not None:
        socket.receiver = None
        socket.on_writable = None
    table = host.table
    table.remove(connection)
    table.release(connection.principal, connection.ip)
    if connection.channels:
        host.channels_ended(connection)
    if connection.close_code is not None:
        code, reason = connection.close_code, connection.close_reason
    host.meter.closes[code] += 1
    stream = connection.stream
    if connection.tell_node and not stream.closed:
        stream.send(Frame(kind=CLOSE, session=connection.number, code=code, reason=reason))
    connection.closed = True
    log.debug("session %s closed (%d)", connection.session_id, code)


async def _read(connection: Connection, receive: Receive) -> tuple[int, str]:
    """Wait for the connection's end (its messages go to ``connection.on_message``, from
    the protocol or, with another ASGI server, from here); its close code and reason."""
    stream = connection.stream
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return int(message.get("code") or CloseCode.NO_STATUS), str(message.get("reason") or "")
        data = message.get("bytes")
        connection.on_message(data if data is not None else message.get("text") or "")
        if stream.full:
            await stream.wait_for_room()
