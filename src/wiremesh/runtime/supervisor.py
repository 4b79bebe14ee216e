"""``wiremesh run``: the supervisor of one host's part of the mesh.

With the embedded registry it hosts that registry and (with ``broker.url = "embedded"``)
the embedded broker: the mesh is this machine. With a Redis registry it hosts neither:
it starts the nodes this host runs (a :class:`~wiremesh.runtime.placement.Placement`),
which join the mesh through Redis beside the other hosts' nodes.

Either way it starts each node as its own process (and the browser gateway, when it runs
here: see ``docs/gateway.md``), restarts a node that dies (exponential backoff with
jitter, reset after a healthy run), kills and restarts a node that hangs (alive but silent
to the registry, as a :class:`~wiremesh.registry.view.MeshView` of the registry shows it),
and drains on SIGINT or SIGTERM: the gateway, then every node gets SIGTERM at once;
each finishes the work in flight that needs it within the grace period (see
:mod:`wiremesh.core.drain`: a node takes no new work, and outlives the callers whose work
still calls it), and the supervisor exits 0. A second Ctrl-C stops at once.

With ``reload=True`` (``wiremesh run --reload``, for development on one machine) it also
watches the services' source (:mod:`wiremesh.runtime.reload`) and replaces the nodes of
a changed service one at a time (:meth:`Supervisor.replace`): a new node, once it serves,
takes the place of an old one, which drains as at a shutdown.

A child gets its launch description (:class:`~wiremesh.runtime.node_process.NodeLaunch`,
:class:`~wiremesh.runtime.gateway_process.GatewayLaunch`) on its standard input, never in its
arguments: it holds the registry's, the broker's and the stores' URLs with their
passwords, the gateway's secret and the mesh's join secret, and any local user can read a
process's arguments.

The data folder is private to its owner (mode 0700, and so is everything wiremesh makes
in it: see :mod:`wiremesh.runtime.private`). With the embedded registry and no TLS, the
supervisor makes a join secret for each run, which the registry asks of every node that
leases (:mod:`wiremesh.registry.embedded`); it is in ``mesh.json`` for the CLI and for
``wiremesh gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wiremesh.core.model import MeshSnapshot
from wiremesh.core.names import redact_url
from wiremesh.core.retry import Backoff
from wiremesh.errors import ConfigError, Unavailable
from wiremesh.gateway.frame_stream import GATEWAY_NODES, GATEWAY_URL_KEY
from wiremesh.gateway.settings import is_loopback
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.registry.backends import open_registry
from wiremesh.registry.embedded import RegistryServer, new_join_secret
from wiremesh.registry.view import MeshView
from wiremesh.runtime.meshfile import MESH_FILE, MeshFile
from wiremesh.runtime.node import new_node_id
from wiremesh.runtime.node_process import DRAIN_ALONE, EXIT_CONFIG, NodeLaunch
from wiremesh.runtime.placement import Placement, place
from wiremesh.runtime.private import private_folder
from wiremesh.runtime.reload import Reloader, require_watchfiles
from wiremesh.runtime.settings import MeshConfig
from wiremesh.runtime.targets import load_service_class
from wiremesh.service import ServiceSpec
from wiremesh.transport.tls import TlsFiles

__all__ = ["NodeProcess", "ProcessState", "Supervisor"]

log = logging.getLogger("wiremesh.supervisor")

#: a registered node that stays out of the registry this long while its process lives is hung
HUNG_AFTER = 3.0
#: seconds the gateway waits to be announced for the nodes still starting
ANNOUNCE_GATEWAY_AFTER = 10.0
#: seconds the development token printed by ``wiremesh run`` stays valid
DEV_TOKEN_TTL = 12 * 3600.0
#: seconds a reload waits for a new node to serve before it gives the node up
RELOAD_START_TIMEOUT = 30.0
#: seconds a reload waits for the mesh to see a replaced node drain before it goes on
RELOAD_RETIRE_WAIT = 10.0


class ProcessState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    UNRESPONSIVE = "unresponsive"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass
class NodeProcess:
    """One slot of a service: the node process that fills it now, and its history."""

    service: str
    slot: int
    backoff: Backoff
    node_id: str = ""
    address: str = ""
    pid: int = 0
    state: ProcessState = ProcessState.STARTING
    started_at: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    silent_since: float | None = None
    was_registered: bool = False
    #: this slot runs the browser gateway, not a node of ``service``
    gateway: bool = False
    #: a reload's new node that has not served yet: it is given up, not restarted, when
    #: it exits (see :meth:`Supervisor.replace`)
    trial: bool = False
    #: set when a reload replaced this slot: its node drains and it is not started again
    retired: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    #: the task that keeps this slot's process running
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def uptime(self) -> float:
        return time.time() - self.started_at if self.started_at and self.pid else 0.0


Listener = Callable[[str], None]


class Supervisor:
    """Runs ``placement`` of ``config`` (default: what :func:`place` picks for this
    machine's hostname)."""

    def __init__(
        self,
        config: MeshConfig,
        *,
        echo: Listener | None = None,
        placement: Placement | None = None,
        reload: bool = False,
    ) -> None:
        self.config = config
        #: whether a change to the services' source replaces their nodes (``--reload``)
        self.reload = reload
        #: what a reload is doing now (``reloading pricing (1/2)``), for the table
        self.reloading: str | None = None
        self.placement = placement or place(config, hostname=socket.gethostname())
        self.echo: Listener = echo or (lambda line: print(line, flush=True))
        self.slots: list[NodeProcess] = []
        #: the restart backoff's jitter
        self._rng = random.Random()
        #: the embedded registry this supervisor hosts (None with a Redis registry)
        self.registry: RegistryServer | None = None
        #: what admits a node to that registry (None: none is asked, see _start_shared)
        self.join_secret: str | None = None
        #: the mesh as the registry shows it, to follow each process's node
        self.view: MeshView | None = None
        self.broker: BrokerServer | None = None
        #: what nodes are told to use: ``embedded://host:port`` or the amqp url
        self.broker_url = config.broker.url
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._slot_tasks: list[asyncio.Task[None]] = []
        self._reloader: asyncio.Task[None] | None = None
        self._tls = TlsFiles(*config.tls_paths()) if config.tls.enabled else None
        self.changed: Callable[[], None] = lambda: None
        #: whether a gateway runs here: as the placement says, else ``gateway.enabled``
        #: (or "auto" and a service this host runs has sockets)
        self.gateway_enabled = (
            self.placement.gateway
            if self.placement.gateway is not None
            else config.gateway.enabled is True
        )
        #: the gateway's URL once it serves (with a development token when there is one)
        self.gateway_url: str | None = None
        # the gateway's URL once it serves, and since when, until it is announced
        self._gateway_serving: tuple[str, float] | None = None

    # ------------------------------------------------------------------ lifecycle

    def check(self) -> None:
        """Import the target of every service this host runs now, so that a mistake is
        reported before anything starts (another host's services are its own business:
        their code need not be installed here)."""
        if self.reload:
            if self.config.registry.redis:
                # a mesh on many machines is changed by deploying, host by host
                raise ConfigError(
                    "--reload is for development on one machine: it cannot be used with a "
                    "Redis registry (a mesh on many hosts); run without it"
                )
            require_watchfiles()
        sockets = False
        for name in self.placement.replicas:
            settings = self.config.services[name]
            cls = load_service_class(settings.target, self.config.python_paths())
            if cls.name != name:
                raise ConfigError(
                    f"services.{name}.target: {settings.target} is the service "
                    f"{cls.name!r}; name the table [services.{cls.name}]"
                )
            sockets = sockets or ServiceSpec.of(cls).socket is not None
        if self._tls is not None:
            self._tls.server_credentials()  # reads every file: fails now, clearly
        enabled = self.config.gateway.enabled
        self.gateway_enabled = enabled is True or (enabled == "auto" and sockets)
        if self.placement.gateway is not None:
            self.gateway_enabled = self.placement.gateway
        if self.gateway_enabled:
            # the gateway's modules load now, before this process runs gRPC (the registry):
            # not while gRPC's threads work and a node process is being forked
            import wiremesh.gateway.auth
            import wiremesh.gateway.server
            import wiremesh.runtime.gateway_process  # noqa: F401

            gateway = self.config.gateway
            if gateway.tls:
                for path in self.config.gateway_tls_paths():
                    if not path.is_file():
                        raise ConfigError(
                            f"gateway.tls: no such file {path} (create development "
                            "certificates with 'wiremesh certs init')"
                        )
            if not gateway.auth.configured and not is_loopback(gateway.host):
                raise ConfigError(
                    "the gateway listens beyond this machine but has no key to check tokens "
                    "with: set gateway.auth.secret_file, public_keys or jwks_file"
                )

    @property
    def registry_address(self) -> str:
        """Where the nodes find the registry: the Redis URL (with its password), or the
        address of the registry this supervisor hosts."""
        if self.config.registry.redis:
            return self.config.registry.url
        assert self.registry is not None, "the embedded registry is not started"
        return self.registry.address

    @property
    def registry_shown(self) -> str:
        """The registry's address for people: without its password."""
        if self.config.registry.redis:
            return redact_url(self.config.registry.url)
        return self.registry.address if self.registry is not None else ""

    async def run(self) -> int:
        """Run until :meth:`stop` (or a signal) and the drain are done. Returns 0."""
        self.check()
        mesh = self.config.mesh
        data = self.config.data_path
        self._refuse_a_second_mesh(data)
        private_folder(data, tighten=True)  # its secrets and data are its owner's alone
        try:
            await self._start_shared()
            await self._start_view()
        except BaseException:
            await self._stop_shared()
            raise
        client_tls = self._client_tls()
        MeshFile(
            registry=self.registry_address,
            pid=os.getpid(),
            name=mesh.name,
            started_at=time.time(),
            default_timeout=mesh.default_timeout,
            max_message_bytes=mesh.max_message_bytes,
            tls_ca=str(client_tls.ca) if client_tls else None,
            tls_cert=str(client_tls.cert) if client_tls else None,
            tls_key=str(client_tls.key) if client_tls else None,
            broker=self.broker_url,
            quorum_queues=self.config.broker.quorum_queues,
            join_secret=self.join_secret,
        ).write(data)
        where = self.broker.address if self.broker else redact_url(self.broker_url)
        self.echo(
            f"mesh {mesh.name}: registry at {self.registry_shown}, broker at {where}, "
            f"data in {data}"
        )
        here = f"host {self.placement.host}" if self.placement.host else "this host"
        gateway = ", the gateway" if self.gateway_enabled else ""
        self.echo(f"mesh {mesh.name}: {here} runs {self.placement.describe()}{gateway}")
        self._warn_if_unreachable()
        restart = self.config.restart
        for name, replicas in self.placement.replicas.items():
            for slot in range(replicas):
                backoff = Backoff(restart.initial_backoff, restart.max_backoff, restart.reset_after)
                self.slots.append(NodeProcess(name, slot, backoff))
        if self.gateway_enabled:
            if not self.config.gateway.auth.configured:
                from wiremesh.gateway.auth import dev_secret

                dev_secret(data)  # made now, before the gateway and `wiremesh token` read it
            backoff = Backoff(restart.initial_backoff, restart.max_backoff, restart.reset_after)
            self.slots.append(NodeProcess(GATEWAY_NODES, 0, backoff, gateway=True))
        for process in self.slots:
            self._spawn(process)
        self._tasks.append(asyncio.create_task(self._watch_registry()))
        if self.reload:
            self._reloader = asyncio.create_task(self._watch_source())
            self._tasks.append(self._reloader)
        try:
            await self.stopping.wait()
            if self._reloader is not None:
                # no node is replaced once the drain begins
                self._reloader.cancel()
                await asyncio.gather(self._reloader, return_exceptions=True)
            await self._drain()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._kill_leftovers()
            await self._stop_shared()
            with contextlib.suppress(FileNotFoundError):
                (data / MESH_FILE).unlink()
        self.echo(f"mesh {mesh.name}: stopped")
        return 0

    async def _start_shared(self) -> None:
        """Start what this supervisor hosts for the mesh: with the embedded registry, that
        registry and (with ``broker.url = "embedded"``) the broker; with Redis, nothing."""
        if self.config.registry.redis:
            return
        mesh = self.config.mesh
        # with TLS the registry asks for a client certificate of the mesh's CA: that is
        # the admission (a gateway on another host has one, never the mesh file)
        self.join_secret = None if self._tls else new_join_secret()
        registry = RegistryServer(
            host=mesh.host,
            port=self.config.registry.port,
            ttl=self.config.registry.ttl,
            credentials=self._tls.server_credentials() if self._tls else None,
            join_secret=self.join_secret,
        )
        await registry.start()
        self.registry = registry
        if self.config.broker.embedded:
            broker = BrokerServer(
                self.config.data_path / "broker" / "broker.db",
                host=mesh.host,
                port=self.config.broker.port,
                credentials=self._tls.server_credentials() if self._tls else None,
                max_message_bytes=mesh.max_message_bytes,
            )
            await broker.start()
            self.broker = broker
            self.broker_url = broker.url

    async def _start_view(self) -> None:
        """Watch the registry as the nodes see it (one path for both backends)."""
        registry = self.config.registry
        view = MeshView(
            open_registry(
                self.registry_address,
                mesh=self.config.mesh.name,
                tls=self._client_tls(),
                heartbeat_interval=registry.heartbeat_interval,
                ttl=registry.ttl,
            ),
            grace=registry.ttl + 1.0,
        )
        timeout = max(5.0, 2 * registry.ttl)
        try:
            await view.start(timeout=timeout)
        except BaseException as exc:
            await view.registry.close()
            if isinstance(exc, Unavailable):
                raise Unavailable(
                    f"the registry at {self.registry_shown} did not answer within {timeout:g}s"
                ) from None
            raise
        self.view = view

    async def _stop_shared(self) -> None:
        if self.view is not None:
            await self.view.close()
            await self.view.registry.close()
            self.view = None
        if self.broker is not None:
            await self.broker.stop()
            self.broker = None
        if self.registry is not None:
            await self.registry.stop()

    def _warn_if_unreachable(self) -> None:
        """With a Redis registry, nodes bound to loopback cannot be reached from another
        host: say so (two supervisors on one machine are a fine use of it, though)."""
        mesh = self.config.mesh
        if self.config.registry.redis and is_loopback(mesh.host) and not mesh.advertise:
            self.echo(
                f"mesh {mesh.name}: note: the nodes listen on {mesh.host}, which other hosts "
                'cannot reach: set mesh.host = "0.0.0.0" (and mesh.advertise if needed)'
            )

    @staticmethod
    def _refuse_a_second_mesh(data: Path) -> None:
        """Two supervisors on one data folder would share (and then delete) one mesh.json
        and one set of service data: the second one does not start."""
        path = data / MESH_FILE
        if not path.is_file():
            return
        try:
            other = MeshFile.read(path)
        except ConfigError:  # unreadable: a stale file, to be overwritten
            return
        if other.running and other.pid != os.getpid():
            raise ConfigError(
                f"a mesh already runs on {data} (supervisor pid {other.pid}, registry "
                f"{redact_url(other.registry)}): stop it first, or give this one another "
                "mesh.data_dir"
            )

    def stop(self) -> None:
        """Begin the drain (what SIGINT and SIGTERM do)."""
        if self.stopping.is_set():
            self.kill_all()
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)

    def kill_all(self) -> None:
        self.echo("stopping at once")
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.kill()

    async def _drain(self) -> None:
        """Every process drains at once, each by its own rules (``docs/guide.md``,
        "Stopping"): the gateway first, so that it takes no new request from now on and
        its browsers get 1001 before any node closes a session; the nodes right after:
        each one refuses new work as soon as the mesh knows it drains and stays while the
        work in flight (the gateway's requests, its callers' work, here or on another host)
        may still call it. Callers thus finish before their callees, with no order given."""
        grace = self.config.mesh.drain_grace
        self.echo(f"draining {len(self.slots)} node(s), grace {grace:g}s")
        for slot in sorted(self.slots, key=lambda s: not s.gateway):
            if slot.process is not None and slot.process.returncode is None:
                slot.state = ProcessState.STOPPING
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signal.SIGTERM)
        self.changed()
        # each slot's task returns once its process has exited (one being spawned right
        # now gets its SIGTERM in _keep_running), or at once when it was waiting to restart
        if not self._slot_tasks:
            return
        _, pending = await asyncio.wait(self._slot_tasks, timeout=grace + 5.0)
        if pending:
            self.echo("some nodes did not stop within the grace period; killing them")
            self.kill_all()
            await asyncio.wait(pending, timeout=5.0)

    async def _kill_leftovers(self) -> None:
        """Kill any node process still running once the slots' tasks are gone, e.g. one
        spawned while the drain began, so that no node outlives ``run()``."""
        left = [s.process for s in self.slots if s.process and s.process.returncode is None]
        for process in left:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*(p.wait() for p in left), return_exceptions=True)

    # ------------------------------------------------------------------ reload

    async def _watch_source(self) -> None:
        """Reload the services whose source changes (``--reload``), until cancelled."""
        services = {
            name: self.config.services[name].target.partition(":")[0]
            for name in self.placement.replicas
        }
        reloader = Reloader(
            self,
            services,
            roots=self.config.python_paths(),
            skip=[self.config.data_path],
            root=self.config.root,
            config_file=self.config.source,
        )
        try:
            await reloader.run()
        except Exception as exc:  # the mesh runs on without reloads
            log.exception("reloading failed")
            self.echo(f"reload: stopped by an error, the mesh runs on without it: {exc!r}")

    async def replace(self, service: str) -> str | None:
        """Replace the nodes of ``service`` one at a time with nodes of its code as it is
        now: a new node starts; once the registry shows it serving, the old one drains as
        at a shutdown (it takes no new work, its work in flight finishes), but alone: it
        waits for none of the other nodes, which serve on (``DRAIN_ALONE``); once
        the mesh sees the old one draining, the next. Callers find as many serving nodes
        at every moment as before, and a call a draining node refuses has not run and goes
        to another node.

        Returns None once done, else why it stopped: a new node that exits before it
        serves (or does not serve within :data:`RELOAD_START_TIMEOUT`) is given up, and
        the old node it was to replace goes on.
        """
        slots = [
            s
            for s in self.slots
            if s.service == service and not s.gateway and not s.retired.is_set()
        ]
        try:
            for number, old in enumerate(slots, 1):
                if self.stopping.is_set():
                    return "the mesh is stopping"
                self.reloading = f"reloading {service} ({number}/{len(slots)})"
                self.echo(self.reloading)
                self.changed()
                new, why = await self._successor(old)
                if new is None:
                    return why
                self._retire(old, new)
                await self._until_drain_seen(old)
        finally:
            self.reloading = None
            self.changed()
        self.echo(f"reloaded {service}")
        return None

    async def _successor(self, old: NodeProcess) -> tuple[NodeProcess | None, str]:
        """Start the node to take ``old``'s place and wait until it serves; it, or None
        and why not."""
        assert self.view is not None
        restart = self.config.restart
        backoff = Backoff(restart.initial_backoff, restart.max_backoff, restart.reset_after)
        new = NodeProcess(old.service, old.slot, backoff, trial=True)
        self.slots.insert(self.slots.index(old) + 1, new)
        self._spawn(new)
        task = new.task
        assert task is not None
        deadline = time.monotonic() + RELOAD_START_TIMEOUT
        while not task.done() and not self.stopping.is_set():
            snapshot = self.view.snapshot
            node = snapshot.by_id.get(new.node_id) if new.node_id else None
            if node is not None and node.serving:
                new.trial = False
                self._follow(snapshot)  # the table (and the log) show it serving first
                return new, ""
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if self.stopping.is_set():
            return None, "the mesh is stopping"  # the drain stops the new node too
        keeps = f"{old.node_id} keeps serving" if old.state is ProcessState.SERVING else ""
        if task.done():
            code = new.last_exit
            exited = f"exited with {_describe_exit(code)}" if code is not None else "stopped"
            why = f"its new node {new.node_id} {exited} before serving (its output is above)"
        else:
            why = f"its new node {new.node_id} did not serve within {RELOAD_START_TIMEOUT:g}s"
            new.retired.set()
            if new.process is not None and new.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    new.process.kill()
            await asyncio.wait([task], timeout=5.0)
        new.retired.set()
        if new in self.slots:
            self.slots.remove(new)
        self.changed()
        return None, f"{why}; {keeps}" if keeps else why

    def _retire(self, old: NodeProcess, new: NodeProcess) -> None:
        """``new`` serves in ``old``'s place: ``old``'s node drains, and its slot goes once
        the node has stopped."""
        old.retired.set()
        self.echo(f"{old.node_id}: replaced by {new.node_id}; draining")
        process = old.process
        if process is not None and process.returncode is None:
            old.state = ProcessState.STOPPING
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(DRAIN_ALONE)  # its siblings serve on: it waits for none
        elif (old.task is None or old.task.done()) and old in self.slots:
            self.slots.remove(old)  # it had failed: nothing runs there
        # else its task, waiting to restart the node, wakes and removes the slot
        self.changed()

    async def _until_drain_seen(self, old: NodeProcess) -> None:
        """Wait until the mesh sees ``old``'s node draining (callers no longer choose it)
        or gone, at most :data:`RELOAD_RETIRE_WAIT` seconds."""
        assert self.view is not None
        deadline = time.monotonic() + RELOAD_RETIRE_WAIT
        while time.monotonic() < deadline and not self.stopping.is_set():
            node = self.view.snapshot.by_id.get(old.node_id)
            process = old.process
            if (
                node is None
                or not node.serving
                or process is None
                or process.returncode is not None
            ):
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ one slot

    def _command(self, slot: NodeProcess) -> tuple[list[str], dict[str, str], str]:
        """The command line, the environment and the launch description (for the
        standard input, see the module docstring) of the process that fills ``slot``.
        The environment is the supervisor's, plus a service's own ``env`` table."""
        if slot.gateway:
            # (the gateway's modules load only in a mesh that runs one)
            from wiremesh.runtime.gateway_process import GatewayLaunch

            launch = GatewayLaunch(
                config=self.config.model_dump_json(),
                registry=self.registry_address,
                gateway_id=slot.node_id,
                supervisor_pid=os.getpid(),
                join_secret=self.join_secret,
            )
            command = [sys.executable, "-m", "wiremesh.runtime.gateway_process", "-"]
            return command, {**os.environ}, launch.to_json()
        env = {**os.environ, **self.config.services[slot.service].env}
        command = [sys.executable, "-m", "wiremesh.runtime.node_process", "-"]
        return command, env, self.launch_of(slot).to_json()

    def launch_of(self, slot: NodeProcess) -> NodeLaunch:
        mesh = self.config.mesh
        broker = self.config.broker
        return NodeLaunch(
            target=self.config.services[slot.service].target,
            service=slot.service,
            node_id=slot.node_id,
            registry=self.registry_address,
            join_secret=self.join_secret,
            data_dir=str(self.config.data_path / "data" / slot.service),
            host=mesh.host,
            advertise=mesh.advertise or None,
            default_timeout=mesh.default_timeout,
            drain_grace=mesh.drain_grace,
            max_message_bytes=mesh.max_message_bytes,
            heartbeat_interval=self.config.registry.heartbeat_interval,
            ttl=self.config.registry.ttl,
            balancer=mesh.balancer,
            balancers={name: s.balancer for name, s in self.config.services.items() if s.balancer},
            breaker=mesh.breaker.model_dump(),
            breakers={name: b.model_dump() for name, b in self.config.breakers().items()},
            python_path=[str(p) for p in self.config.python_paths()],
            tls=[str(p) for p in self.config.tls_paths()] if self._tls else None,
            supervisor_pid=os.getpid(),
            groups=list(self.config.services[slot.service].groups),
            observability=self.config.observability.model_dump(),
            mesh=mesh.name,
            broker=self.broker_url,
            store=self.config.services[slot.service].store,
            pool_size=self.config.services[slot.service].pool_size,
            max_overflow=self.config.services[slot.service].max_overflow,
            prefetch=broker.prefetch,
            attempts=broker.attempts,
            initial_backoff=broker.initial_backoff,
            max_backoff=broker.max_backoff,
            handler_timeout=broker.handler_timeout,
            inbox_keep=broker.inbox_keep,
            publish_timeout=broker.publish_timeout,
            quorum_queues=broker.quorum_queues,
            restarts=slot.restarts,
        )

    def _spawn(self, slot: NodeProcess) -> None:
        """Start the task that keeps ``slot``'s process running."""
        slot.task = asyncio.create_task(self._keep_running(slot))
        # a finished task (a slot a reload replaced) is forgotten
        self._slot_tasks = [t for t in self._slot_tasks if not t.done()]
        self._slot_tasks.append(slot.task)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(slot.task)

    async def _keep_running(self, slot: NodeProcess) -> None:
        try:
            await self._run_slot(slot)
        finally:
            if slot.retired.is_set() and slot in self.slots:
                self.slots.remove(slot)
                self.changed()

    async def _run_slot(self, slot: NodeProcess) -> None:
        while not self.stopping.is_set() and not slot.retired.is_set():
            slot.node_id = _gateway_id() if slot.gateway else new_node_id(slot.service)
            slot.address = ""
            slot.state = ProcessState.STARTING
            slot.was_registered = False
            slot.silent_since = None
            command, env, launch = self._command(slot)
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            slot.process, slot.pid, slot.started_at = process, process.pid, time.time()
            await _hand_over(process, launch)
            self.echo(f"{slot.node_id}: started (pid {process.pid})")
            if self.stopping.is_set() or slot.retired.is_set():
                # the drain began (or a reload replaced the slot) while this process was
                # being spawned: it missed the SIGTERM the others got
                slot.state = ProcessState.STOPPING
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            self.changed()
            assert process.stdout is not None
            await self._relay_output(slot.node_id, process.stdout)
            code = await process.wait()
            ran_for = time.time() - slot.started_at
            slot.last_exit, slot.pid = code, 0
            if self.stopping.is_set() or slot.retired.is_set():
                # draining (or replaced): whatever the exit, the node is not started again
                slot.state = ProcessState.STOPPED
                if code in (0, -signal.SIGTERM, -signal.SIGKILL):
                    self.echo(f"{slot.node_id}: stopped")
                else:
                    self.echo(f"{slot.node_id}: stopped, exited with {_describe_exit(code)}")
                self.changed()
                return
            if slot.trial:
                # a reload's node that never served: the reload gives it up (see replace)
                slot.state = ProcessState.FAILED
                self.changed()
                return
            if code == EXIT_CONFIG:
                slot.state = ProcessState.FAILED
                self.echo(f"{slot.node_id}: cannot start as configured; not restarting")
                self.changed()
                return
            delay = slot.backoff.next_delay(ran_for, self._rng)
            slot.state = ProcessState.RESTARTING
            slot.restarts += 1
            self.echo(
                f"{slot.node_id}: exited with {_describe_exit(code)}; restart in {delay:.1f}s"
            )
            self.changed()
            await _first_of(delay, self.stopping, slot.retired)
        slot.state = ProcessState.STOPPED

    async def _relay_output(self, node_id: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the reader's limit
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            # a JSON log line names its node itself: passed on as it is, still one JSON object
            self.echo(text if text.startswith("{") else f"{node_id} | {text}")

    async def _watch_registry(self) -> None:
        """Follow each process's node in the registry; kill one that hangs."""
        assert self.view is not None
        while True:
            await asyncio.sleep(0.25)
            try:
                self._follow(self.view.snapshot)
            except Exception:  # one bad turn never ends the watch (and its restarts)
                log.exception("following the registry failed; trying again")

    def _follow(self, snapshot: MeshSnapshot) -> None:
        """One look at the registry: each process's state, and the hung ones killed."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None or slot.process.returncode is not None:
                continue
            node = snapshot.by_id.get(slot.node_id)
            before = slot.state
            if node is not None:
                slot.address = node.address
                slot.was_registered = True
                slot.silent_since = None
                if slot.state is not ProcessState.STOPPING:
                    slot.state = ProcessState.SERVING if node.serving else ProcessState.STOPPING
            elif slot.was_registered and slot.state is not ProcessState.STOPPING:
                slot.state = ProcessState.UNRESPONSIVE
                slot.silent_since = slot.silent_since or now
                if now - slot.silent_since > HUNG_AFTER:
                    self.echo(f"{slot.node_id}: unresponsive; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        slot.process.kill()
            if slot.state is not before:
                if slot.state is ProcessState.SERVING:
                    self.echo(f"{slot.node_id}: serving at {slot.address}")
                    if slot.gateway and node is not None and self.gateway_url is None:
                        self._gateway_serving = (node.metadata.get(GATEWAY_URL_KEY, ""), now)
                self.changed()
        pending = self._gateway_serving
        if pending is not None:
            # announced once every node serves (a browser sent there finds its service),
            # or after a while when one does not come up
            url, since = pending
            nodes = [s for s in self.slots if not s.gateway]
            if now - since > ANNOUNCE_GATEWAY_AFTER or all(
                s.state is ProcessState.SERVING for s in nodes
            ):
                self._gateway_serving = None
                self._announce_gateway(url)

    def _announce_gateway(self, url: str) -> None:
        """Print where browsers go (with a development token when the gateway uses the
        development secret), and write it into ``mesh.json``."""
        if not url:
            return
        shown = url + "/"
        if not self.config.gateway.auth.configured:
            from wiremesh.gateway.auth import dev_secret, mint_token

            secret = dev_secret(self.config.data_path)
            if secret:
                shown += "#token=" + mint_token(secret, subject="dev", ttl=DEV_TOKEN_TTL)
        self.gateway_url = shown
        self.echo(f"gateway: {shown}")
        path = self.config.data_path / MESH_FILE
        with contextlib.suppress(ConfigError, OSError):
            mesh = MeshFile.read(path)
            mesh.gateway = url
            mesh.write(self.config.data_path)

    def _client_tls(self) -> TlsFiles | None:
        if self._tls is None:
            return None
        certs = self._tls.ca.parent
        client_cert, client_key = certs / "client.pem", certs / "client-key.pem"
        if client_cert.is_file() and client_key.is_file():
            return TlsFiles(self._tls.ca, client_cert, client_key)
        return self._tls


async def _hand_over(process: asyncio.subprocess.Process, launch: str) -> None:
    """Write the launch description to the child's standard input and close it (the
    child reads it to the end). A child that died at once is the restart loop's news."""
    stdin = process.stdin
    assert stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(launch.encode())
        await stdin.drain()
    stdin.close()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await stdin.wait_closed()


async def _first_of(timeout: float, *events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set, at most ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _gateway_id() -> str:
    from wiremesh.gateway.server import new_gateway_id

    return new_gateway_id()
