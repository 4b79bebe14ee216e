"""The registry's table of live nodes, with leases that expire.

A node holds a lease: it registers once, then renews it with heartbeats. A lease that is
not renewed within ``ttl`` seconds expires and the node leaves the table, so a node that
dies *or hangs* disappears. Every change bumps ``version``; watchers compare versions.
Time is passed in, never read, so the rules are tested without clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState

__all__ = ["Membership"]


@dataclass(slots=True)
class _Lease:
    node: NodeInfo
    renewed_at: float


class Membership:
    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self.version = 0
        self._leases: dict[str, _Lease] = {}
        self._services: set[str] = set()

    def register(self, node: NodeInfo, now: float) -> None:
        """Add or replace a node (a re-register after a registry restart is the same)."""
        self._leases[node.node_id] = _Lease(node, now)
        self._services.add(node.service)
        self.version += 1

    def renew(self, node_id: str, now: float, state: NodeState | None = None) -> bool:
        """Renew a lease, optionally changing the node's state. False if it is unknown."""
        lease = self._leases.get(node_id)
        if lease is None:
            return False
        lease.renewed_at = now
        if state is not None and state is not lease.node.state:
            lease.node = lease.node.with_state(state)
            self.version += 1
        return True

    def set_stats(self, node_id: str, stats: dict[str, int]) -> None:
        """Store a node's counters; a quiet change: no version bump, no watcher told."""
        lease = self._leases.get(node_id)
        if lease is not None and stats != lease.node.stats:
            lease.node = replace(lease.node, stats=stats)

    def remove(self, node_id: str) -> NodeInfo | None:
        lease = self._leases.pop(node_id, None)
        if lease is None:
            return None
        self.version += 1
        return lease.node

    def expire(self, now: float) -> list[NodeInfo]:
        """Drop every lease not renewed within ``ttl``; returns the nodes dropped."""
        stale = [nid for nid, lease in self._leases.items() if now - lease.renewed_at > self.ttl]
        return [node for nid in stale if (node := self.remove(nid)) is not None]

    def snapshot(self) -> MeshSnapshot:
        return MeshSnapshot.of(
            self.version, (lease.node for lease in self._leases.values()), self._services
        )

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)
