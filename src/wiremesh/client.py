"""Calling the mesh from outside it: ``wiremesh.connect()``.

>>> async with await connect() as mesh:               # the mesh running in this folder
...     total = await mesh.call("pricing.quote", {"sku": "A-1", "qty": 3})

``connect()`` finds the running mesh through ``.wiremesh/mesh.json`` (written by
``wiremesh run``), or takes a registry address. The client watches the registry, so it
balances over live nodes and sees nodes come and go without a lookup per call.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from wiremesh.core.balancing import BalancerName
from wiremesh.core.codec import CodecName
from wiremesh.core.deadline import Deadline
from wiremesh.core.gather import Mode, MulticastResult
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.errors import Unavailable
from wiremesh.registry.embedded import EmbeddedRegistry
from wiremesh.registry.view import MeshView
from wiremesh.runtime.meshfile import MeshFile
from wiremesh.transport.client import Caller, channel_options
from wiremesh.transport.links import Links
from wiremesh.transport.tls import TlsFiles

__all__ = ["MeshClient", "connect"]


class MeshClient:
    """A connection to one mesh. Use it as an async context manager, or call ``close()``."""

    def __init__(
        self,
        registry_address: str,
        *,
        default_timeout: float = 10.0,
        balancer: BalancerName = "round_robin",
        max_message_bytes: int = 4 * 1024 * 1024,
        tls: TlsFiles | None = None,
        identity: str | None = None,
        links: bool = True,
    ) -> None:
        credentials = tls.channel_credentials() if tls else None
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
        self.registry = EmbeddedRegistry(registry_address, credentials=credentials)
        self.view = MeshView(self.registry)
        self.caller = Caller(
            self.view,
            identity=identity,
            default_timeout=default_timeout,
            balancer=balancer,
            max_message_bytes=max_message_bytes,
            credentials=credentials,
            links=self.links,
        )

    async def start(self, timeout: float = 10.0) -> MeshClient:
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

    @property
    def snapshot(self) -> MeshSnapshot:
        return self.view.snapshot

    def nodes(self, service: str | None = None) -> list[NodeInfo]:
        """The live nodes, of one service or all, as this client sees them now."""
        nodes = self.view.snapshot.nodes
        return [n for n in nodes if service is None or n.service == service]

    async def close(self) -> None:
        await self.view.close()
        if self.links is not None:
            await self.links.close()
        await self.caller.close()
        await self.registry.close()

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
    where: str | os.PathLike[str] = ".",
    *,
    timeout: float = 10.0,
    default_timeout: float | None = None,
    tls: TlsFiles | None = None,
) -> MeshClient:
    """Connect to a mesh: a folder where ``wiremesh run`` runs (default: this one), or a
    registry address ``host:port``. Returns a started :class:`MeshClient`."""
    text = os.fspath(where)
    if _looks_like_address(text):
        client = MeshClient(text, default_timeout=default_timeout or 10.0, tls=tls)
    else:
        mesh = MeshFile.find(Path(text))
        client = MeshClient(
            mesh.registry,
            default_timeout=default_timeout or mesh.default_timeout,
            max_message_bytes=mesh.max_message_bytes,
            tls=tls or mesh.client_tls(),
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
