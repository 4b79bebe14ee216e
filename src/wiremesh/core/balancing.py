"""Choosing the node a call goes to.

Two policies: ``round_robin`` walks the live nodes in turn; ``least_outstanding`` picks
the node with the fewest calls in flight from this caller, breaking ties in turn. Both
skip nodes in ``exclude`` (the ones a retry already tried).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal, Protocol

from wiremesh.core.model import NodeInfo

__all__ = ["Balancer", "BalancerName", "LeastOutstanding", "RoundRobin", "make_balancer"]

BalancerName = Literal["round_robin", "least_outstanding"]


class Balancer(Protocol):
    def pick(self, nodes: Sequence[NodeInfo], exclude: Collection[str] = ()) -> NodeInfo | None:
        """The node to call, or None when every node is excluded."""
        ...

    def started(self, node_id: str) -> None:
        """A call to ``node_id`` went out."""
        ...

    def finished(self, node_id: str) -> None:
        """A call to ``node_id`` came back (with any outcome)."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = 0

    def pick(self, nodes: Sequence[NodeInfo], exclude: Collection[str] = ()) -> NodeInfo | None:
        count = len(nodes)
        for _ in range(count):
            node = nodes[self._turn % count]
            self._turn += 1
            if node.node_id not in exclude:
                return node
        return None

    def started(self, node_id: str) -> None:
        pass

    def finished(self, node_id: str) -> None:
        pass


class LeastOutstanding:
    def __init__(self) -> None:
        self._turn = 0
        self.outstanding: dict[str, int] = {}

    def pick(self, nodes: Sequence[NodeInfo], exclude: Collection[str] = ()) -> NodeInfo | None:
        best: NodeInfo | None = None
        best_load = 0
        count = len(nodes)
        self._turn += 1
        for i in range(count):
            node = nodes[(self._turn + i) % count]
            if node.node_id in exclude:
                continue
            load = self.outstanding.get(node.node_id, 0)
            if best is None or load < best_load:
                best, best_load = node, load
        return best

    def started(self, node_id: str) -> None:
        self.outstanding[node_id] = self.outstanding.get(node_id, 0) + 1

    def finished(self, node_id: str) -> None:
        left = self.outstanding.get(node_id, 0) - 1
        if left > 0:
            self.outstanding[node_id] = left
        else:
            self.outstanding.pop(node_id, None)


def make_balancer(name: BalancerName) -> Balancer:
    if name == "round_robin":
        return RoundRobin()
    if name == "least_outstanding":
        return LeastOutstanding()
    raise ValueError(f"unknown balancer {name!r}: use 'round_robin' or 'least_outstanding'")
