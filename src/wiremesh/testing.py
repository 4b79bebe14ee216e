"""Helpers for testing services, so that users' own tests stay short.

Two levels, as in Nameko (``worker_factory``, ``entrypoint_hook``):

* **One handler, no network.** :func:`worker` builds a service instance with its
  dependencies replaced; :func:`call_handler` runs one of its ``@rpc`` methods through the
  same payload validation a real call gets::

      flows = worker(Flows, connectors=FakeConnectors())
      result = await call_handler(flows, "run", {"flow": "welcome"})

  :func:`deliver` does the same for an ``@on_event`` or ``@command`` method; what the
  handler emits or sends (``ctx.emit``, or ``tx.emit`` once its transaction commits) is
  recorded in ``instance.mesh.sent`` (no broker needed)::

      await deliver(flows, "order_created", {"id": 7})
      assert [e.topic for e in flows.mesh.sent] == ["flows.started"]
      await deliver(flows, "nightly", tick=datetime(2026, 12, 7, 3, 0, tzinfo=UTC))  # a timer

* **Real services on loopback.** :class:`TestMesh` starts an embedded registry and real
  gRPC nodes inside the test's event loop, calls them like any client, and can replace a
  service's dependencies or stop a node. When a service has message handlers, an
  embedded broker runs too (``broker="embedded"``; give an ``amqp://`` url for RabbitMQ),
  and ``mesh.emit`` / ``mesh.send`` reach the handlers::

      async with TestMesh(Connectors, Flows, replicas={"connectors": 2}) as mesh:
          result = await mesh.call("flows.run", {"flow": "welcome"})

* **Browsers too.** ``TestMesh(Chat, gateway=True)`` also runs a real gateway (uvicorn,
  WebSockets, JWT) on a free loopback port; ``mesh.token("ada")`` mints a token it accepts
  and ``mesh.ws_url("chat")`` is where a ``websockets`` client connects::

      async with TestMesh(Chat, gateway=True) as mesh:
          async with websockets.connect(
              mesh.ws_url("chat"), subprotocols=["wiremesh.v1", f"bearer.{mesh.token('ada')}"]
          ) as ws:
              await ws.send(b"hi")
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from wiremesh.client import MeshClient
from wiremesh.context import Context
from wiremesh.core.codec import CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import CALL_TIMEOUT, HANDLER_TIMEOUT, TTL
from wiremesh.core.gather import MulticastResult
from wiremesh.core.model import MeshSnapshot
from wiremesh.core.schedule import tick_text
from wiremesh.errors import ConfigError, NodeNotFound, Unavailable
from wiremesh.messaging.backends import open_broker
from wiremesh.messaging.base import HEADER_TICK, Broker, Envelope
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.messaging.outbound import make_envelope
from wiremesh.messaging.store import Store
from wiremesh.registry.embedded import RegistryServer
from wiremesh.runtime.node import Node, NodeMembership, NodeMessaging, NodeNetwork, NodeTransport
from wiremesh.service import HandlerSpec, Service, ServiceProxy, ServiceSpec
from wiremesh.transport import grpc_core

if TYPE_CHECKING:
    from wiremesh.gateway.server import Gateway
    from wiremesh.gateway.settings import GatewaySettings


def gateway_settings(**settings: Any) -> GatewaySettings:
    """Gateway settings for a test: a free loopback port, then ``settings`` (nested tables
    as dicts: ``gateway_settings(limits={"burst": 5})``), validated as in a config file."""
    from wiremesh.gateway.settings import GatewaySettings

    return GatewaySettings.model_validate({"port": 0, **settings})


__all__ = ["Recorder", "TestMesh", "call_handler", "deliver", "gateway_settings", "worker"]


class Recorder:
    """Stands in for the broker in :func:`worker` instances: ``ctx.emit`` and ``ctx.send``
    are recorded in :attr:`sent`, in order, instead of being sent."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.sent: list[Envelope] = []

    async def emit(
        self, topic: str, payload: Any = None, *, codec: CodecName = "msgpack", **options: Any
    ) -> str:
        envelope = make_envelope(
            "event", topic, payload, codec, options.get("headers"), sender=self.sender
        )
        self.sent.append(envelope)
        return envelope.id

    async def send(
        self, target: str, payload: Any = None, *, codec: CodecName = "msgpack", **options: Any
    ) -> str:
        envelope = make_envelope(
            "command", target, payload, codec, options.get("headers"), sender=self.sender
        )
        self.sent.append(envelope)
        return envelope.id


class _NoStream:
    """A stream of a service run without a mesh: its first iteration raises as a call
    would."""

    def __init__(self, mesh: _NoMesh, target: str) -> None:
        self.mesh = mesh
        self.target = target

    def __aiter__(self) -> _NoStream:
        return self

    async def __anext__(self) -> Any:
        await self.mesh.call(self.target)

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> _NoStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


class _NoMesh:
    """What a service calls when a test gave it no mesh: a clear error, not a hang."""

    def __init__(self, cls: type[Service]) -> None:
        self.cls = cls
        self.outbound = Recorder(f"{ServiceSpec.of(cls).name}-test")

    @property
    def sent(self) -> list[Envelope]:
        """What the service emitted and sent, in order."""
        return self.outbound.sent

    async def call(self, target: str, payload: Any = None, **options: Any) -> Any:
        service = target.split("@", 1)[0].split(".", 1)[0]
        attributes = sorted(
            name
            for klass in reversed(self.cls.__mro__)
            for name, value in vars(klass).items()
            if isinstance(value, ServiceProxy) and value.service == service
        )
        name = self.cls.__qualname__
        fake = f"{attributes[0]}=fake" if attributes else "<dependency>=fake"
        raise Unavailable(
            f"{ServiceSpec.of(self.cls).name} called {target!r}, but this test runs it "
            f"without a mesh: replace the dependency, e.g. worker({name}, {fake}), "
            "or run the services in a TestMesh"
        )

    async def multicast(self, target: str, payload: Any = None, **options: Any) -> Any:
        return await self.call(target, payload)

    def stream(self, target: str, payload: Any = None, **options: Any) -> Any:
        return _NoStream(self, target)

    async def publish(self, topic: str, payload: Any = None, **options: Any) -> int:
        """With no mesh, nobody is subscribed: nothing is delivered."""
        return 0


class _NoSessions:
    """``self.sessions`` of a service a test runs without a mesh: no browser is connected,
    so a push reaches nobody (as it would in a mesh with no gateway)."""

    def get(self, session_id: str) -> None:
        return None

    def of_principal(self, principal: str) -> list[Any]:
        return []

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0

    async def send(self, session_id: str, data: bytes | str) -> bool:
        return False

    async def send_to_principal(self, principal: str, data: bytes | str) -> int:
        return 0


def worker(cls: type[Service], *, data_dir: Path | None = None, **dependencies: Any) -> Service:
    """An instance of ``cls`` with each named attribute (a :class:`ServiceProxy` or any other
    dependency) replaced by the given object. ``on_start`` is not called: call it yourself
    when the test needs the service's own resources. ``instance.store`` is a SQLite store
    in ``data_dir`` (a fresh temporary folder by default)."""
    spec = ServiceSpec.of(cls)
    instance = cls()
    for name, replacement in dependencies.items():
        if not hasattr(cls, name):
            raise AttributeError(f"{cls.__qualname__} has no dependency {name!r} to replace")
        setattr(instance, name, replacement)
    instance.node_id = f"{spec.name}-test"
    instance.data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"wiremesh-{spec.name}-"))
    instance.mesh = _NoMesh(cls)
    instance.store = Store(None, path=instance.data_dir / "store.db", service=spec.name)
    # what a transaction emits is "sent" when it commits, as the outbox relay would do
    instance.store.committed = instance.mesh.sent.extend
    instance.sessions = _NoSessions()  # type: ignore[assignment]
    return instance


async def deliver(
    instance: Service,
    handler: str,
    payload: Any = None,
    *,
    topic: str | None = None,
    codec: CodecName = "msgpack",
    headers: Mapping[str, str] | None = None,
    attempt: int = 1,
    timeout: float = HANDLER_TIMEOUT,
    tick: datetime | None = None,
) -> Envelope:
    """Run ``instance``'s ``@on_event`` or ``@command`` method ``handler`` for one message,
    as the broker would: the payload is encoded and decoded with ``codec`` and validated
    (a bad payload raises :class:`~wiremesh.InvalidPayload`, which in a running mesh makes
    it a dead letter), the handler gets a real :class:`Context` whose ``message`` is the
    envelope, and whatever it raises is raised here. ``topic`` defaults to the handler's
    first pattern (a command's ``service.command``). Returns the envelope delivered.

    ``handler`` may also be a ``@timer`` or ``@cron`` method: it runs for one tick,
    ``tick`` (an aware datetime; by default the schedule's last tick), as ``ctx.tick``."""
    spec = ServiceSpec.of(type(instance))
    found = [h for h in spec.handlers if h.attribute == handler]
    timers = {t.attribute: t for t in spec.timers}
    if not found and handler in timers:
        timer = timers[handler]
        moment = time.time() if tick is None else tick.timestamp()
        if tick is None:
            moment = timer.schedule.before(moment + 1e-6) or timer.schedule.after(moment)
        headers = {**(headers or {}), HEADER_TICK: tick_text(timer.schedule, moment)}
        found = [
            HandlerSpec(handler, "command", (timer.target(spec.name),), "pool", 1, timer.shapes)
        ]
    if not found:
        known = ", ".join(sorted([*(h.attribute for h in spec.handlers), *timers])) or "none"
        raise AttributeError(f"{spec.name} has no message handler {handler!r} (handlers: {known})")
    handler_spec = found[0]
    topic = topic or handler_spec.patterns[0].replace("#", "any").replace("*", "any")
    envelope = make_envelope(handler_spec.kind, topic, payload, codec, headers, sender="test")
    if attempt != 1:
        from dataclasses import replace as replaced

        envelope = replaced(envelope, attempt=attempt)
    shapes = handler_spec.shapes
    wire = envelope.body if shapes.takes_protobuf else decode(envelope.body, codec)
    args, kwargs = shapes.arguments(wire)
    ctx = Context(
        deadline=Deadline.after(timeout, now=time.monotonic()),
        service=spec.name,
        method=handler,
        node_id=instance.node_id or f"{spec.name}-test",
        caller_client=getattr(instance, "mesh", None) or _NoMesh(type(instance)),
        metadata=dict(envelope.headers),
        caller="test",
        message=envelope,
    )
    token = ctx.activate()
    try:
        await getattr(instance, handler_spec.attribute)(ctx, *args, **kwargs)
    finally:
        Context.deactivate(token)
    return envelope


async def call_handler(
    instance: Service,
    method: str,
    payload: Any = None,
    *,
    timeout: float = CALL_TIMEOUT,
    codec: CodecName = "msgpack",
    metadata: Mapping[str, str] | None = None,
    caller: str | None = None,
) -> Any:
    """Run ``instance``'s ``@rpc`` method ``method`` as a call would: the payload is encoded
    and decoded with ``codec`` and validated (so a bad payload raises
    :class:`~wiremesh.InvalidPayload`), the handler gets a real :class:`Context`, and the
    result comes back typed as the handler returned it."""
    spec = ServiceSpec.of(type(instance))
    method_spec = spec.methods.get(method)
    if method_spec is None:
        known = ", ".join(sorted(spec.methods)) or "none"
        raise AttributeError(f"{spec.name} has no @rpc method {method!r} (methods: {known})")
    shapes = method_spec.shapes
    wire = payload if shapes.takes_protobuf else decode(encode(payload, codec), codec)
    args, kwargs = shapes.arguments(wire)
    ctx = Context(
        deadline=Deadline.after(timeout, now=time.monotonic()),
        service=spec.name,
        method=method,
        node_id=instance.node_id or f"{spec.name}-test",
        caller_client=getattr(instance, "mesh", None) or _NoMesh(type(instance)),
        metadata=metadata,
        caller=caller,
    )
    token = ctx.activate()
    try:
        result = await getattr(instance, method_spec.attribute)(ctx, *args, **kwargs)
    finally:
        Context.deactivate(token)
    # a result that could not travel back fails here as it would on a real call
    encode(result, "proto" if shapes.returns_protobuf else codec)
    return result


#: the settings of a node, by the keyword of Node that takes each
_NODE_SETTINGS: dict[str, type[Any]] = {
    "network": NodeNetwork,
    "membership": NodeMembership,
    "transport": NodeTransport,
    "messaging": NodeMessaging,
}


def _node_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`Node`'s keyword arguments from flat ones: each field of one of its settings
    (``max_message_bytes=``) goes into that settings object (the one given whole, as
    ``transport=NodeTransport(...)``, or the defaults); the rest are Node's own
    (``broker=``)."""
    arguments = {k: v for k, v in options.items() if k not in _NODE_SETTINGS}
    for keyword, settings in _NODE_SETTINGS.items():
        names = {f.name for f in dataclasses.fields(settings)}
        changes = {name: arguments.pop(name) for name in names & set(arguments)}
        given = options.get(keyword, settings())
        arguments[keyword] = dataclasses.replace(given, **changes) if changes else given
    return arguments


class TestMesh:
    """Real services on loopback inside the test's event loop.

    ``replicas`` maps a service name to its node count (default 1); ``replace`` maps a
    service name to ``{attribute: replacement}`` for its dependencies; ``groups`` maps a
    service name to the named groups its nodes join at start (``Node.join_group`` and
    ``leave_group`` change one node's groups later). Nodes are real
    :class:`~wiremesh.runtime.node.Node` objects serving gRPC on 127.0.0.1.

    Any other keyword is a setting of every node: a field of one of
    :class:`~wiremesh.runtime.node.Node`'s settings (:class:`~wiremesh.runtime.node.NodeNetwork`,
    ``NodeMembership``, ``NodeTransport``, ``NodeMessaging``), as ``max_message_bytes=``,
    ``metrics_port=None`` or ``delivery=``; or a whole settings object, as
    ``transport=NodeTransport(...)``.

    ``gateway=True`` (or a :class:`~wiremesh.gateway.settings.GatewaySettings`,
    see :func:`gateway_settings`) also starts a browser gateway in the test's event loop,
    once every node is up: ``mesh.gateway``; :meth:`add_gateway` starts more.

    grpc runs here with the settings it took as it loaded. To run it as wiremesh's own
    processes do, call :func:`wiremesh.transport.grpc_core.prefer_loop_io` at the top of
    ``conftest.py``, before anything imports grpc; a mesh that starts without it sets
    the variable for the processes the test starts, and says so once (INFO).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *services: type[Service],
        replicas: Mapping[str, int] | None = None,
        replace: Mapping[str, Mapping[str, Any]] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        data_dir: Path | None = None,
        default_timeout: float = CALL_TIMEOUT,
        drain_grace: float = 1.0,
        broker: str | None = None,
        mesh_name: str | None = None,
        gateway: bool | GatewaySettings = False,
        **node_options: Any,
    ) -> None:
        self.services = services
        #: "embedded", an amqp url, or None: embedded when a service has message handlers
        self.broker_url = broker
        if broker is None and any(ServiceSpec.of(cls).needs_broker for cls in services):
            self.broker_url = "embedded"
        self.broker_server: BrokerServer | None = None
        #: names the mesh's queues on a shared broker (RabbitMQ): unique per TestMesh
        self.mesh_name = mesh_name or f"test-{secrets.token_hex(4)}"
        self.replicas = dict(replicas or {})
        self.replace = {k: dict(v) for k, v in (replace or {}).items()}
        self.groups = {k: tuple(v) for k, v in (groups or {}).items()}
        names = {ServiceSpec.of(cls).name for cls in services}
        options = (("replicas", self.replicas), ("replace", self.replace), ("groups", self.groups))
        for option, keys in options:
            unknown = sorted(set(keys) - names)
            if unknown:
                raise ConfigError(
                    f"TestMesh({option}=...) names {', '.join(map(repr, unknown))}, which "
                    f"this mesh does not run (services: {', '.join(sorted(names))})"
                )
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="wiremesh-test-"))
        self.default_timeout = default_timeout
        self.drain_grace = drain_grace
        self.node_options = node_options
        self._registry: RegistryServer | None = None  # made in the test's event loop
        self.nodes: list[Node] = []
        self._client: MeshClient | None = None
        self._gateway_settings = gateway
        self.gateways: list[Gateway] = []

    async def __aenter__(self) -> TestMesh:
        grpc_core.prefer_loop_io()
        self._registry = RegistryServer(ttl=TTL)
        await self._registry.start()
        try:
            if self.broker_url == "embedded":
                self.broker_server = BrokerServer(self.data_dir / "broker" / "broker.db")
                await self.broker_server.start()
            for cls in self.services:
                name = ServiceSpec.of(cls).name
                for _ in range(self.replicas.get(name, 1)):
                    await self.add_node(cls)
            self._client = MeshClient(
                self.registry.address,
                default_timeout=self.default_timeout,
                broker=self._new_broker(),
            )
            await self._client.start()
            await self.wait_for_nodes()
            if self._gateway_settings is not False:
                settings = None if self._gateway_settings is True else self._gateway_settings
                await self.add_gateway(settings)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _new_broker(self) -> Broker | None:
        if self.broker_server is not None:
            url = self.broker_server.url
        elif self.broker_url is not None:
            url = self.broker_url
        else:
            return None
        return open_broker(url, data_dir=self.data_dir, mesh=self.mesh_name)

    async def emit(self, topic: str, payload: Any = None, **options: Any) -> str:
        """Emit a durable event from outside the mesh (see ``MeshClient.emit``)."""
        return await self.client.emit(topic, payload, **options)

    async def send(self, target: str, payload: Any = None, **options: Any) -> str:
        """Send a durable command from outside the mesh (see ``MeshClient.send``)."""
        return await self.client.send(target, payload, **options)

    async def add_node(self, cls: type[Service]) -> Node:
        """Start one more node of ``cls`` (with the replacements given for its service)."""
        spec = ServiceSpec.of(cls)
        instance = cls()
        for attribute, replacement in self.replace.get(spec.name, {}).items():
            if not hasattr(cls, attribute):
                raise AttributeError(f"{cls.__qualname__} has no dependency {attribute!r}")
            setattr(instance, attribute, replacement)
        options = {
            "broker": self._new_broker(),
            "default_timeout": self.default_timeout,
            "drain_grace": self.drain_grace,
            "groups": self.groups.get(spec.name, ()),
            **self.node_options,
        }
        node = Node(
            instance,
            registry_address=self.registry.address,
            data_dir=self.data_dir / spec.name,
            **_node_arguments(options),
        )
        await node.start()
        self.nodes.append(node)
        if self._client is not None:
            await self.wait_for_nodes()
        for gateway in self.gateways:
            await gateway.wait_for_streams()
        return node

    async def wait_for_nodes(self, timeout: float = 5.0) -> None:
        """Wait until the client and every node see exactly the nodes this mesh runs, so
        that a call made next, from outside or from a handler, finds them all."""
        expected = {n.node_id for n in self.nodes}

        def settled(snapshot: MeshSnapshot) -> bool:
            # a stopped node is gone, not merely draining: it may still be listed as such
            listed = {n.node_id for n in snapshot.nodes}
            return listed == expected and all(n.serving for n in snapshot.nodes)

        views = [self.client.view, *(node.view for node in self.nodes)]
        await asyncio.gather(*(view.wait_for(settled, timeout) for view in views))

    async def add_gateway(
        self, settings: GatewaySettings | None = None, *, sweep_interval: float = 0.1
    ) -> Gateway:
        """Start one more gateway (default settings on a free port), connected to every
        node; it uses the mesh's development secret (see :meth:`token`). Its shared timer
        (idle and token expiry, pings) runs every ``sweep_interval`` seconds."""
        from wiremesh.gateway.server import Gateway

        specs = {spec.name: spec for spec in map(ServiceSpec.of, self.services)}
        gateway = Gateway(
            settings or gateway_settings(),
            registry_address=self.registry.address,
            root=self.data_dir,
            data_dir=self.data_dir,
            specs=specs,
            services=sorted(specs),
            sweep_interval=sweep_interval,
        )
        await gateway.start()
        self.gateways.append(gateway)
        try:
            await gateway.wait_for_streams()
        except BaseException:
            await gateway.stop()
            self.gateways.remove(gateway)
            raise
        return gateway

    @property
    def gateway(self) -> Gateway:
        """The first gateway (``TestMesh(..., gateway=True)``)."""
        if not self.gateways:
            raise RuntimeError("this TestMesh runs no gateway: use TestMesh(..., gateway=True)")
        return self.gateways[0]

    def token(
        self,
        subject: str = "dev",
        *,
        ttl: float = 3600.0,
        scopes: Sequence[str] = (),
        roles: Sequence[str] = (),
        **claims: Any,
    ) -> str:
        """A token the mesh's gateways accept (the development secret; ``aud`` and
        ``iss`` as the first gateway's settings require)."""
        from wiremesh.gateway.auth import dev_secret, mint_token

        secret = dev_secret(self.data_dir)
        assert secret is not None
        auth = self.gateways[0].settings.auth if self.gateways else None
        return mint_token(
            secret,
            subject=subject,
            ttl=ttl,
            scopes=scopes,
            roles=roles,
            audience=(auth.audience or None) if auth else None,
            issuer=(auth.issuer or None) if auth else None,
            claims=claims,
        )

    def ws_url(self, service: str, node_id: str | None = None, *, gateway: int = 0) -> str:
        """``ws://127.0.0.1:<port>/ws/<service>[/<node_id>]`` of a gateway."""
        base = self.gateways[gateway].ws_url if self.gateways else self.gateway.ws_url
        return f"{base}/ws/{service}" + (f"/{node_id}" if node_id else "")

    @property
    def registry(self) -> RegistryServer:
        """The mesh's embedded registry (``mesh.registry.address`` for your own clients)."""
        if self._registry is None:
            raise RuntimeError("the TestMesh is not running: use 'async with TestMesh(...)'")
        return self._registry

    @property
    def client(self) -> MeshClient:
        """The mesh's client from outside, e.g. ``mesh.client.nodes("orders")``."""
        if self._client is None:
            raise RuntimeError("the TestMesh is not running: use 'async with TestMesh(...)'")
        return self._client

    async def call(self, target: str, payload: Any = None, **options: Any) -> Any:
        """Call like any client outside the mesh would (see ``MeshClient.call``)."""
        return await self.client.call(target, payload, **options)

    async def multicast(self, target: str, payload: Any = None, **options: Any) -> MulticastResult:
        """Multicast like any client outside the mesh would (see ``Caller.multicast``)."""
        return await self.client.multicast(target, payload, **options)

    def nodes_of(self, service: str) -> list[Node]:
        return [n for n in self.nodes if n.spec.name == service]

    def instance(self, service: str, index: int = 0) -> Any:
        """The service object running in a node, to look at its state in assertions."""
        return self.nodes_of(service)[index].service

    async def stop_gateway(self, gateway: Gateway, grace: float = 0.5) -> None:
        """Stop one gateway (its sessions close with 1001)."""
        self.gateways.remove(gateway)
        await gateway.stop(grace)

    async def stop_node(self, node: Node | str, grace: float | None = None) -> None:
        """Drain and stop one node (by object or node id); the mesh sees it leave."""
        if isinstance(node, Node):
            found = node
        else:
            match = [n for n in self.nodes if n.node_id == node]
            if not match:
                running = ", ".join(n.node_id for n in self.nodes) or "none"
                raise NodeNotFound(f"this mesh runs no node {node!r} (nodes: {running})")
            found = match[0]
        self.nodes.remove(found)
        await found.stop(self.drain_grace if grace is None else grace)
        if self._client is not None:
            await self.wait_for_nodes()

    async def close(self) -> None:
        """Stop every node, the client and the registry, even when one of them fails."""
        errors: list[BaseException] = []
        for gateway in reversed(self.gateways):
            try:
                await gateway.stop(0.5)
            except Exception as exc:
                errors.append(exc)
        self.gateways.clear()
        for node in list(reversed(self.nodes)):
            try:
                await node.stop(self.drain_grace)
            except Exception as exc:  # the others still have to stop
                errors.append(exc)
        self.nodes.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._registry is not None:
            await self._registry.stop()
            self._registry = None
        if self.broker_server is not None:
            await self.broker_server.stop()
            self.broker_server = None
        if errors:
            raise errors[0]
