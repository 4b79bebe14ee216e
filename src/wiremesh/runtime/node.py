"""A node: one running instance of a service, serving gRPC and registered in the mesh.

Every kind of work comes in through an entrypoint
(:class:`~wiremesh.transport.entrypoint.Entrypoint`: ``start``, ``drain``, ``close``),
and the node treats them alike, in two ordered lists: :attr:`Node.handed_over` (message
handlers, timers, browser sessions: their new work can go to other nodes) and
:attr:`Node.serving` (calls over links, publishes, the gRPC server and its unary calls:
they serve the work in flight).

Start order: the broker client and the outbox relay, the service's ``on_start``, the
serving entrypoints (the gRPC server), the mesh view, the handed-over ones (the message
handlers: their queues are bound before anyone sees the node), then the lease (so nobody
is sent a call before the node can take it). Stop
order, the drain: mark the node draining (callers stop choosing it), drain the handed-over
entrypoints (stop taking messages and let running handlers finish; close the browser
sessions), then the serving ones one after the other (refuse calls of new work and let
in-flight calls finish, close the links; the publishes already queued; the gRPC server),
all within the grace period; hand the outbox over, then ``on_stop`` and close. A node
process first waits, still serving, until the mesh knows it drains
(:meth:`Node.announce_drain`), so that no caller is refused a call on its way; then it
takes no new work and waits until nothing in flight may still need it
(:meth:`Node.finish_work`, by the rules of :mod:`wiremesh.core.drain`): no call runs on
it, no serving caller's work in flight may call it again, and no other draining node is
still working. Only then does it stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wiremesh.channels import open_engine
from wiremesh.channels.node import Channels
from wiremesh.core.channels import MeshRules, rules_to_text
from wiremesh.core.drain import DONE, DRAIN_KEY, DRAINS_WITH_KEY, WORKING, Drain, began_at
from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState
from wiremesh.core.names import check_group
from wiremesh.errors import ConfigError
from wiremesh.gateway.socket_hub import (
    CHANNELS_KEY,
    SOCKET_KEY,
    SocketHub,
    gateway_method_handler,
)
from wiremesh.messaging.base import Broker
from wiremesh.messaging.consumer import Consumers
from wiremesh.messaging.outbound import Outbound, attach, detach
from wiremesh.messaging.outbox import Relay
from wiremesh.messaging.store import Store
from wiremesh.messaging.timers import Timers
from wiremesh.observability.endpoint import MetricsEndpoint
from wiremesh.observability.metrics import (
    METRICS_KEY,
    BreakerCollector,
    BulkheadCollector,
    MeshMetrics,
    RegistryReachable,
    StatsCollector,
)
from wiremesh.proto import link_pb2
from wiremesh.registry.backends import open_registry
from wiremesh.registry.base import Lease
from wiremesh.registry.view import MeshView
from wiremesh.runtime.advertise import WILDCARDS, advertised_host, with_host
from wiremesh.runtime.node_settings import NodeMembership, NodeMessaging, NodeNetwork, NodeTransport
from wiremesh.runtime.private import private_folder
from wiremesh.service import Service, ServiceSpec
from wiremesh.transport.client import Caller, channel_options
from wiremesh.transport.entrypoint import Entrypoint, stop
from wiremesh.transport.peer_links import MAX_MESSAGE_KEY, Links, NodeLinks
from wiremesh.transport.publish import Subscriptions, publisher_of
from wiremesh.transport.server import NodeServer
from wiremesh.transport.wire import WORK_AGE_KEY

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "Node",
    "NodeMembership",
    "NodeMessaging",
    "NodeNetwork",
    "NodeTransport",
    "StoreWithoutUrl",
    "new_node_id",
]

log = logging.getLogger("wiremesh.node")

#: longest :meth:`Node.announce_drain` waits for the mesh to learn that the node drains
ANNOUNCE_WAIT = 2.0
#: seconds between two prunings of the inbox
INBOX_PRUNE_EVERY = 3600.0
#: after its own view shows it draining: time for other callers to read the same news
ANNOUNCE_MARGIN = 0.1
#: seconds between two looks at whether the work in flight still needs a draining node
FINISH_POLL = 0.05


def new_node_id(service: str) -> str:
    return f"{service}-{secrets.token_hex(2)}"


class StoreWithoutUrl(Store):
    """The store of a node whose mesh spans hosts (a Redis registry) when its service has
    no ``store`` url.

    The default, a SQLite file in the service's data folder, would give each host a
    database of its own, and the service's data would split between hosts without a
    word. So its first use (a transaction, ``create_all``, anything that needs the
    database) raises :class:`ConfigError` naming ``services.<name>.store`` instead: in
    ``on_start`` the node cannot start (exit 78, not restarted); in a handler, that call
    or message fails. A service that never opens its store (a stateless one) needs no
    url; one that wants a file of each host's own names it,
    ``store = "sqlite+aiosqlite:////var/lib/app/cache.db"``.
    """

    @property
    def engine(self) -> AsyncEngine:
        problem = (
            f"services.{self.service}.store: {self.service} has no store url, and its nodes "
            "run on several hosts (a Redis registry): a SQLite file of each host's own would "
            'split its data. Set store = "postgresql+asyncpg://user@host/db" (one database '
            'for every host), or store = "sqlite+aiosqlite:///path.db" to keep a file per '
            "host on purpose"
        )
        log.error("%s", problem)
        raise ConfigError(problem)


class Node:
    """One running instance of a service: its gRPC server, its registry lease, and every
    kind of entrypoint that brings it work.

    ``registry_address`` is the registry to join (``host:port`` of an embedded one, or a
    ``redis://`` url); ``broker`` the durable messaging's client (None: no ``@on_event``
    or ``@command`` handler runs); ``data_dir`` the service's data folder (default
    ``.wiremesh/data/<service>``). The settings come in groups, each default defined once:
    :class:`NodeNetwork`, :class:`NodeMembership`, :class:`NodeTransport`,
    :class:`NodeMessaging`.
    """

    def __init__(
        self,
        service: type[Service] | Service,
        *,
        registry_address: str,
        node_id: str | None = None,
        data_dir: Path | None = None,
        broker: Broker | None = None,
        network: NodeNetwork = NodeNetwork(),
        membership: NodeMembership = NodeMembership(),
        transport: NodeTransport = NodeTransport(),
        messaging: NodeMessaging = NodeMessaging(),
    ) -> None:
        instance = service if isinstance(service, Service) else service()
        self.spec = ServiceSpec.of(type(instance))
        self.service = instance
        self.node_id = node_id or new_node_id(self.spec.name)
        self.network = network
        self.membership = membership
        self.transport = transport
        self.messaging = messaging
        self.drain_grace = membership.drain_grace
        #: which calls the node takes while it drains, and what it waits for before it goes
        self.drain = Drain()
        #: the supervisor this node drains with (``host/pid``; see :meth:`finish_work`)
        self.drains_with = membership.drains_with
        #: the named groups this node belongs to (multicast targets a group)
        self.groups: set[str] = {check_group(g) for g in membership.groups}
        max_message_bytes = transport.max_message_bytes
        default_timeout = transport.default_timeout
        self.metadata = {**membership.metadata, MAX_MESSAGE_KEY: str(max_message_bytes)}
        if self.spec.socket is not None:
            self.metadata[SOCKET_KEY] = "text" if self.spec.socket.text else "binary"
        owned = type(instance).owns_channels
        if owned:
            self.metadata[CHANNELS_KEY] = rules_to_text(owned)
        if self.drains_with is not None:
            self.metadata[DRAINS_WITH_KEY] = self.drains_with
        tls = network.tls
        self.registry = open_registry(
            registry_address,
            mesh=membership.mesh,
            tls=tls,
            heartbeat_interval=membership.heartbeat_interval,
            ttl=membership.ttl,
            join_secret=membership.join_secret,
        )
        self.view = MeshView(self.registry, grace=membership.ttl + 1.0)
        #: the host other nodes reach this one at (``[mesh] advertise``; see
        #: :mod:`wiremesh.runtime.advertise`)
        self.advertise = advertised_host(network.host, registry_address, network.advertise)
        self.host = network.host
        #: this node's Prometheus metrics, served at ``/metrics`` on ``metrics_port`` (0: a
        #: free port; None: not served); the address is in the node's registry metadata
        self.metrics = MeshMetrics()
        self.metrics_endpoint = (
            MetricsEndpoint(
                self.metrics.registry, network.metrics_host or network.host, network.metrics_port
            )
            if network.metrics_port is not None
            else None
        )
        credentials = tls.channel_credentials() if tls else None
        self.node_links = NodeLinks(
            service=self.spec.name,
            node_id=self.node_id,
            methods={},
            default_timeout=default_timeout,
        )
        self.links = Links(
            local_id=self.node_id,
            local_service=self.spec.name,
            handler=self.node_links,
            credentials=credentials,
            options=channel_options(max_message_bytes),
            max_message_bytes=max_message_bytes,
        )
        self.caller = Caller(
            self.view,
            identity=f"{self.spec.name}@{self.node_id}",
            default_timeout=default_timeout,
            balancer=transport.balancer,
            balancers=transport.balancers,
            breaker=transport.breaker,
            breakers=transport.breakers,
            max_message_bytes=max_message_bytes,
            credentials=credentials,
            links=self.links if transport.links else None,
            metrics=self.metrics,
        )
        #: the browser sessions pinned to this node, and the gateways' streams
        self.sockets = SocketHub(
            self.spec, instance, node_id=self.node_id, max_message_bytes=max_message_bytes
        )
        self.server = NodeServer(
            self.spec,
            instance,
            node_id=self.node_id,
            caller=self.caller,
            host=network.host,
            port=network.port,
            default_timeout=default_timeout,
            max_message_bytes=max_message_bytes,
            credentials=tls.server_credentials() if tls else None,
            links=self.links,
            metrics=self.metrics,
            extra_handlers=[gateway_method_handler(self.sockets)],
            drain=self.drain,
        )
        self.node_links.methods = self.server.methods
        self.node_links.admits = self._admits
        #: the ``@subscribe`` handlers: messages published to this node, per link in order,
        #: at most ``publish_queue`` waiting per link (more are dropped and counted)
        self.subscriptions = Subscriptions(
            self.spec,
            instance,
            node_id=self.node_id,
            caller=self.caller,
            default_timeout=default_timeout,
            max_queued=transport.publish_queue,
        )
        self.node_links.deliver = self.subscriptions.deliver
        #: the channels, as this node's service uses them (``self.channels``)
        rules = MeshRules(
            CHANNELS_KEY,
            (self.spec.name, self.metadata[CHANNELS_KEY]) if owned else None,
        )
        self.channels = Channels(
            lambda: open_engine(
                registry_address,
                mesh=membership.mesh,
                tls=tls,
                join_secret=membership.join_secret,
                owner=self.node_id,
            ),
            lambda: rules(self.view.snapshot),
            lambda: self.sockets.streams,
        )
        instance.channels = self.channels
        instance.node_id = self.node_id
        instance.data_dir = data_dir or Path(".wiremesh") / "data" / self.spec.name
        instance.mesh = self.caller
        #: the service's own database (opened on first use); with a Redis registry and no
        #: url, a store whose first use fails (see :class:`StoreWithoutUrl`)
        unshared = messaging.store_url is None and registry_address.startswith(
            ("redis://", "rediss://")
        )
        self.store = (StoreWithoutUrl if unshared else Store)(
            messaging.store_url,
            path=instance.data_dir / "store.db",
            service=self.spec.name,
            sender=self.node_id,
            pool_size=messaging.pool_size,
            max_overflow=messaging.max_overflow,
        )
        instance.store = self.store
        #: the durable messaging side: None when the node runs without a broker
        self.broker = broker
        self.relay: Relay | None = None
        #: the ``@on_event`` and ``@command`` handlers (none without a broker)
        self.consumers = Consumers()
        #: seconds a handled message's id stays in the inbox (0: for ever)
        self.inbox_keep = messaging.inbox_keep
        self._pruner: asyncio.Task[None] | None = None
        #: how the message handlers and the timers run
        handling: dict[str, Any] = {
            "node_id": self.node_id,
            "caller": self.caller,
            "store": self.store,
            "policy": messaging.delivery,
            "timeout": messaging.handler_timeout,
        }
        if broker is not None:
            publish_timeout = messaging.publish_timeout or default_timeout
            attach(
                self.caller,
                Outbound(broker, sender=self.node_id, default_timeout=publish_timeout),
            )
            self.relay = Relay(self.store, broker, timeout=publish_timeout)
            self.consumers = Consumers.of(
                instance, self.spec, broker, prefetch=messaging.prefetch, **handling
            )
        elif self.spec.handlers:
            log.warning(
                "%s has message handlers but this node runs without a broker: they get nothing",
                self.spec.name,
            )
        #: the ``@timer`` and ``@cron`` methods (once per mesh: through the broker)
        self.timers = Timers.of(instance, self.spec, broker, **handling)
        #: the entrypoints whose new work other nodes take (a message left unsettled goes
        #: back to the broker, a browser reconnects to a live node): drained as soon as
        #: this node takes no new work (:meth:`finish_work`), together; in this order by
        #: :meth:`stop` when nothing drained them before
        self.handed_over: tuple[Entrypoint, ...] = (
            self.consumers,
            self.timers,
            _Sessions(self.sockets),
        )
        #: the entrypoints that serve the work in flight, drained one after the other by
        #: :meth:`stop`: calls over links (new work refused, the running calls finish, the
        #: links close), then the publishes that arrived before the links closed, then the
        #: gRPC server (its last unary calls, and it stops). They start the other way round.
        self.serving: tuple[Entrypoint, ...] = (
            _LinkCalls(self.node_links, self.links, self._refuse_new_work),
            self.subscriptions,
            self.server,
        )
        #: the entrypoints drained already (finish_work drains some before stop)
        self._drained: set[Entrypoint] = set()
        self._lease: Lease | None = None
        self.started_at = 0.0

    @property
    def address(self) -> str:
        """The address the mesh reaches this node at."""
        return with_host(self.server.address, self.advertise)

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            service=self.spec.name,
            address=self.address,
            pid=os.getpid(),
            started_at=self.started_at,
            methods={name: m.info for name, m in self.spec.methods.items()},
            metadata=self.metadata,
            groups=tuple(sorted(self.groups)),
            subscriptions=self.spec.patterns,
            host=self.advertise,
        )

    def stats(self) -> dict[str, int]:
        """The counters this node reports with its heartbeats (``wiremesh nodes`` shows them).

        Sending (publishes from this node): ``published``, ``publish_sent`` (frames queued,
        one per subscriber) and ``publish_dropped`` (frames dropped because the link to a
        subscriber was full). Receiving: ``publish_received``, ``publish_delivered``,
        ``publish_delivery_dropped`` (this node's handlers could not keep up),
        ``publish_delivery_queued``, ``publish_unmatched``, ``publish_invalid`` (payloads
        that did not validate) and ``publish_failed`` (handlers that raised). Durable
        messages handled here: ``messages_handled``, ``messages_duplicates`` (dropped by the
        inbox), ``messages_retried``, ``messages_dead`` and ``messages_waiting`` (handed
        over by the broker, waiting for a free worker). Timers: ``ticks_run``,
        ``ticks_skipped``, ``ticks_retried``, ``ticks_failed``
        (:meth:`~wiremesh.messaging.timers.Timers.stats`).
        """
        return {
            **publisher_of(self.caller).stats(),
            **self.subscriptions.stats(),
            **self.consumers.stats(),
            **self.timers.stats(),
        }

    async def join_group(self, group: str) -> None:
        """Join a named group now; multicasts to the group reach this node from then on."""
        self.groups.add(check_group(group))
        if self._lease is not None:
            await self._lease.update(self.info)

    async def leave_group(self, group: str) -> None:
        """Leave a named group now."""
        self.groups.discard(group)
        if self._lease is not None:
            await self._lease.update(self.info)

    def _stats_and_queues(self) -> tuple[dict[str, int], list[tuple[str, int]]]:
        queues = [(peer, figures["queued"]) for peer, figures in self.links.stats().items()]
        return self.stats(), queues

    async def start(self) -> None:
        self.started_at = time.time()
        private_folder(self.service.data_dir)
        if self.broker is not None:
            await self.broker.start()
        await self.service.on_start()
        if self.relay is not None:
            await self.relay.start()
        for entrypoint in reversed(self.serving):  # the gRPC server first
            await entrypoint.start()
        if self.metrics_endpoint is not None:
            self.metrics.add_collector(
                StatsCollector(
                    self._stats_and_queues,
                    loop=asyncio.get_running_loop(),
                    gauges=("publish_delivery_queued", "messages_waiting"),
                )
            )
            self.metrics.add_collector(RegistryReachable(lambda: self.view.reachable))
            breakers = self.caller.breakers
            self.metrics.add_collector(
                BreakerCollector(
                    lambda: (
                        [(s, n, state.value) for s, n, state in breakers.not_closed()],
                        dict(breakers.opened),
                    )
                )
            )
            methods = list(self.server.methods.values())
            self.metrics.add_collector(
                BulkheadCollector(
                    lambda: [s for m in methods if (s := m.bulkhead_state()) is not None]
                )
            )
            self.metrics_endpoint.start()
            bound = self.metrics_endpoint.host
            shown = self.advertise if bound in WILDCARDS or bound == self.host else bound
            self.metadata[METRICS_KEY] = with_host(self.metrics_endpoint.address, shown)
        await self.view.start()
        # the message handlers before the lease: a node the mesh sees serving has its
        # queues bound, so an event emitted as soon as it appears is not lost for want of
        # a queue (a service's first run)
        for entrypoint in reversed(self.handed_over):
            await entrypoint.start()
        self._lease = await self.registry.lease(self.info)
        self._lease.stats = self.stats
        if self.consumers.runners and self.inbox_keep > 0:
            self._pruner = asyncio.create_task(
                self._prune_inbox(), name=f"wiremesh-inbox-{self.node_id}"
            )
        log.info("node %s serving %s at %s", self.node_id, self.spec.name, self.address)

    async def _prune_inbox(self) -> None:
        """Every :data:`INBOX_PRUNE_EVERY` seconds, drop the inbox rows older than
        :attr:`inbox_keep`, once the store is in use (a redelivery comes within minutes,
        not weeks). A failure is logged and tried again next time."""
        while True:
            await asyncio.sleep(INBOX_PRUNE_EVERY)
            if not self.store.opened:
                continue
            try:
                dropped = await self.store.forget_handled(self.inbox_keep)
            except Exception as exc:
                log.warning("node %s: pruning the inbox failed: %s", self.node_id, exc)
                continue
            if dropped:
                log.debug("node %s: %d old inbox rows dropped", self.node_id, dropped)

    async def announce_drain(self, timeout: float = ANNOUNCE_WAIT) -> None:
        """Tell the mesh this node drains, and keep serving until callers know it.

        Callers stop choosing a node once their view shows it draining; until then they
        may still send it calls, which the server, still up, serves. This node's own view
        gets the news in the same broadcast as every caller's, so once it shows here (plus
        a moment for callers to read it) no new call is on its way. Call it before
        :meth:`stop` for a drain that costs callers nothing (the node process does);
        ``timeout`` bounds the wait when the registry does not answer.
        """
        self.server.mark_draining()  # health: NOT_SERVING, and its watches end
        if self._lease is None:
            return
        await self._lease.set_state(NodeState.DRAINING)
        node_id = self.node_id

        def announced(snapshot: MeshSnapshot) -> bool:
            node = snapshot.by_id.get(node_id)
            return node is None or not node.serving

        with contextlib.suppress(TimeoutError):
            await self.view.wait_for(announced, timeout)
            await asyncio.sleep(ANNOUNCE_MARGIN)

    def _admits(self, frame: link_pb2.Frame) -> bool:
        """Whether the node, draining, takes a call a link brought: one of work that began
        before its drain did (see :attr:`drain`)."""
        if self.drain.since is None:  # the links refuse, but no drain began: all is new
            return False
        return self.drain.admits(began_at(frame.metadata.get(WORK_AGE_KEY), time.monotonic()))

    def _refuse_new_work(self) -> None:
        """From now on, calls of new work are refused (unrun: callers go elsewhere), on
        links and on the unary path alike; calls of work in flight still run."""
        self.server.mark_draining()
        self.drain.begin(time.monotonic())
        self.node_links.draining = True

    async def _stop(self, entrypoint: Entrypoint, until: float) -> None:
        """Drain ``entrypoint`` until ``until`` and close it, unless that was done."""
        if entrypoint not in self._drained:
            self._drained.add(entrypoint)
            await stop(entrypoint, until)

    async def finish_work(self, until: float) -> None:
        """Take no new work from now on, and wait (at most until ``until``, on
        ``time.monotonic()``) until nothing in flight may still need this node.

        New calls, messages and browser frames are refused; the calls of work that was in
        flight run (see :mod:`wiremesh.core.drain`). The node says in its registry record
        whether its own part is done (``wm.drain``), and returns once it is and no other
        node that drains (or that drains with the same supervisor) is still working:
        callees thus stay while their callers finish, with no call graph known. Call it
        after :meth:`announce_drain` and before :meth:`stop`.
        """
        self._refuse_new_work()
        await asyncio.gather(*(self._stop(e, until) for e in self.handed_over))
        said: str | None = None
        while True:
            now = time.monotonic()
            snapshot = self.view.snapshot
            settled = self.drain.settled(now, snapshot)
            state = DONE if settled else WORKING
            if state != said and self._lease is not None:
                said = state
                # a new dict: a record already handed to the registry keeps its own
                self.metadata = {**self.metadata, DRAIN_KEY: state}
                await self._lease.update(self.info)
            working = self.drain.working(snapshot, self.node_id, self.drains_with)
            if settled and not working:
                return
            if now >= until:
                holding = self.drain.holding(now, snapshot)
                log.warning(
                    "node %s: the grace ended with %d call(s) running here%s%s",
                    self.node_id,
                    self.drain.running,
                    f", work in flight on {', '.join(holding)}" if holding else "",
                    f", {', '.join(working)} still working" if working else "",
                )
                return
            await asyncio.sleep(FINISH_POLL)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: no new work, the work in flight finishes within ``grace`` seconds (the
        node's ``drain_grace`` by default), each kind of entrypoint in its turn (see
        :attr:`handed_over` and :attr:`serving`); then the node lets go of the mesh."""
        grace = self.drain_grace if grace is None else grace
        if self._lease is not None:
            await self._lease.set_state(NodeState.DRAINING)
        log.info("node %s draining (grace %.1fs)", self.node_id, grace)
        until = time.monotonic() + grace
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        for entrypoint in (*self.handed_over, *self.serving):
            await self._stop(entrypoint, until)
        if self._lease is not None:
            await self._lease.release()
            self._lease = None
        if self.relay is not None:
            await self.relay.close(max(0.5, until - time.monotonic()))
        try:
            await self.service.on_stop()
        finally:
            detach(self.caller)
            if self.broker is not None:
                await self.broker.close()
            await self.store.close()
            await self.channels.close()
            await self.view.close()
            await self.caller.close()
            await self.registry.close()
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.stop()
        log.info("node %s stopped", self.node_id)


class _Sessions:
    """The browser sessions of a node (its :class:`SocketHub`), as an entrypoint: drained,
    they close with 1012 (their browsers reconnect to a live node) and their close hooks
    run."""

    def __init__(self, hub: SocketHub) -> None:
        self.hub = hub

    async def start(self) -> None:
        """Nothing to start: gateways open their streams to the node's gRPC server."""

    async def drain(self, deadline: float) -> None:
        await self.hub.close(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Nothing left: draining the hub ended its streams and its handlers."""


class _LinkCalls:
    """The calls that come over mesh links, as an entrypoint: drained, they are refused
    when of new work (``refuse``: the node's rule, for the unary path too), those running
    finish; closed, every link of the node closes."""

    def __init__(self, node_links: NodeLinks, links: Links, refuse: Callable[[], None]) -> None:
        self.node_links = node_links
        self.links = links
        self.refuse = refuse

    async def start(self) -> None:
        """Nothing to start: peers open links to the node's gRPC server."""

    async def drain(self, deadline: float) -> None:
        self.refuse()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.node_links.idle.wait(), max(0.0, deadline - time.monotonic())
            )

    async def close(self) -> None:
        await self.links.close()
