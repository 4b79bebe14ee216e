"""Real hosts for multi-host tests: each host is a Linux network namespace on a bridge.

Theory of operation
-------------------
A :class:`Network` is a bridge ``wm-<run>`` in the root namespace that holds the gateway
address, the first of its subnet: the first /24 of :data:`SUBNETS` that no route of the
machine uses (``10.213.0.0/24``, unless another run is going on). :meth:`Network.add_host`
creates a namespace
``wm-<run>-<name>`` joined to the bridge by a veth pair (``wm-<run>-<i>`` on the bridge,
``eth0`` inside), gives it the next address, brings up ``lo`` and ``eth0`` and routes by
default through the gateway::

    root namespace                                  hosts
    127.0.0.1 Redis, RabbitMQ, PostgreSQL
        ^  relays (Network.forward)
    10.213.0.1 bridge wm-3fa9b1 ── wm-3fa9b1-0 ══ eth0 10.213.0.2  namespace wm-3fa9b1-a
                                └─ wm-3fa9b1-1 ══ eth0 10.213.0.3  namespace wm-3fa9b1-b

``<run>`` is random for each network, so leftovers of a killed run never collide with a new
one; a new network first removes what dead runs left behind (:func:`remove_dead_runs`).

Traffic stays on this machine: every host rejects (ICMP admin-prohibited, so the sender
fails at once) any IPv4 destination outside loopback and its network's subnet, and the
root namespace does not forward the subnet anywhere.

Faults
------
- :meth:`Host.cut` sets the bridge side of the host's veth down: frames to and from the
  host are lost on the bridge. Nobody gets a RST or an ICMP error; open connections stall
  on both sides until their own timeouts, new ones time out (or, once ARP gives up after a
  few seconds, fail with "no route to host"), exactly as when a machine loses power or its
  cable. :meth:`Host.heal` sets it up again.
- :meth:`Host.block` adds an address, or an address and port, to nftables sets inside the
  host's namespace whose rules drop matching packets on ``eth0``, both ways, in the
  ``netdev`` ingress and egress hooks: below the sockets, so neither the host's processes
  nor the peer get an error, only silence. Blocking the gateway's address and a relayed
  port cuts a host from Redis only, or from RabbitMQ only; blocking another host's address
  cuts the two apart.

Everything here needs root, ``ip`` (iproute2) and ``nft`` (nftables):
:func:`missing_requirements` says what is missing. Commands are quick (a few ms each), so
the methods are plain blocking calls that async tests can make directly; a long wait such
as :meth:`Host.wait_for_port` is better run with ``asyncio.to_thread`` in an async test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import linux
from .linux import IP, NETNS_DIR, NFT, NetworkError, missing_requirements, remove_dead_runs
from .redis_server import RedisInstance, redis_server_path
from .relay import Relay

__all__ = [
    "SUBNETS",
    "Host",
    "HostProcess",
    "Network",
    "NetworkError",
    "RedisInstance",
    "missing_requirements",
    "redis_server_path",
    "remove_dead_runs",
]

SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")
"""Where test networks take their /24: private addresses (RFC 1918) that the machines
running the tests do not route; a network takes none that a route of the machine uses."""

HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")
KILL_TIMEOUT = 5.0  # seconds for a host's processes to be gone after SIGKILL


@dataclass
class HostProcess:
    """A process started by :meth:`Host.spawn`; its output (stdout and stderr) is in ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """What the process has written so far, for assertions and failure messages."""
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to end; return its exit status (negative: the signal)."""
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process's group (the process and its children)."""
        if self.popen.poll() is not None:
            return  # reaped: its pid may belong to another process by now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


class Host:
    """One machine of the test network: a namespace with its own address and processes."""

    def __init__(self, network: Network, name: str, index: int, address: str) -> None:
        self.name = name
        self.address = address
        self.netns = f"{network.prefix}-{name}"
        self.veth = f"{network.prefix}-{index}"  # the bridge side; inside it is eth0
        self._logs = network.workdir
        self._processes: list[HostProcess] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} netns={self.netns}>"

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> HostProcess:
        """Start ``argv`` inside the host, in a process group of its own.

        ``env`` adds to (or overrides) this process's environment. Output goes to a log
        file in the network's working folder (:attr:`HostProcess.log`).
        """
        log = self._logs / f"{self.name}-{len(self._processes)}-{Path(argv[0]).name}.log"
        with log.open("wb") as log_file:
            popen = subprocess.Popen(
                [IP, "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        process = HostProcess(popen, log)
        self._processes.append(process)
        return process

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the host; return its exit status and output (text)."""
        return subprocess.run(
            [IP, "netns", "exec", self.netns, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def pids(self) -> list[int]:
        """Every process living in the host's namespace (whoever started it)."""
        return [int(pid) for pid in linux.command([IP, "netns", "pids", self.netns]).split()]

    def kill_all(self) -> None:
        """SIGKILL every process of the host, as when the machine dies; waits until done."""
        for process in self._processes:
            process.signal(signal.SIGKILL)  # also those not yet inside the namespace
        deadline = time.monotonic() + KILL_TIMEOUT
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise NetworkError(f"processes {pids} of {self.netns} survive SIGKILL")
            linux.kill(pids)
            time.sleep(0.01)
        for process in self._processes:
            process.popen.wait(KILL_TIMEOUT)

    def cut(self) -> None:
        """The host vanishes silently: its link to the bridge goes down (see the module doc)."""
        linux.command([IP, "link", "set", self.veth, "down"])

    def heal(self) -> None:
        """The host's link to the bridge comes back."""
        linux.command([IP, "link", "set", self.veth, "up"])

    def block(self, address: str, port: int | None = None) -> None:
        """Drop every packet between this host and ``address`` (only ``port`` of it, if given).

        Both directions, silently. ``address`` may also be ``"ip:port"`` as
        :meth:`Network.forward` returns it. Blocking twice is blocking once.
        """
        self._nft("add", address, port)

    def unblock(self, address: str, port: int | None = None) -> None:
        """Undo :meth:`block` with the same arguments."""
        self._nft("delete", address, port)

    def wait_for_port(self, port: int, timeout: float = 10.0) -> None:
        """Wait until a process of the host accepts TCP connections on ``port``.

        Raises :class:`TimeoutError` with the host's process logs when it does not.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.address, port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {p.log.name}\n{p.output()}" for p in self._processes)
                    raise TimeoutError(f"{self} accepts nothing on {port}:\n{logs}") from None
                time.sleep(0.02)

    def _nft(self, verb: str, address: str, port: int | None) -> None:
        if port is None and ":" in address:
            address, port_text = address.rsplit(":", 1)
            port = int(port_text)
        ipaddress.IPv4Address(address)  # a clear error for a typo, before nft's own
        element = f"ports {{ {address} . {port} }}" if port else f"hosts {{ {address} }}"
        linux.command(
            [IP, "netns", "exec", self.netns, NFT, verb, "element", "netdev", "wm", element]
        )

    def _setup(self, network: Network) -> None:
        linux.ip_batch(
            [
                f"netns add {self.netns}",
                f"link add {self.veth} type veth peer name eth0 netns {self.netns}",
                f"link set {self.veth} master {network.bridge} up",
            ]
        )
        linux.ip_batch(
            [
                f"addr add {self.address}/{network.subnet.prefixlen} dev eth0",
                "link set lo up",
                "link set eth0 up",
                f"route add default via {network.gateway}",
            ],
            netns=self.netns,
        )
        linux.command(
            [IP, "netns", "exec", self.netns, NFT, "-f", "-"], stdin=_rules(network.subnet)
        )


def _rules(subnet: ipaddress.IPv4Network) -> str:
    """A host's nftables: containment in ``inet wm``, the sets of :meth:`Host.block` in
    ``netdev wm``."""
    return f"""
table inet wm {{
    chain output {{
        type filter hook output priority 0; policy accept;
        ip daddr != {{ 127.0.0.0/8, {subnet} }} reject with icmp admin-prohibited
    }}
}}
table netdev wm {{
    set hosts {{ type ipv4_addr; }}
    set ports {{ type ipv4_addr . inet_service; }}
    chain egress {{
        type filter hook egress device "eth0" priority 0; policy accept;
        ip daddr @hosts drop
        meta l4proto {{ tcp, udp }} ip daddr . th dport @ports drop
    }}
    chain ingress {{
        type filter hook ingress device "eth0" priority 0; policy accept;
        ip saddr @hosts drop
        meta l4proto {{ tcp, udp }} ip saddr . th sport @ports drop
    }}
}}
"""


class Network:
    """A bridge with hosts on it, torn down completely on exit, even after a failure.

    ``with Network(workdir=tmp_path) as network: a = network.add_host("a")``. Logs of the
    hosts' processes and the private Redis data live in ``workdir`` (a new temporary
    folder, kept, when not given).
    """

    def __init__(
        self, subnet: ipaddress.IPv4Network | None = None, workdir: Path | None = None
    ) -> None:
        self._subnet = subnet  # None: the first free /24 of SUBNETS, once started
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="wm-network-"))
        self.prefix = linux.new_run()
        self.bridge = self.prefix
        self.hosts: list[Host] = []
        self._free: Iterator[str] = iter(())
        self._relay: Relay | None = None  # started by the first forward
        self._forwards: dict[tuple[str, int], str] = {}
        self._redis: list[RedisInstance] = []

    def __enter__(self) -> Network:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        if self._subnet is None:
            raise NetworkError("the network is not started")
        return self._subnet

    @property
    def gateway(self) -> str:
        """The bridge's address: the hosts' default route, where relays and Redis listen."""
        return str(self.subnet.network_address + 1)

    def start(self) -> None:
        """Create the bridge with the gateway address, after removing dead runs' leftovers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with linux.machine_lock():
            remove_dead_runs()
            self._subnet = _unrouted(self._subnet, linux.routes())
            linux.ip_batch(
                [
                    f"link add name {self.bridge} address {_bridge_mac()} type bridge",
                    f'link set {self.bridge} alias "{linux.owner_alias()}"',
                    f"addr add {self.gateway}/{self.subnet.prefixlen} dev {self.bridge}",
                    f"link set {self.bridge} up",
                ]
            )
        self._free = (str(address) for address in list(self.subnet.hosts())[1:])

    def add_host(self, name: str) -> Host:
        """A new host ``name`` (lowercase letters, digits, dashes) with the next address."""
        if not HOST_NAME.fullmatch(name):
            raise ValueError(f"host name {name!r} must match {HOST_NAME.pattern}")
        if any(host.name == name for host in self.hosts):
            raise ValueError(f"there is already a host {name!r}")
        address = next(self._free, None)
        if address is None:
            raise NetworkError(f"{self.subnet} has no address left")
        host = Host(self, name, len(self.hosts), address)
        self.hosts.append(host)  # before its setup, so that close() removes a half-made host
        host._setup(self)
        return host

    def forward(self, target_port: int, *, target_host: str = "127.0.0.1") -> str:
        """Relay ``gateway:port`` to a service on the root namespace; return ``"ip:port"``.

        The port is ``target_port`` itself when it is free on the gateway address. Forwarding
        the same target twice returns the same address.
        """
        target = (target_host, target_port)
        if target not in self._forwards:
            self._relay = self._relay or Relay()
            port = self._relay.open(self.gateway, target_host, target_port)
            self._forwards[target] = f"{self.gateway}:{port}"
        return self._forwards[target]

    def start_redis(self) -> RedisInstance:
        """A private Redis for this test, reachable by every host and the test itself."""
        redis = RedisInstance(self.gateway, self.workdir / f"redis-{len(self._redis)}")
        self._redis.append(redis)
        return redis

    def close(self) -> None:
        """Kill every process of the hosts and the private Redis, close the relays, and remove
        the namespaces, veths and bridge. Raises the first failure once all is done."""
        failures: list[BaseException] = []
        for host in self.hosts:
            try:
                if (NETNS_DIR / host.netns).exists():  # a host whose setup failed may have none
                    host.kill_all()
            except (NetworkError, subprocess.TimeoutExpired) as exc:
                failures.append(exc)
        for redis in self._redis:
            try:
                redis.close()
            except (OSError, subprocess.TimeoutExpired) as exc:
                failures.append(exc)
        if self._relay is not None:
            try:
                self._relay.close()
            except (TimeoutError, RuntimeError) as exc:
                failures.append(exc)
            self._relay = None
        veths = [host.veth for host in self.hosts]
        linux.remove([*veths, self.bridge], [host.netns for host in self.hosts])
        links, namespaces = linux.names(self.prefix)
        if links or namespaces:
            failures.append(NetworkError(f"could not remove {', '.join(links + namespaces)}"))
        if failures:
            raise failures[0]


def _unrouted(
    subnet: ipaddress.IPv4Network | None, routes: list[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network:
    """``subnet`` if no route uses it, else (when None) the first /24 of SUBNETS free."""
    for candidate in [subnet] if subnet else SUBNETS.subnets(new_prefix=24):
        if not any(candidate.overlaps(route) for route in routes):
            return candidate
    raise NetworkError(f"{subnet or SUBNETS} is in use on this machine: is a test run going on?")


def _bridge_mac() -> str:
    """A random, locally administered MAC: a bridge with its own address keeps it, instead
    of taking its lowest port's, which would change as hosts come and go."""
    return "02:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(5))
