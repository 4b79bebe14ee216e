"""What a :class:`~wiremesh.runtime.node.Node` is given, by concern: where it listens
(:class:`NodeNetwork`), how it joins the mesh (:class:`NodeMembership`), how it calls and
publishes (:class:`NodeTransport`), and its durable messaging and store
(:class:`NodeMessaging`). Each default is read from :mod:`wiremesh.core.defaults`, or from
the module that owns it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wiremesh.core import defaults
from wiremesh.core.balancing import BalancerName
from wiremesh.core.breaker import BreakerSettings
from wiremesh.core.delivery import DeliveryPolicy
from wiremesh.transport.publish import DEFAULT_QUEUE
from wiremesh.transport.tls import TlsFiles

__all__ = ["NodeMembership", "NodeMessaging", "NodeNetwork", "NodeTransport"]


@dataclass(frozen=True, slots=True)
class NodeNetwork:
    """Where a node listens, how the rest of the mesh reaches it, and with what
    credentials (``[mesh] host``, ``advertise``; ``[tls]``; ``[observability]``)."""

    #: the address the node's gRPC server binds to
    host: str = defaults.HOST
    #: its port; 0: a free one
    port: int = 0
    #: the host other nodes reach this one at; None: :mod:`wiremesh.runtime.advertise`
    #: decides (``host``, or for a wildcard the address that reaches the registry)
    advertise: str | None = None
    #: mutual TLS with the other nodes and the registry; None: plain
    tls: TlsFiles | None = None
    #: the port of the node's Prometheus ``/metrics`` (0: a free one; None: not served)
    metrics_port: int | None = 0
    #: the host ``/metrics`` listens on; None: :attr:`host`
    metrics_host: str | None = None


@dataclass(frozen=True, slots=True)
class NodeMembership:
    """How a node joins the mesh, what its registry record says, and how it leaves
    (``[mesh] name``, ``drain_grace``; ``[registry]``; ``[services.<name>] groups``)."""

    #: the name of the mesh the node joins
    mesh: str = defaults.MESH_NAME
    #: the mesh's join secret, sent to the embedded registry with the lease (None: none)
    join_secret: str | None = None
    #: seconds between two heartbeats of the node's lease
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    #: seconds the node stays registered without a heartbeat
    ttl: float = defaults.TTL
    #: the named groups the node belongs to from its start (multicast targets a group)
    groups: tuple[str, ...] = ()
    #: more metadata for the node's record
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: seconds the work in flight gets to finish when the node stops
    drain_grace: float = defaults.DRAIN_GRACE
    #: the supervisor this node drains with (``host/pid``; see :meth:`Node.finish_work`)
    drains_with: str | None = None


@dataclass(frozen=True, slots=True)
class NodeTransport:
    """Calls, multicasts and publishes: the gRPC side of a node (``[mesh]``
    ``default_timeout``, ``max_message_bytes``, ``balancer``)."""

    #: seconds, the deadline of a call that sets none (and of a publish's handlers)
    default_timeout: float = defaults.CALL_TIMEOUT
    #: the largest gRPC message the node sends or accepts
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES
    #: how the node's calls spread over the nodes of a service
    balancer: BalancerName = defaults.BALANCER
    #: the balancer of a service, for the services that use another one
    balancers: Mapping[str, BalancerName] = field(default_factory=dict)
    #: when the node's circuit to a node it calls opens (``[mesh.breaker]``), and a
    #: service's own settings (``[services.<name>.breaker]``)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    breakers: Mapping[str, BreakerSettings] = field(default_factory=dict)
    #: calls travel over mesh links (one long-lived stream per pair of nodes); False:
    #: one unary gRPC call each (and no publish)
    links: bool = True
    #: the published messages waiting for the ``@subscribe`` handlers, per link, before
    #: more are dropped (and counted)
    publish_queue: int = DEFAULT_QUEUE


@dataclass(frozen=True, slots=True)
class NodeMessaging:
    """Durable messaging (``[broker]``) and the service's store
    (``[services.<name>] store``, ``pool_size``, ``max_overflow``)."""

    #: the service's database url; None: a SQLite file in the node's data folder
    store_url: str | None = None
    #: the store's connection pool (PostgreSQL); None: the store's defaults
    pool_size: int | None = None
    max_overflow: int | None = None
    #: the retries of a failing message handler, and when a message is a dead letter
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    #: the most unacknowledged messages per handler
    prefetch: int = defaults.PREFETCH
    #: seconds a message handler may run before it counts as failed
    handler_timeout: float = defaults.HANDLER_TIMEOUT
    #: seconds emit and send wait for the broker's acceptance; None: the node's
    #: :attr:`NodeTransport.default_timeout`
    publish_timeout: float | None = None
    #: seconds a handled message's id stays in the inbox (0: for ever)
    inbox_keep: float = defaults.INBOX_KEEP
