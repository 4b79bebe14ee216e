"""The defaults that more than one module reads, each written once.

Most are the default of one setting of ``wiremesh.toml`` (the ``[table] key`` on its line):
the settings models (:mod:`wiremesh.runtime.settings`, :mod:`wiremesh.gateway.settings`)
take their defaults from here, and so does every class that takes the setting's value as a
keyword argument (:class:`~wiremesh.runtime.node.Node`, :class:`~wiremesh.MeshClient`, the
servers, the registry and broker clients), so that a node built without a configuration
file behaves as one built from an empty file. A setting whose default nothing but its
model needs keeps it on the model.
"""

from __future__ import annotations

from typing import Final

from wiremesh.core.balancing import BalancerName

__all__ = [
    "ATTEMPTS",
    "BALANCER",
    "CALL_TIMEOUT",
    "DRAIN_GRACE",
    "HANDLER_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "HOST",
    "HTTP_BODY_TIMEOUT",
    "HTTP_MAX_TIMEOUT",
    "HTTP_TIMEOUT",
    "INBOX_KEEP",
    "MAX_MESSAGE_BYTES",
    "MAX_PUBLISH_BYTES",
    "MESH_NAME",
    "PREFETCH",
    "PUBLISH_TIMEOUT",
    "RESTART_INITIAL_BACKOFF",
    "RESTART_MAX_BACKOFF",
    "RESTART_RESET_AFTER",
    "RETRY_INITIAL_BACKOFF",
    "RETRY_MAX_BACKOFF",
    "START_TIMEOUT",
    "TTL",
]

# -- [mesh]

#: ``mesh.name``: the mesh's name when nothing names it (a configuration file's folder does)
MESH_NAME: Final = "wiremesh"
#: ``mesh.host``, ``gateway.host``: the address servers bind to, loopback only
HOST: Final = "127.0.0.1"
#: ``mesh.default_timeout``: seconds, the deadline of a call that sets none
CALL_TIMEOUT: Final = 10.0
#: ``mesh.drain_grace``: seconds the work in flight gets to finish on shutdown
DRAIN_GRACE: Final = 10.0
#: ``mesh.max_message_bytes``: the largest gRPC message a node, a gateway or a client
#: sends or accepts
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: ``gateway.limits.channels.max_publish_bytes``, and a node's own bound: the largest
#: publication to a channel, in bytes of JSON
MAX_PUBLISH_BYTES: Final = 64 * 1024
#: ``mesh.balancer``: how a caller spreads calls over the nodes of a service
BALANCER: BalancerName = "round_robin"

# -- [registry]

#: ``registry.heartbeat_interval``: seconds between two heartbeats of a node's lease
HEARTBEAT_INTERVAL: Final = 0.5
#: ``registry.ttl``: seconds a node stays registered without a heartbeat
TTL: Final = 1.5
#: seconds a process that starts waits for the registry's first answer (a snapshot, a
#: lease) or for its broker connection
START_TIMEOUT: Final = 10.0

# -- [broker]

#: ``broker.prefetch``: the most unacknowledged messages per handler and node
PREFETCH: Final = 32
#: ``broker.attempts``: deliveries of a failing message before it is a dead letter
ATTEMPTS: Final = 5
#: ``broker.initial_backoff``: seconds before the first retry of a failed message
RETRY_INITIAL_BACKOFF: Final = 0.5
#: ``broker.max_backoff``: the most seconds between two retries of a failed message
RETRY_MAX_BACKOFF: Final = 30.0
#: ``broker.handler_timeout``: seconds a message handler may run before it counts as failed
HANDLER_TIMEOUT: Final = 60.0
#: ``broker.inbox_keep``: seconds a handled message's id stays in a store's inbox (a
#: week): a redelivery within it is dropped as a duplicate
INBOX_KEEP: Final = 7 * 86400.0
#: ``broker.publish_timeout``: seconds emit and send wait for the broker's acceptance
PUBLISH_TIMEOUT: Final = 10.0

# -- [restart]

#: ``restart.initial_backoff``: seconds before the first restart of a crashed node
RESTART_INITIAL_BACKOFF: Final = 0.5
#: ``restart.max_backoff``: the most seconds between two restarts of a crashed node
RESTART_MAX_BACKOFF: Final = 30.0
#: ``restart.reset_after``: seconds a node must run for its backoff to start over
RESTART_RESET_AFTER: Final = 30.0

# -- [gateway.http]

#: ``gateway.http.default_timeout``: seconds, the deadline of an HTTP call without a
#: ``Wiremesh-Timeout`` header
HTTP_TIMEOUT: Final = 10.0
#: ``gateway.http.max_timeout``: the most seconds a ``Wiremesh-Timeout`` header gets
HTTP_MAX_TIMEOUT: Final = 60.0
#: ``gateway.http.body_timeout``: seconds a client has to send a request body
HTTP_BODY_TIMEOUT: Final = 10.0
