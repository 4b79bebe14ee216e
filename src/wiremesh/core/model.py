"""The values the mesh is made of: nodes, their methods, and snapshots of the mesh."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

__all__ = ["MeshSnapshot", "MethodInfo", "NodeInfo", "NodeState"]


class NodeState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class MethodInfo:
    name: str
    idempotent: bool = False
    #: the method answers with a protobuf message, in protobuf whatever the request codec
    returns_protobuf: bool = False
    #: a streaming method's kind: ``server``, ``client`` or ``bidi``; empty for a unary one
    streaming: str = ""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One running instance of a service, as the registry knows it."""

    node_id: str
    service: str
    address: str
    pid: int = 0
    started_at: float = 0.0
    state: NodeState = NodeState.SERVING
    methods: Mapping[str, MethodInfo] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: named groups the node belongs to
    groups: tuple[str, ...] = ()
    #: topic patterns the node subscribes to (publish)
    subscriptions: tuple[str, ...] = ()
    #: counters the node reports (``publish_dropped``, ...)
    stats: Mapping[str, int] = field(default_factory=dict)
    #: the host the node runs on (``wiremesh nodes`` shows it)
    host: str = ""

    @property
    def serving(self) -> bool:
        return self.state is NodeState.SERVING

    def with_state(self, state: NodeState) -> NodeInfo:
        return replace(self, state=state)


@dataclass(frozen=True)
class MeshSnapshot:
    """Who is alive, at one registry version. Indexed once, read on every call."""

    version: int
    nodes: tuple[NodeInfo, ...]
    #: every service that has had a node in this mesh's life, alive or not
    services: frozenset[str]
    #: the registry's life this snapshot belongs to: it changes when the registry restarts
    #: with no memory of the mesh ("" when the registry does not say)
    epoch: str = ""
    by_id: Mapping[str, NodeInfo] = field(init=False, repr=False)
    by_service: Mapping[str, tuple[NodeInfo, ...]] = field(init=False, repr=False)
    _serving: Mapping[str, tuple[NodeInfo, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_service: dict[str, list[NodeInfo]] = {}
        for node in self.nodes:
            by_service.setdefault(node.service, []).append(node)
        object.__setattr__(self, "by_id", {n.node_id: n for n in self.nodes})
        object.__setattr__(
            self, "by_service", {name: tuple(nodes) for name, nodes in by_service.items()}
        )
        serving = {name: tuple(n for n in nodes if n.serving) for name, nodes in by_service.items()}
        object.__setattr__(self, "_serving", serving)

    @classmethod
    def of(
        cls,
        version: int,
        nodes: Iterable[NodeInfo],
        services: Iterable[str] = (),
        epoch: str = "",
    ) -> MeshSnapshot:
        node_list = tuple(nodes)
        return cls(version, node_list, frozenset(services) | {n.service for n in node_list}, epoch)

    def serving(self, service: str) -> tuple[NodeInfo, ...]:
        """The nodes of ``service`` that take new calls."""
        return self._serving.get(service, ())

    def method(self, service: str, name: str) -> MethodInfo | None:
        for node in self.by_service.get(service, ()):
            info = node.methods.get(name)
            if info is not None:
                return info
        return None


EMPTY = MeshSnapshot.of(0, ())
