"""The registry interface every backend implements: embedded (one machine) and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState

__all__ = ["Lease", "Registry"]


class Lease(Protocol):
    """A node's place in the mesh, kept alive by heartbeats until released."""

    #: the node's counters, sent with its heartbeats (``wiremesh nodes`` shows them)
    stats: Callable[[], dict[str, int]]

    async def set_state(self, state: NodeState) -> None:
        """Announce a new state (``DRAINING`` before a graceful stop)."""
        ...

    async def update(self, node: NodeInfo) -> None:
        """Replace the node's record (groups joined or left); watchers are told."""
        ...

    async def release(self) -> None:
        """Leave the mesh now."""
        ...


class Registry(Protocol):
    #: where the registry is, for people: ``host:port`` or a URL without its password
    address: str
    #: whether the registry answered the last time it was asked (views keep their last
    #: snapshot while it does not)
    reachable: bool

    async def lease(self, node: NodeInfo) -> Lease:
        """Register ``node`` and keep it registered until the lease is released, the
        process dies or it stops sending heartbeats. Re-registers by itself when the
        registry comes back after a restart."""
        ...

    async def snapshot(self) -> MeshSnapshot:
        """The mesh as it is now."""
        ...

    def watch(self) -> AsyncIterator[MeshSnapshot]:
        """The mesh now, then again after every change. Ends only when closed."""
        ...

    async def close(self) -> None: ...
