"""The entry point of a node process: ``python -m wiremesh.runtime.node_process -``.

The supervisor starts one such process per node and writes a :class:`NodeLaunch`, as
JSON, to its standard input (then closes it): the launch holds URLs with passwords,
which a process's arguments would show to every local user. ``python -m
wiremesh.runtime.node_process '<json>'`` (the launch as the argument) works too, for a node
started by hand with nothing secret in it. The
process imports the service, serves until SIGTERM or SIGINT (or SIGUSR1: see
:data:`DRAIN_ALONE`), drains within
``drain_grace`` (the mesh learns it, new work is refused while the work in flight that
needs the node ends: see :meth:`Node.finish_work`), and exits 0. It also exits
(draining) when its supervisor disappears, so no node outlives its mesh.
Exit code 78 (EX_CONFIG) means the node cannot start as configured: the supervisor does
not restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wiremesh.core import defaults
from wiremesh.core.balancing import BalancerName
from wiremesh.core.breaker import BreakerSettings
from wiremesh.core.delivery import DeliveryPolicy
from wiremesh.core.drain import drains_with
from wiremesh.errors import ConfigError, WiremeshError
from wiremesh.messaging.backends import open_broker
from wiremesh.observability import tracing
from wiremesh.observability.logs import configure_logging
from wiremesh.observability.settings import ObservabilitySettings
from wiremesh.observability.tracing import configure as configure_tracing
from wiremesh.runtime import heap
from wiremesh.runtime import loop as event_loop
from wiremesh.runtime.node import (
    ANNOUNCE_WAIT,
    Node,
    NodeMembership,
    NodeMessaging,
    NodeNetwork,
    NodeTransport,
)
from wiremesh.runtime.targets import load_service_class
from wiremesh.transport import grpc_core
from wiremesh.transport.tls import TlsFiles

__all__ = ["DRAIN_ALONE", "EXIT_CONFIG", "NodeLaunch", "main"]

EXIT_CONFIG = 78
#: the signal that drains this node alone (a reload replaces it): as SIGTERM, but it waits
#: for none of the nodes it would drain with at a shutdown (``wm.drains-with``), which
#: serve on
DRAIN_ALONE = signal.SIGUSR1

log = logging.getLogger("wiremesh.node")


@dataclass
class NodeLaunch:
    """Everything a node process needs to know, handed over by the supervisor."""

    target: str
    service: str
    node_id: str
    registry: str
    data_dir: str
    host: str = defaults.HOST
    #: the host other hosts reach this node at (None: see wiremesh.runtime.advertise)
    advertise: str | None = None
    default_timeout: float = defaults.CALL_TIMEOUT
    drain_grace: float = defaults.DRAIN_GRACE
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    ttl: float = defaults.TTL
    balancer: BalancerName = defaults.BALANCER
    balancers: dict[str, BalancerName] = field(default_factory=dict)
    #: the ``[mesh.breaker]`` settings, and a service's own (fields of
    #: :class:`~wiremesh.core.breaker.BreakerSettings`)
    breaker: dict[str, Any] = field(default_factory=dict)
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    python_path: list[str] = field(default_factory=list)
    tls: list[str] | None = None  # ca, cert, key
    groups: list[str] = field(default_factory=list)
    supervisor_pid: int = 0
    #: the ``[observability]`` settings (:class:`ObservabilitySettings` as a dict)
    observability: dict[str, Any] = field(default_factory=dict)
    mesh: str = defaults.MESH_NAME
    #: the mesh's join secret, sent to the embedded registry on the lease (None: none is
    #: asked, as with TLS on or a Redis registry)
    join_secret: str | None = None
    #: ``embedded://host:port`` or ``amqp://…``; None: no durable messaging
    broker: str | None = None
    #: the service's store url; None: SQLite in ``data_dir``
    store: str | None = None
    #: the store's connection pool (PostgreSQL); None: the store's defaults
    pool_size: int | None = None
    max_overflow: int | None = None
    prefetch: int = defaults.PREFETCH
    attempts: int = defaults.ATTEMPTS
    initial_backoff: float = defaults.RETRY_INITIAL_BACKOFF
    max_backoff: float = defaults.RETRY_MAX_BACKOFF
    handler_timeout: float = defaults.HANDLER_TIMEOUT
    inbox_keep: float = defaults.INBOX_KEEP
    publish_timeout: float = defaults.PUBLISH_TIMEOUT
    quorum_queues: bool = False
    #: how many times the supervisor restarted this node's slot before this start (0: its
    #: first start); a start that fails logs its traceback only the first time
    restarts: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NodeLaunch:
        return cls(**json.loads(text))


async def run(launch: NodeLaunch) -> int:
    cls = load_service_class(launch.target, [Path(p) for p in launch.python_path])
    if getattr(cls, "name", None) != launch.service:
        raise ConfigError(
            f"target {launch.target!r} is service {getattr(cls, 'name', None)!r}, "
            f"but the configuration calls it {launch.service!r}"
        )
    tls = TlsFiles(*(Path(p) for p in launch.tls)) if launch.tls else None
    seen = ObservabilitySettings(**launch.observability)
    configure_tracing(
        seen.tracing,
        service_name=launch.service,
        endpoint=seen.otlp_endpoint or None,
        node_id=launch.node_id,
    )
    broker = (
        open_broker(
            launch.broker,
            data_dir=Path(launch.data_dir),
            mesh=launch.mesh,
            tls=tls,
            quorum_queues=launch.quorum_queues,
        )
        if launch.broker
        else None
    )
    node = Node(
        cls,
        registry_address=launch.registry,
        node_id=launch.node_id,
        data_dir=Path(launch.data_dir),
        broker=broker,
        network=NodeNetwork(
            host=launch.host,
            advertise=launch.advertise,
            tls=tls,
            metrics_port=0 if seen.metrics else None,
            metrics_host=seen.metrics_host or None,
        ),
        membership=NodeMembership(
            mesh=launch.mesh,
            join_secret=launch.join_secret,
            heartbeat_interval=launch.heartbeat_interval,
            ttl=launch.ttl,
            groups=tuple(launch.groups),
            drain_grace=launch.drain_grace,
            # the nodes of one supervisor drain together (see Node.finish_work)
            drains_with=drains_with(socket.gethostname(), launch.supervisor_pid),
        ),
        transport=NodeTransport(
            default_timeout=launch.default_timeout,
            max_message_bytes=launch.max_message_bytes,
            balancer=launch.balancer,
            balancers=launch.balancers,
            breaker=BreakerSettings(**launch.breaker),
            breakers={name: BreakerSettings(**s) for name, s in launch.breakers.items()},
        ),
        messaging=NodeMessaging(
            store_url=launch.store,
            pool_size=launch.pool_size,
            max_overflow=launch.max_overflow,
            delivery=DeliveryPolicy(launch.attempts, launch.initial_backoff, launch.max_backoff),
            prefetch=launch.prefetch,
            handler_timeout=launch.handler_timeout,
            publish_timeout=launch.publish_timeout,
            inbox_keep=launch.inbox_keep,
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def drain_alone() -> None:
        node.drains_with = None  # its supervisor's other nodes serve on
        stop.set()

    loop.add_signal_handler(DRAIN_ALONE, drain_alone)
    try:
        await node.start()
    except WiremeshError:
        raise  # its message says it all (see main)
    except Exception as exc:
        _start_failed(launch, exc)
        return 1
    heap.settle()
    watcher = asyncio.create_task(_watch_supervisor(launch.supervisor_pid, stop))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        # the whole drain within the grace: the mesh learns it, the work in flight that
        # needs this node ends (new work is refused), then the node stops
        until = time.monotonic() + launch.drain_grace
        await node.announce_drain(min(launch.drain_grace, ANNOUNCE_WAIT))
        await node.finish_work(until)
        await node.stop(max(0.0, until - time.monotonic()))
        tracing.shutdown()  # flushes the spans still batched
    return 0


def _start_failed(launch: NodeLaunch, exc: Exception) -> None:
    """Log a start that raised (``on_start``, most often): with its traceback at the first
    start of the slot, in one line at each restart after it (a crash loop would print the
    same traceback at every restart)."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if launch.restarts == 0:
        log.error("node %s could not start: %s", launch.node_id, reason, exc_info=exc)
    else:
        log.error(
            "node %s could not start (restart %d; a traceback only at the first start): %s",
            launch.node_id,
            launch.restarts,
            reason,
        )


async def _watch_supervisor(pid: int, stop: asyncio.Event) -> None:
    """Stop when the supervisor that started us is gone (we were re-parented)."""
    if not pid:
        return
    while os.getppid() == pid:  # noqa: ASYNC110 - nothing to wait on but the pid
        await asyncio.sleep(1.0)
    log.warning("supervisor %d is gone; draining", pid)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    # grpc read GRPC_EXPERIMENTS as this module imported it; started by `wiremesh run`,
    # the process inherited it, else it starts again with it (see grpc_core)
    grpc_core.prefer_loop_io(restart=argv is None)
    args = sys.argv[1:] if argv is None else argv
    configure_logging()
    if len(args) != 1:
        print(
            "usage: python -m wiremesh.runtime.node_process - (the launch JSON on stdin)\n"
            "       python -m wiremesh.runtime.node_process '<launch json>'",
            file=sys.stderr,
        )
        return 2
    try:
        launch = NodeLaunch.from_json(sys.stdin.read() if args[0] == "-" else args[0])
        seen = ObservabilitySettings(**launch.observability)
    except (ValueError, TypeError) as exc:
        print(f"bad launch description: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if launch.observability:
        configure_logging(
            seen.log_format,
            level=os.environ.get("WIREMESH_LOG_LEVEL", seen.log_level),
            node=launch.node_id,
        )
    try:
        return event_loop.run(run(launch))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except WiremeshError as exc:
        log.error("node %s could not start: %s", launch.node_id, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
