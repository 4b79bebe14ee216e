"""The gateway: one process holding browsers' WebSockets and forwarding them to nodes.

:class:`Gateway` assembles the parts and owns what they share: it watches the registry,
keeps a stream to every node (:class:`~wiremesh.gateway.node_streams.NodeStreams`), builds the
WebSocket door (:class:`~wiremesh.gateway.websocket.SocketDoor`, whose
:class:`~wiremesh.gateway.websocket.SocketHost` it is) and the HTTP door
(:class:`~wiremesh.gateway.http_rpc.HttpDoor`), hands both to the ASGI application
(:class:`~wiremesh.gateway.app.GatewayApp`) as plain ASGI callables, serves it with uvicorn
on one port, with TLS when configured, and runs one shared timer (:meth:`Gateway.sweep`,
every second) that ticks every connection (idle timeout, token expiry, keepalive pings)
and closes half-open handshakes. No module of the gateway imports this one.

Stopping (:meth:`Gateway.stop`): the gateway stops listening and its HTTP door takes no
new request (503), closes every session with 1001 and tells the nodes, lets the HTTP
requests running finish within the grace (or answers them with a 503 problem when it
ends), and then stops the server. A node that leaves the mesh or whose stream ends has its sessions
closed with 1012, so that their browsers reconnect to a live node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from wiremesh.channels import open_engine
from wiremesh.core.breaker import BreakerSettings
from wiremesh.core.channels import MeshRules
from wiremesh.core.defaults import HEARTBEAT_INTERVAL, MAX_MESSAGE_BYTES, TTL
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.core.socket_session import SessionLimits
from wiremesh.errors import ConfigError
from wiremesh.gateway.app import GatewayApp
from wiremesh.gateway.auth import TokenVerifier, dev_secret
from wiremesh.gateway.channels import ChannelHub
from wiremesh.gateway.codes import GOING_AWAY, INTERNAL_ERROR, SERVICE_RESTART, sendable
from wiremesh.gateway.connection import Connection
from wiremesh.gateway.frame_stream import (
    CLOSE,
    DATA,
    GATEWAY_NODES,
    JOIN,
    LEAVE,
    PUSH,
    SUBSCRIBE,
    FrameStream,
)
from wiremesh.gateway.http_protocol import Handshakes, protocol_classes
from wiremesh.gateway.http_rpc import gateway_door
from wiremesh.gateway.listener import Listener
from wiremesh.gateway.meter import GatewayMeter
from wiremesh.gateway.node_streams import NodeStreams
from wiremesh.gateway.settings import GatewaySettings, SocketServiceSettings, is_loopback
from wiremesh.gateway.socket_hub import CHANNELS_KEY, SOCKET_KEY
from wiremesh.gateway.table import SessionTable
from wiremesh.gateway.websocket import Refusal, SocketDoor
from wiremesh.observability.dashboard import MeshState
from wiremesh.registry.backends import open_registry
from wiremesh.registry.view import MeshView
from wiremesh.runtime.advertise import WILDCARDS, advertised_host
from wiremesh.service import ServiceSpec
from wiremesh.transport.client import channel_options
from wiremesh.transport.tls import TlsFiles

__all__ = ["Gateway", "new_gateway_id"]

log = logging.getLogger("wiremesh.gateway")

#: seconds between two runs of the shared timer
SWEEP_INTERVAL = 1.0
#: a session's number in its id (``<gateway id>.<number>``)
_SESSION_NUMBER = re.compile(r"[0-9]{1,20}")


def new_gateway_id() -> str:
    return f"gateway-{secrets.token_hex(3)}"


def default_client_js() -> Path | None:
    """The JavaScript client shipped in the package (``clients/js/wiremesh.js`` of a source
    checkout links to it)."""
    shipped = Path(__file__).resolve().parent / "static" / "wiremesh.js"
    return shipped if shipped.is_file() else None


class Gateway:
    """A gateway serving ``settings`` for the mesh whose registry is at
    ``registry_address`` (``host:port``, or a ``redis://`` URL with the mesh called
    ``mesh_name``; see :func:`~wiremesh.registry.backends.open_registry`).

    ``root`` is the folder relative paths of the settings are read from (the config
    file's), ``data_dir`` where the development secret lives; ``mesh_tls`` the mutual TLS
    files to reach the nodes (and a ``rediss://`` registry) with, when the mesh uses TLS;
    ``tls`` the certificate and key browsers see (when ``settings.tls``); ``advertise``
    the host other hosts reach this one at (``[mesh] advertise``; None: see
    :mod:`wiremesh.runtime.advertise`); ``join_secret`` the mesh's join secret, which
    admits the gateway to an embedded registry (see :mod:`wiremesh.registry.embedded`);
    ``broker_url`` the ``[broker] url``, which the AsyncAPI document describes (never its
    user and password); ``breaker`` and ``breakers`` how the HTTP door's calls break their
    circuits (``[mesh.breaker]``, ``[services.<name>.breaker]``; None: the defaults).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        registry_address: str,
        root: Path | None = None,
        data_dir: Path | None = None,
        mesh_tls: TlsFiles | None = None,
        tls: tuple[Path, Path] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        gateway_id: str | None = None,
        client_js: Path | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        ttl: float = TTL,
        advertise: str | None = None,
        specs: Mapping[str, ServiceSpec] | None = None,
        services: Sequence[str] = (),
        sweep_interval: float = SWEEP_INTERVAL,
        mesh_name: str = "",
        broker_url: str = "",
        dead_letters: Callable[[], Awaitable[int]] | None = None,
        join_secret: str | None = None,
        breaker: BreakerSettings | None = None,
        breakers: Mapping[str, BreakerSettings] | None = None,
    ) -> None:
        self.settings = settings
        #: seconds between two runs of the shared timer (tests make it shorter)
        self.sweep_interval = sweep_interval
        self.root = root or Path.cwd()
        self.data_dir = data_dir or self.root / ".wiremesh"
        self.gateway_id = gateway_id or new_gateway_id()
        self.registry_address = registry_address
        self.tls = tls if settings.tls else None
        if settings.tls and tls is None:
            raise ConfigError("gateway.tls is on but no certificate and key were given")
        secret = None
        if not settings.auth.configured:
            if not is_loopback(settings.host):
                raise ConfigError(
                    "the gateway listens beyond this machine but has no key to check tokens "
                    "with: set gateway.auth.secret_file, public_keys or jwks_file"
                )
            secret = dev_secret(self.data_dir)
        self.verifier = TokenVerifier(settings.auth, root=self.root, dev_secret=secret)
        self.dev_secret = secret
        limits = settings.limits
        self.table: SessionTable[Connection] = SessionTable(
            per_principal=limits.connections_per_principal, per_ip=limits.connections_per_ip
        )
        #: the limits every session shares (see :mod:`wiremesh.core.socket_session`)
        self.session_limits = SessionLimits(
            max_queued=limits.max_queued,
            max_queued_bytes=limits.max_queued_bytes,
            idle_timeout=limits.idle_timeout,
            refresh_before=settings.refresh_before,
            ping_interval=limits.ping_interval,
            ping_timeout=limits.ping_timeout,
        )
        credentials = mesh_tls.channel_credentials() if mesh_tls else None
        self.registry = open_registry(
            registry_address,
            mesh=mesh_name,
            tls=mesh_tls,
            heartbeat_interval=heartbeat_interval,
            ttl=ttl,
            join_secret=join_secret,
        )
        self.view = MeshView(self.registry, grace=ttl + 1.0)
        #: what this gateway counts (``/metrics``)
        self.meter = GatewayMeter(
            lambda: (c.service for c in self.table),
            reachable=lambda: self.view.reachable,
            channels=lambda: self.channels.counts(),
        )
        channel_rules = MeshRules(CHANNELS_KEY)
        #: the channels its sessions subscribe to (the engine opens on first use)
        self.channels = ChannelHub(
            gateway_id=self.gateway_id,
            engine=lambda: open_engine(
                registry_address,
                mesh=mesh_name,
                tls=mesh_tls,
                join_secret=join_secret,
                owner=self.gateway_id,
            ),
            rules=lambda: channel_rules(self.view.snapshot),
            node_of=self._deciding_node,
            connection_of=self._connection_of,
            limits=limits.channels,
            spawn=self.spawn,
            meter=self.meter,
        )
        #: the host other hosts reach this gateway at: in its registry record and its URL
        self.advertise = advertised_host(settings.host, registry_address, advertise)
        #: the HTTP door (``POST /rpc/...``, ``/openapi.json``, ``/docs``, ``/readyz``)
        self.http = (
            gateway_door(
                settings,
                self.view,
                self.verifier,
                gateway_id=self.gateway_id,
                specs=specs,
                services=services,
                credentials=credentials,
                max_message_bytes=max_message_bytes,
                mesh=mesh_name,
                broker=broker_url,
                breaker=breaker,
                breakers=breakers,
            )
            if settings.http.enabled
            else None
        )
        self.streams = NodeStreams(
            gateway_id=self.gateway_id,
            on_batch=self._on_batch,
            on_ended=self._node_stream_ended,
            credentials=credentials,
            options=channel_options(max_message_bytes),
            max_message_bytes=max_message_bytes,
        )

        extras: dict[str, Callable[[], Awaitable[Any]]] = {"sessions": self._session_count}
        if dead_letters is not None:
            extras["dead_letters"] = dead_letters
        #: the document the dashboard at ``/_mesh/`` draws
        self.dashboard = MeshState(
            lambda: self.view.snapshot,
            mesh=mesh_name,
            extras=extras,
            gateway_id=self.gateway_id,
            session_nodes=lambda: (c.node_id for c in self.table),
            home="/" if settings.static else None,
        )
        static = (self.root / settings.static) if settings.static else None
        self.app = GatewayApp(
            settings,
            gateway_id=self.gateway_id,
            meter=self.meter,
            verifier=self.verifier,
            dashboard=self.dashboard,
            websocket=SocketDoor(self),
            mounts=self.http.mounts() if self.http is not None else (),
            static=static,
            client_js=client_js or default_client_js(),
        )
        self.handshakes = Handshakes()
        self.origins: frozenset[str] = frozenset(settings.origins)
        self.port = settings.port
        self._server: uvicorn.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._balance = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self.stopping = False

    # ------------------------------------------------------------------ properties

    async def _session_count(self) -> int:
        return len(self.table)

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """The URL browsers reach the gateway at: ``[gateway] public_url``, else
        ``<scheme>://<advertised host>:<port>`` (``http://127.0.0.1:8080``). It is the
        URL the gateway registers in the mesh."""
        if self.settings.public_url:
            return self.settings.public_url
        return self.local_url

    @property
    def local_url(self) -> str:
        """The gateway's own address as a URL, whatever ``public_url`` says."""
        host = self.advertise
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    def own_origins(self) -> set[str]:
        """The origins of pages this gateway serves itself (always allowed): its own
        addresses, and the origin of its ``public_url``."""
        hosts = {self.settings.host, self.advertise}
        if is_loopback(self.settings.host) or self.settings.host in WILDCARDS:
            hosts |= {"127.0.0.1", "localhost", "[::1]"}
        default_port = 443 if self.tls else 80
        found = set()
        for host in hosts:
            shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
            port = "" if self.port == default_port else f":{self.port}"
            found.add(f"{self.scheme}://{shown}{port}")
        if self.settings.public_url:
            found.add(_origin_of(self.settings.public_url))
        return found

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Watch the mesh, connect to its nodes and listen; returns once serving."""
        self._loop = asyncio.get_running_loop()
        self.view.on_change(self._mesh_changed)
        await self.view.start()
        self.streams.sync(self.view.snapshot)
        http, ws = protocol_classes(self.handshakes)
        limits = self.settings.limits
        largest = max(
            [limits.max_message_bytes]
            + [s.max_message_bytes for s in self.settings.services.values() if s.max_message_bytes]
        )
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            http=http,
            ws=ws,
            ws_max_size=largest,
            ws_ping_interval=None,
            ws_per_message_deflate=limits.compression,
            lifespan="off",
            log_config=None,
            access_log=False,
            # X-Forwarded-For and -Proto only from the proxies trusted to set them
            proxy_headers=bool(self.settings.trusted_proxies),
            forwarded_allow_ips=",".join(self.settings.trusted_proxies) or None,
            server_header=False,
            ssl_certfile=str(self.tls[0]) if self.tls else None,
            ssl_keyfile=str(self.tls[1]) if self.tls else None,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
        )
        if self.tls:
            config.ssl_cert_reqs = ssl.CERT_NONE
        config.load()
        _quiet_uvicorn()
        listener = _listen(self.settings.host, self.settings.port)
        self.port = listener.getsockname()[1]
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[listener])
        except SystemExit:
            listener.close()
            raise ConfigError("the gateway could not start serving") from None
        self._server = server
        self.origins = frozenset(self.settings.origins) | self.own_origins()
        self._sweeper = self._loop.call_later(self.sweep_interval, self._sweep_tick)
        listening = "" if self.url == self.local_url else f" (listening at {self.local_url})"
        log.info("gateway %s serving %s%s", self.gateway_id, self.url, listening)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening and taking requests, close every session with 1001, tell the
        nodes, let the running HTTP requests finish within ``grace`` seconds (503 problems
        past it), then stop serving."""
        until = time.monotonic() + grace
        self.stopping = True
        if self.http is not None:
            self.http.draining = True
        if self._server is not None:
            for listening in self._server.servers:  # new connections are refused
                listening.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in self.table:
            connection.close(GOING_AWAY, "the gateway is going away")
        await self.streams.flush(min(grace, 1.0))
        server = self._server
        if server is not None:
            # let browsers answer the close frames before the transports go
            await self._wait_for_sessions(min(grace, 1.0))
            if self.http is not None:
                await self.http.drain(max(0.0, until - time.monotonic()))
            server.should_exit = True
            with contextlib.suppress(Exception):
                await server.shutdown()
            self._server = None
        await self.streams.close()
        await self.channels.close()
        if self.http is not None:
            await self.http.close()
        await self.view.close()
        await self.registry.close()

    async def _wait_for_sessions(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.table) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls
            await asyncio.sleep(0.02)

    async def wait_for_streams(self, timeout: float = 5.0) -> None:
        """Wait until this gateway's view shows the mesh's nodes and it has a stream open
        to each of them (tests and start-up ordering)."""
        expected = await self.registry.snapshot()
        wanted = {n.node_id for n in expected.nodes if n.service != GATEWAY_NODES}
        await self.view.wait_for(lambda s: wanted <= set(s.by_id), timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            current = {n.node_id for n in self.view.snapshot.nodes if n.service != GATEWAY_NODES}
            streams = [self.streams.get(node_id) for node_id in current]
            if all(s is not None and s.hello.is_set() for s in streams):
                return
            if loop.time() > deadline:
                raise TimeoutError("the gateway's streams to the nodes did not open in time")
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ routing

    def route(self, service: str, node_id: str) -> NodeInfo | Refusal:
        """The node a new session of ``service`` (or the named node) is pinned to."""
        snapshot = self.view.snapshot
        if node_id:
            node = snapshot.by_id.get(node_id)
            if node is None or node.service != service or SOCKET_KEY not in node.metadata:
                return Refusal(404, f"no node {node_id!r} of service {service!r} takes sockets")
            if not node.serving or self.streams.get(node_id) is None:
                return Refusal(503, f"node {node_id!r} is not serving", (("retry-after", "1"),))
            return node
        nodes = snapshot.by_service.get(service, ())
        sockets = [n for n in nodes if SOCKET_KEY in n.metadata]
        if not sockets:
            if service in snapshot.services and not nodes:
                return Refusal(503, f"no node of {service!r} is running", (("retry-after", "1"),))
            return Refusal(404, f"no service {service!r} takes sockets")
        ready = [n for n in sockets if n.serving and self.streams.get(n.node_id) is not None]
        if not ready:
            return Refusal(503, f"no node of {service!r} is serving", (("retry-after", "1"),))
        # the node with the fewest sessions here; ties in turn
        self._balance += 1
        table = self.table
        start = self._balance % len(ready)
        ordered = ready[start:] + ready[:start]
        return min(ordered, key=lambda n: table.count_of_node(n.node_id))

    def stream_to(self, node_id: str) -> FrameStream | None:
        """The open stream to the node ``node_id``, if any."""
        return self.streams.get(node_id)

    def channel_command(self, connection: Connection, command: dict[str, Any]) -> None:
        """A channel's control message from a browser (see :mod:`.channels`)."""
        self.channels.command(connection, command)

    def channels_ended(self, connection: Connection) -> None:
        """A session subscribed to channels ended."""
        self.channels.ended(connection)

    def _deciding_node(self, service: str) -> FrameStream | None:
        """A stream to a serving node of ``service`` (one in turn), to ask it whether a
        session may subscribe to a channel the service owns."""
        nodes = [
            n
            for n in self.view.snapshot.by_service.get(service, ())
            if n.serving and self.streams.get(n.node_id) is not None
        ]
        if not nodes:
            return None
        self._balance += 1
        return self.streams.get(nodes[self._balance % len(nodes)].node_id)

    def _connection_of(self, session_id: str) -> Connection | None:
        """The connection of ``session_id`` when this gateway holds it."""
        gateway, _, number = session_id.rpartition(".")
        if gateway != self.gateway_id or _SESSION_NUMBER.fullmatch(number) is None:
            return None
        return self.table.get(int(number))

    def access_rules(self, service: str) -> SocketServiceSettings | None:
        """``[gateway.services.<service>]``: who may hold a session of ``service``."""
        return self.settings.services.get(service)

    def _mesh_changed(self, old: MeshSnapshot, new: MeshSnapshot) -> None:
        self.streams.sync(new)
        for node in old.nodes:
            now = new.by_id.get(node.node_id)
            if now is None:
                self._close_sessions_of(node.node_id, "the node left the mesh")

    def _node_stream_ended(self, node_id: str, stream: FrameStream) -> None:
        self._close_sessions_of(node_id, "the node went away", stream)

    def _close_sessions_of(
        self, node_id: str, reason: str, stream: FrameStream | None = None
    ) -> None:
        closed = 0
        for connection in self.table.of_node(node_id):
            if stream is None or connection.stream is stream:
                connection.tell_node = False
                connection.close(SERVICE_RESTART, reason)
                closed += 1
        if closed:
            log.info("closed %d session(s) of %s (1012): %s", closed, node_id, reason)

    # ------------------------------------------------------------------ from the nodes

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in a task the gateway keeps until it ends (rare paths only)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_batch(self, stream: FrameStream, frames: Any) -> None:
        table = self.table
        dirty: list[Connection] = []
        for frame in frames:
            kind = frame.kind
            if kind == DATA:
                connection = table.get(frame.session)
                if connection is not None and connection.stream is stream:
                    connection.deliver(_payload(frame), now=False)
                    if not connection.dirty:
                        connection.dirty = True
                        dirty.append(connection)
            elif kind == PUSH:
                self._push(frame)
            elif kind == SUBSCRIBE:
                self.channels.answered(frame)
            elif kind == JOIN:
                self.channels.joined(frame)
            elif kind == LEAVE:
                self.channels.left(frame)
            elif kind == CLOSE:
                connection = table.get(frame.session)
                if connection is not None and connection.stream is stream:
                    code = frame.code
                    if not sendable(code):
                        code = INTERNAL_ERROR
                    connection.tell_node = False
                    connection.close(code, frame.reason)
        for connection in dirty:
            connection.flush()

    def _push(self, frame: Any) -> None:
        data = _payload(frame)
        if frame.session_id:
            gateway, _, number = frame.session_id.rpartition(".")
            # ASCII digits only, and not too many of them: str.isdigit() takes '²', and
            # int() refuses 4,300 digits; either would end the node's whole stream
            if gateway != self.gateway_id or _SESSION_NUMBER.fullmatch(number) is None:
                return
            connection = self.table.get(int(number))
            if connection is not None:
                connection.deliver(data)
        elif frame.principal:
            for connection in self.table.of_principal(frame.principal):
                connection.deliver(data)

    # ------------------------------------------------------------------ the shared timer

    def _sweep_tick(self) -> None:
        try:
            self.sweep()
        except Exception:
            log.exception("gateway timer failed")
        if not self.stopping and self._loop is not None:
            self._sweeper = self._loop.call_later(self.sweep_interval, self._sweep_tick)

    def sweep(self) -> None:
        """One run of the shared timer: half-open handshakes, then every connection."""
        now = self.loop_time()
        wall = time.time()
        self.handshakes.expire(now, self.settings.limits.handshake_timeout)
        for connection in self.table:
            connection.tick(now, wall)
        self.channels.tick(now)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (a clear error when it is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # so, and an answer written in two parts would otherwise wait for a delayed ACK (40 ms).
    # A Listener refuses connections when file descriptors run short (see its module).
    sock = Listener(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(set gateway.port to a free port, or 0 for any)"
        ) from None
    sock.setblocking(False)
    return sock


def _origin_of(url: str) -> str:
    """The Origin a browser sends from a page at ``url`` (RFC 6454: scheme, host, and the
    port unless it is the scheme's default)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme}://{shown}{port}"


def _payload(frame: Any) -> bytes | str:
    if frame.text:
        text: str = frame.payload.decode(errors="replace")
        return text
    data: bytes = frame.payload
    return data


def _quiet_uvicorn() -> None:
    """uvicorn logs every WebSocket with its query string, which may hold a token: the
    gateway logs what matters itself, without payloads or tokens."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logging.getLogger(name).setLevel(logging.WARNING)
