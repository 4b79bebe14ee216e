"""Calling the mesh from outside it: ``wiremesh.connect()``.

>>> async with await connect() as mesh:               # the mesh running in this folder
...     total = await mesh.call("pricing.quote", {"sku": "A-1", "qty": 3})

``connect()`` finds the running mesh through ``.wiremesh/mesh.json`` (written by
``wiremesh run``), or takes a registry address. ``emit`` and ``send`` put durable
messages on the mesh's broker; ``mesh.channels.publish(channel, data)`` reaches a
channel's subscribers (``docs/channels.md``). The client watches the registry, so it
balances over live nodes and sees nodes come and go without a lookup per call.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from wiremesh.channels import open_engine
from wiremesh.channels.node import Channels
from wiremesh.core.balancing import BalancerName
from wiremesh.core.breaker import BreakerSettings
from wiremesh.core.channels import MeshRules
from wiremesh.core.codec import CodecName
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import (
    BALANCER,
    CALL_TIMEOUT,
    MAX_MESSAGE_BYTES,
    MESH_NAME,
    START_TIMEOUT,
)
from wiremesh.core.gather import Mode, MulticastResult
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.core.names import is_redis_url, split_mesh
from wiremesh.errors import BrokerUnavailable, Unavailable
from wiremesh.gateway.socket_hub import CHANNELS_KEY
from wiremesh.messaging.backends import open_broker
from wiremesh.messaging.base import Broker
from wiremesh.messaging.outbound import Outbound
from wiremesh.registry.backends import open_registry
from wiremesh.registry.view import MeshView
from wiremesh.runtime.meshfile import MeshFile
from wiremesh.transport import grpc_core
from wiremesh.transport.client import Caller, channel_options
from wiremesh.transport.peer_links import Links
from wiremesh.transport.streams import Stream
from wiremesh.transport.tls import TlsFiles

__all__ = ["MESH_VARIABLE", "MeshClient", "connect"]

#: the environment variable naming the mesh to reach (a folder, host:port or a Redis URL)
MESH_VARIABLE = "WIREMESH_MESH"


class MeshClient:
    """A connection to one mesh. Use it as an async context manager, or call ``close()``."""

    def __init__(
        self,
        registry_address: str,
        *,
        default_timeout: float = CALL_TIMEOUT,
        balancer: BalancerName = BALANCER,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tls: TlsFiles | None = None,
        identity: str | None = None,
        links: bool = True,
        broker: str | Broker | None = None,
        mesh: str = MESH_NAME,
        data_dir: Path | None = None,
        quorum_queues: bool = False,
        join_secret: str | None = None,
        breaker: BreakerSettings | None = None,
    ) -> None:
        credentials = tls.channel_credentials() if tls else None
        if isinstance(broker, str):
            broker = open_broker(
                broker,
                data_dir=data_dir or Path(".wiremesh"),
                mesh=mesh,
                tls=tls,
                quorum_queues=quorum_queues,
            )
        #: the broker ``emit`` and ``send`` go through (None: the mesh has none known here)
        self.broker: Broker | None = broker
        self.outbound = (
            Outbound(broker, sender=identity or "client", default_timeout=default_timeout)
            if broker is not None
            else None
        )
        self.links = (
            Links(
                local_id=f"client-{secrets.token_hex(3)}",
                credentials=credentials,
                options=channel_options(max_message_bytes),
                max_message_bytes=max_message_bytes,
            )
            if links
            else None
        )
        self.registry = open_registry(registry_address, mesh=mesh, tls=tls)
        self.view = MeshView(self.registry)
        rules = MeshRules(CHANNELS_KEY)
        owner = identity or f"client-{secrets.token_hex(4)}"
        #: the mesh's channels: publish, history, presence (``join_secret``: what the
        #: embedded registry admits with, ``mesh.json``'s; not needed with TLS or Redis)
        self.channels = Channels(
            lambda: open_engine(
                registry_address, mesh=mesh, tls=tls, join_secret=join_secret, owner=owner
            ),
            lambda: rules(self.view.snapshot),
            dict,
        )
        self.caller = Caller(
            self.view,
            identity=identity,
            default_timeout=default_timeout,
            balancer=balancer,
            max_message_bytes=max_message_bytes,
            credentials=credentials,
            links=self.links,
            breaker=breaker,
        )

    async def start(self, timeout: float = START_TIMEOUT) -> MeshClient:
        await self.view.start(timeout)
        return self

    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        deadline: Deadline | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Call ``service.method`` (or ``service@node-id.method``); see ``Context.call``."""
        return await self.caller.call(
            target,
            payload,
            timeout=timeout,
            node=node,
            returns=returns,
            codec=codec,
            deadline=deadline,
            metadata=metadata,
        )

    def stream(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        deadline: Deadline | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Stream:
        """A streaming call of ``service.method``, to iterate; see ``Context.stream``."""
        return self.caller.stream(
            target,
            payload,
            timeout=timeout,
            node=node,
            returns=returns,
            codec=codec,
            deadline=deadline,
            metadata=metadata,
        )

    async def multicast(
        self,
        target: str,
        payload: Any = None,
        *,
        mode: str | Mode = "all",
        timeout: float | None = None,
        deadline: Deadline | None = None,
        group: str | None = None,
        nodes: Sequence[str] | None = None,
        codec: CodecName = "msgpack",
        returns: Any = None,
        metadata: Mapping[str, str] | None = None,
    ) -> MulticastResult:
        """Call ``service.method`` on many nodes at once (all of the service's, a ``group``,
        or the ``nodes`` listed) and gather the replies; see ``docs/multicast.md``."""
        return await self.caller.multicast(
            target,
            payload,
            mode=mode,
            timeout=timeout,
            deadline=deadline,
            group=group,
            nodes=nodes,
            codec=codec,
            returns=returns,
            metadata=metadata,
        )

    async def publish(
        self, topic: str, payload: Any = None, *, codec: CodecName = "msgpack"
    ) -> int:
        """Fire-and-forget ``payload`` to every node subscribed to ``topic``."""
        return await self.caller.publish(topic, payload, codec=codec)

    async def emit(
        self,
        topic: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        """Emit a durable event; returns its id once the broker durably accepted it (see
        ``Context.emit``, for ``delay`` and ``at`` too)."""
        return await self._outbound().emit(
            topic, payload, codec=codec, headers=headers, timeout=timeout, delay=delay, at=at
        )

    async def send(
        self,
        target: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        """Send a durable command to ``service.command``; see ``Context.send``."""
        return await self._outbound().send(
            target, payload, codec=codec, headers=headers, timeout=timeout, delay=delay, at=at
        )

    def _outbound(self) -> Outbound:
        if self.outbound is None:
            raise BrokerUnavailable(
                "this client knows no broker: connect() to a running mesh folder, or give "
                "MeshClient(broker=...)"
            )
        return self.outbound

    @property
    def snapshot(self) -> MeshSnapshot:
        return self.view.snapshot

    def nodes(self, service: str | None = None) -> list[NodeInfo]:
        """The live nodes, of one service or all, as this client sees them now."""
        nodes = self.view.snapshot.nodes
        return [n for n in nodes if service is None or n.service == service]

    async def close(self) -> None:
        await self.channels.close()
        await self.view.close()
        if self.links is not None:
            await self.links.close()
        await self.caller.close()
        await self.registry.close()
        if self.broker is not None:
            await self.broker.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect(
    where: str | os.PathLike[str] | None = None,
    *,
    timeout: float = START_TIMEOUT,
    default_timeout: float | None = None,
    tls: TlsFiles | None = None,
) -> MeshClient:
    """Connect to a mesh and return a started :class:`MeshClient`. ``where`` is a folder
    where ``wiremesh run`` runs, the address ``host:port`` of an embedded registry, or a
    Redis registry's URL (``redis://host:6379/0``, with ``#name`` when the database holds
    more than one mesh). Without it: the environment variable ``WIREMESH_MESH``, else
    this folder.

    Unless it is set, it sets ``GRPC_EXPERIMENTS`` for the processes the program starts
    from then on (:func:`wiremesh.transport.grpc_core.prefer_loop_io`); grpc in this
    process took its settings as it loaded: call that function before importing grpc to
    choose them here too."""
    grpc_core.prefer_loop_io()
    text = os.fspath(where) if where is not None else os.environ.get(MESH_VARIABLE) or "."
    if is_redis_url(text):
        from wiremesh.registry.redis import find_mesh

        url, name = split_mesh(text)
        name = name or await find_mesh(url, tls=tls, timeout=timeout)
        client = MeshClient(
            url, default_timeout=default_timeout or CALL_TIMEOUT, tls=tls, mesh=name
        )
    elif _looks_like_address(text):
        client = MeshClient(text, default_timeout=default_timeout or CALL_TIMEOUT, tls=tls)
    else:
        mesh = MeshFile.find(Path(text))
        client = MeshClient(
            mesh.registry,
            default_timeout=default_timeout or mesh.default_timeout,
            max_message_bytes=mesh.max_message_bytes,
            tls=tls or mesh.client_tls(),
            broker=mesh.broker,
            mesh=mesh.name,
            quorum_queues=mesh.quorum_queues,
            join_secret=mesh.join_secret,
        )
    try:
        return await client.start(timeout)
    except Unavailable as exc:
        await client.close()  # its registry channel, opened for nothing
        raise Unavailable(f"no registry at {client.registry.address}: {exc.message}") from None
    except BaseException:
        await client.close()
        raise


def _looks_like_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())
