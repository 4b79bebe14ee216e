"""The gateway process: ``python -m wiremesh.runtime.gateway_process -``.

``wiremesh run`` starts one and writes a :class:`GatewayLaunch` (the mesh configuration,
the registry address, the gateway id) as JSON to its standard input, never to its
arguments, which every local user can read: the configuration holds the gateway's secret
and URLs with passwords (the launch as the one argument, ``'<json>'``, works too);
``wiremesh gateway`` runs the same :func:`serve` in
its own process. The gateway registers in the registry as a member of the reserved
service ``wm-gateway`` (so that ``wiremesh nodes`` and the supervisor see it), with the
address other hosts reach it at and, under the metadata key ``wm-gateway-url``, the URL
browsers reach it at (``[gateway] public_url``, or its own); it serves until SIGTERM or
SIGINT, then drains within ``mesh.drain_grace``: it takes no new request, closes its
sessions with 1001, lets its HTTP requests finish (or answers 503 problems when the grace
ends), leaves the registry and exits 0. While it drains it stays in the registry,
draining: the nodes it drains with keep serving its requests' calls until it is gone.
Exit code 78 means it cannot start as configured (the supervisor does not restart it).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from wiremesh.core.drain import DRAINS_WITH_KEY, drains_with
from wiremesh.core.model import NodeInfo, NodeState
from wiremesh.errors import ConfigError, WiremeshError
from wiremesh.gateway.frame_stream import GATEWAY_NODES, GATEWAY_URL_KEY
from wiremesh.gateway.openapi import service_specs
from wiremesh.gateway.server import Gateway
from wiremesh.observability import tracing
from wiremesh.observability.logs import configure_logging
from wiremesh.runtime import heap
from wiremesh.runtime import loop as event_loop
from wiremesh.runtime.advertise import with_host
from wiremesh.runtime.settings import MeshConfig
from wiremesh.transport import grpc_core
from wiremesh.transport.tls import TlsFiles

__all__ = [
    "EXIT_CONFIG",
    "GATEWAY_KEY",
    "GATEWAY_SERVICE",
    "GatewayLaunch",
    "gateway_of",
    "mesh_tls",
    "serve",
]

EXIT_CONFIG = 78
GATEWAY_SERVICE = GATEWAY_NODES
GATEWAY_KEY = GATEWAY_URL_KEY

log = logging.getLogger("wiremesh.gateway")


@dataclass
class GatewayLaunch:
    """Everything a gateway process needs, handed over by the supervisor."""

    config: str  # MeshConfig as JSON
    registry: str
    gateway_id: str
    supervisor_pid: int = 0
    #: the mesh's join secret for the embedded registry (None: none is asked)
    join_secret: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GatewayLaunch:
        return cls(**json.loads(text))


def gateway_of(
    config: MeshConfig,
    registry: str,
    gateway_id: str | None = None,
    *,
    mesh: str | None = None,
    join_secret: str | None = None,
) -> Gateway:
    """A :class:`Gateway` as ``config`` describes it, for the mesh at ``registry`` (an
    embedded registry's ``host:port`` or a Redis URL) called ``mesh`` (default: the
    configuration's ``mesh.name``); ``join_secret`` admits it to an embedded registry."""
    settings = config.gateway
    tls = mesh_tls(config)
    heartbeat_interval, ttl = config.registry.heartbeat_interval, config.registry.ttl
    return Gateway(
        settings,
        registry_address=registry,
        join_secret=join_secret,
        root=config.root,
        data_dir=config.data_path,
        mesh_tls=tls,
        tls=config.gateway_tls_paths() if settings.tls else None,
        max_message_bytes=config.mesh.max_message_bytes,
        gateway_id=gateway_id,
        heartbeat_interval=heartbeat_interval,
        ttl=ttl,
        advertise=config.mesh.advertise or None,
        specs=service_specs(
            {name: service.target for name, service in config.services.items()},
            config.python_paths(),
        ),
        services=sorted(config.services),
        mesh_name=mesh or config.mesh.name,
        broker_url=config.broker.url,
        dead_letters=DeadLetterCount(config, tls, mesh=mesh),
        breaker=config.mesh.breaker.settings(),
        breakers={name: b.settings() for name, b in config.breakers().items()},
    )


def mesh_tls(config: MeshConfig) -> TlsFiles | None:
    """The files the gateway reaches the nodes (and a ``rediss://`` registry) with when
    ``[tls]`` is on: the node pair, or the client pair when only that one is here."""
    if not config.tls.enabled:
        return None
    ca, cert, key = config.tls_paths()
    client_cert, client_key = cert.parent / "client.pem", cert.parent / "client-key.pem"
    if not cert.is_file() and client_cert.is_file():
        return TlsFiles(ca, client_cert, client_key)
    return TlsFiles(ca, cert, key)


class DeadLetterCount:
    """How many dead letters the mesh's broker holds (for the dashboard), asked at most
    every ``every`` seconds: listing them costs the broker a scan."""

    #: counted up to this many; the dashboard shows "1000" for "at least 1000"
    LIMIT = 1000

    def __init__(
        self,
        config: MeshConfig,
        tls: TlsFiles | None,
        every: float = 5.0,
        *,
        mesh: str | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.mesh = mesh or config.mesh.name
        self.every = every
        self._broker: Any = None
        self._count = 0
        self._at = -every

    async def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at < self.every:
            return self._count
        if self._broker is None:
            from wiremesh.messaging.backends import open_broker

            broker = self.config.broker
            self._broker = open_broker(
                broker.url,
                data_dir=self.config.data_path,
                mesh=self.mesh,
                tls=self.tls,
                quorum_queues=broker.quorum_queues,
            )
            await self._broker.start()
        self._count = len(await self._broker.dead_letters(limit=self.LIMIT))
        self._at = now
        return self._count


async def serve(
    gateway: Gateway,
    *,
    stop: asyncio.Event,
    grace: float = 2.0,
    announce: Callable[[Gateway], None] | None = None,
    supervisor_pid: int = 0,
) -> None:
    """Run ``gateway``, registered in the mesh, until ``stop`` is set; then drain it
    within ``grace`` seconds (registered as draining until it is done). ``supervisor_pid``:
    the supervisor that started this process, whose nodes drain with it."""
    await gateway.start()
    lease = None
    metadata = {GATEWAY_KEY: gateway.url}
    together = drains_with(socket.gethostname(), supervisor_pid)
    if together is not None:
        metadata[DRAINS_WITH_KEY] = together
    try:
        lease = await gateway.registry.lease(
            NodeInfo(
                node_id=gateway.gateway_id,
                service=GATEWAY_SERVICE,
                address=with_host(f"{gateway.settings.host}:{gateway.port}", gateway.advertise),
                pid=os.getpid(),
                started_at=time.time(),
                metadata=metadata,
                host=gateway.advertise,
            )
        )
        if announce is not None:
            announce(gateway)
        heap.settle()
        await stop.wait()
    finally:
        if lease is not None:
            with contextlib.suppress(Exception):
                await lease.set_state(NodeState.DRAINING)
        try:
            await gateway.stop(grace)
        finally:
            if lease is not None:
                with contextlib.suppress(Exception):
                    await lease.release()


async def _run(launch: GatewayLaunch) -> int:
    config = MeshConfig.model_validate_json(launch.config)
    seen = config.observability
    configure_logging(
        seen.log_format,
        level=os.environ.get("WIREMESH_LOG_LEVEL", seen.log_level),
        node=launch.gateway_id,
    )
    tracing.configure(
        seen.tracing,
        service_name=GATEWAY_SERVICE,
        endpoint=seen.otlp_endpoint or None,
        node_id=launch.gateway_id,
    )
    gateway = gateway_of(config, launch.registry, launch.gateway_id, join_secret=launch.join_secret)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_supervisor(launch.supervisor_pid, stop))
    try:
        await serve(
            gateway,
            stop=stop,
            grace=config.mesh.drain_grace,
            supervisor_pid=launch.supervisor_pid,
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        tracing.shutdown()  # flushes the spans still batched
    return 0


async def _watch_supervisor(pid: int, stop: asyncio.Event) -> None:
    if not pid:
        return
    while os.getppid() == pid:  # noqa: ASYNC110 - nothing to wait on but the pid
        await asyncio.sleep(1.0)
    log.warning("supervisor %d is gone; stopping", pid)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    # grpc read GRPC_EXPERIMENTS as this module imported it; started by `wiremesh run`,
    # the process inherited it, else it starts again with it (see grpc_core)
    grpc_core.prefer_loop_io(restart=argv is None)
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=os.environ.get("WIREMESH_LOG_LEVEL", "INFO").upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("grpc").setLevel(logging.ERROR)
    if len(args) != 1:
        print(
            "usage: python -m wiremesh.runtime.gateway_process - (the launch JSON on stdin)",
            file=sys.stderr,
        )
        return 2
    try:
        launch = GatewayLaunch.from_json(sys.stdin.read() if args[0] == "-" else args[0])
    except (ValueError, TypeError) as exc:
        print(f"bad launch description: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return event_loop.run_gateway(_run(launch))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except WiremeshError as exc:
        log.error("gateway %s could not start: %s", launch.gateway_id, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
