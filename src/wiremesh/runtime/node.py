"""A node: one running instance of a service, serving gRPC and registered in the mesh.

Start order: the service's ``on_start``, the gRPC server, the mesh view, then the lease
(so nobody is sent a call before the node can take it). Stop order, the drain: mark the
node draining (callers stop choosing it), release the lease, let in-flight calls finish
within the grace period, then ``on_stop`` and close. A node process first waits, still
serving, until the mesh knows it drains (:meth:`Node.announce_drain`), so that no caller
is refused a call on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from wiremesh.core.balancing import BalancerName
from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState
from wiremesh.core.names import check_group
from wiremesh.gateway.node_side import SOCKET_KEY, SocketHub, gateway_method_handler
from wiremesh.registry.base import Lease
from wiremesh.registry.embedded import EmbeddedRegistry
from wiremesh.registry.view import MeshView
from wiremesh.service import Service, ServiceSpec
from wiremesh.transport.client import Caller, channel_options
from wiremesh.transport.links import MAX_MESSAGE_KEY, Links, NodeLinks
from wiremesh.transport.publish import DEFAULT_QUEUE, Subscriptions, publisher_of
from wiremesh.transport.server import NodeServer
from wiremesh.transport.tls import TlsFiles

__all__ = ["Node", "new_node_id"]

log = logging.getLogger("wiremesh.node")

#: longest :meth:`Node.announce_drain` waits for the mesh to learn that the node drains
ANNOUNCE_WAIT = 2.0
#: after its own view shows it draining: time for other callers to read the same news
ANNOUNCE_MARGIN = 0.1


def new_node_id(service: str) -> str:
    return f"{service}-{secrets.token_hex(2)}"


class Node:
    def __init__(
        self,
        service: type[Service] | Service,
        *,
        registry_address: str,
        node_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        default_timeout: float = 10.0,
        drain_grace: float = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        heartbeat_interval: float = 0.5,
        balancer: BalancerName = "round_robin",
        balancers: Mapping[str, BalancerName] | None = None,
        tls: TlsFiles | None = None,
        metadata: Mapping[str, str] | None = None,
        links: bool = True,
        groups: Iterable[str] = (),
        publish_queue: int = DEFAULT_QUEUE,
    ) -> None:
        instance = service if isinstance(service, Service) else service()
        self.spec = ServiceSpec.of(type(instance))
        self.service = instance
        self.node_id = node_id or new_node_id(self.spec.name)
        self.drain_grace = drain_grace
        #: the named groups this node belongs to (multicast targets a group)
        self.groups: set[str] = {check_group(g) for g in groups}
        self.metadata = {**(metadata or {}), MAX_MESSAGE_KEY: str(max_message_bytes)}
        if self.spec.socket is not None:
            self.metadata[SOCKET_KEY] = "text" if self.spec.socket.text else "binary"
        self.registry = EmbeddedRegistry(
            registry_address,
            credentials=tls.channel_credentials() if tls else None,
            heartbeat_interval=heartbeat_interval,
        )
        self.view = MeshView(self.registry)
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
            balancer=balancer,
            balancers=balancers,
            max_message_bytes=max_message_bytes,
            credentials=credentials,
            links=self.links if links else None,
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
            host=host,
            port=port,
            default_timeout=default_timeout,
            max_message_bytes=max_message_bytes,
            credentials=tls.server_credentials() if tls else None,
            links=self.links,
            extra_handlers=[gateway_method_handler(self.sockets)],
        )
        self.node_links.methods = self.server.methods
        #: the ``@subscribe`` handlers: messages published to this node, per link in order,
        #: at most ``publish_queue`` waiting per link (more are dropped and counted)
        self.subscriptions = Subscriptions(
            self.spec,
            instance,
            node_id=self.node_id,
            caller=self.caller,
            default_timeout=default_timeout,
            max_queued=publish_queue,
        )
        self.node_links.deliver = self.subscriptions.deliver
        instance.node_id = self.node_id
        instance.data_dir = data_dir or Path(".wiremesh") / "data" / self.spec.name
        instance.mesh = self.caller
        self._lease: Lease | None = None
        self.started_at = 0.0

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            service=self.spec.name,
            address=self.server.address,
            pid=os.getpid(),
            started_at=self.started_at,
            methods={name: m.info for name, m in self.spec.methods.items()},
            metadata=self.metadata,
            groups=tuple(sorted(self.groups)),
            subscriptions=self.spec.patterns,
        )

    def stats(self) -> dict[str, int]:
        """The counters this node reports with its heartbeats (``wiremesh nodes`` shows them).

        Sending (publishes from this node): ``published``, ``publish_sent`` (frames queued,
        one per subscriber) and ``publish_dropped`` (frames dropped because the link to a
        subscriber was full). Receiving: ``publish_received``, ``publish_delivered``,
        ``publish_delivery_dropped`` (this node's handlers could not keep up),
        ``publish_delivery_queued``, ``publish_unmatched``, ``publish_invalid`` (payloads
        that did not validate) and ``publish_failed`` (handlers that raised).
        """
        return {**publisher_of(self.caller).stats(), **self.subscriptions.stats()}

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

    async def start(self) -> None:
        self.started_at = time.time()
        self.service.data_dir.mkdir(parents=True, exist_ok=True)
        await self.service.on_start()
        await self.server.start()
        await self.view.start()
        self._lease = await self.registry.lease(self.info)
        self._lease.stats = self.stats
        log.info("node %s serving %s at %s", self.node_id, self.spec.name, self.address)

    async def announce_drain(self, timeout: float = ANNOUNCE_WAIT) -> None:
        """Tell the mesh this node drains, and keep serving until callers know it.

        Callers stop choosing a node once their view shows it draining; until then they
        may still send it calls, which the server, still up, serves. This node's own view
        gets the news in the same broadcast as every caller's, so once it shows here (plus
        a moment for callers to read it) no new call is on its way. Call it before
        :meth:`stop` for a drain that costs callers nothing (the node process does);
        ``timeout`` bounds the wait when the registry does not answer.
        """
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

    async def stop(self, grace: float | None = None) -> None:
        """Drain: no new calls, in-flight calls finish within ``grace`` seconds."""
        grace = self.drain_grace if grace is None else grace
        if self._lease is not None:
            await self._lease.set_state(NodeState.DRAINING)
        log.info("node %s draining (grace %.1fs)", self.node_id, grace)
        started = time.monotonic()
        # browser sessions: closed with 1012 (their browsers reconnect to a live node)
        await self.sockets.close(grace)
        # calls on links: refuse new ones (callers retry them elsewhere), finish the rest
        self.node_links.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.node_links.idle.wait(), grace)
        await self.links.close()
        # the messages that arrived before the links closed run within what is left
        await self.subscriptions.close(max(0.0, grace - (time.monotonic() - started)))
        await self.server.stop(max(0.0, grace - (time.monotonic() - started)))
        if self._lease is not None:
            await self._lease.release()
            self._lease = None
        try:
            await self.service.on_stop()
        finally:
            await self.view.close()
            await self.caller.close()
            await self.registry.close()
        log.info("node %s stopped", self.node_id)
