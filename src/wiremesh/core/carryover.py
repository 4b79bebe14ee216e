"""What a watcher shows while a registry that lost its memory fills up again.

A registry that restarts empty (Redis restarted without its data, the embedded registry's
process restarted) first answers with a mesh of no nodes, then the nodes find it and
register again, each within a heartbeat or two. Shown as it is, that first empty answer
would drop every node from every view: calls would fail and the gateways would close
every session, for a registry outage that the nodes themselves never noticed.

So a snapshot carries its registry's *epoch*, which changes when the registry starts with
no memory. When the epoch changes, the nodes of the previous epoch stay in the view for a
grace period (long enough for every live node to register again), beside whatever the new
epoch already knows; a node registered again replaces its old record. After the grace the
registry is the truth again, and a node that did not come back leaves the view.

Time is passed in, never read, so the rule is tested without clocks.
"""

from __future__ import annotations

from wiremesh.core.model import MeshSnapshot, NodeInfo

__all__ = ["Carryover"]


class Carryover:
    def __init__(self, grace: float) -> None:
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.grace = grace
        #: the epoch of the last snapshot the registry sent
        self.epoch = ""
        #: the previous epoch's nodes, kept until :attr:`until`
        self.kept: dict[str, NodeInfo] = {}
        self.until = 0.0
        self._latest: tuple[NodeInfo, ...] = ()

    def apply(self, fresh: MeshSnapshot, now: float) -> MeshSnapshot:
        """The snapshot to show for ``fresh``, the registry's latest, at time ``now``."""
        if fresh.epoch != self.epoch:
            if self.epoch and fresh.epoch:
                # the registry restarted empty: hold on to what the last epoch knew, the
                # nodes a previous restart still carries included
                previous = {n.node_id: n for n in self._latest}
                self.kept = {**self.kept, **previous} if self.carrying(now) else previous
                self.until = now + self.grace
            self.epoch = fresh.epoch
        self._latest = fresh.nodes
        if not self.carrying(now):
            self.kept = {}
            return fresh
        known = fresh.by_id
        extra = [node for node_id, node in self.kept.items() if node_id not in known]
        if not extra:
            return fresh
        return MeshSnapshot.of(fresh.version, (*fresh.nodes, *extra), fresh.services, fresh.epoch)

    def carrying(self, now: float) -> bool:
        """Whether the previous epoch's nodes are still shown."""
        return bool(self.kept) and now < self.until
