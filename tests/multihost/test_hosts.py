"""The multi-host harness itself: hosts, relays, faults, teardown, the private Redis.

Every exchange goes from a process inside a host, started with ``python -c``, to another
host, to a relay on the bridge address, or to the private Redis; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .hosts import SUBNETS, Host, Network, RedisInstance
from .linux import IP

pytestmark = pytest.mark.multihost

# Connects to argv[1]:argv[2], sends the bytes given in hex, prints what comes back (in hex)
# or the error, within argv[4] seconds.
PROBE = """
import socket, sys
host, port, payload, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
payload = bytes.fromhex(payload)
try:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        print("reply", sock.recv(256).hex() if payload else "")
except OSError as exc:
    print(type(exc).__name__, exc)
"""

# Echoes the first read of every connection, on port argv[1].
ECHO_SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    connection, _ = server.accept()
    with connection:
        connection.sendall(connection.recv(1024))
"""

# Sends argv[3] bytes to argv[1]:argv[2] from a thread while reading them back, prints the count.
STREAM = """
import socket, sys, threading
size = int(sys.argv[3])
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
def send():
    sock.sendall(bytes(range(256)) * (size // 256))
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
received = 0
while chunk := sock.recv(65536):
    received += len(chunk)
print(received)
"""


def probe(host: Host, address: str, payload: bytes = b"", timeout: float = 2.0) -> str:
    """``"reply <hex>"`` or ``"<ErrorName> <message>"``: what ``host`` got from ``address``."""
    ip, port = address.rsplit(":", 1)
    argv = [sys.executable, "-c", PROBE, ip, port, payload.hex(), str(timeout)]
    return host.run(argv, timeout=timeout + 10).stdout.strip()


def reply(data: bytes) -> str:
    return f"reply {data.hex()}"


def start_echo(host: Host, port: int) -> None:
    host.spawn([sys.executable, "-c", ECHO_SERVER, str(port)])
    host.wait_for_port(port, timeout=10)


def test_hosts_get_a_namespace_an_address_and_short_link_names(network: Network) -> None:
    hosts = [network.add_host(name) for name in ("a", "b", "c")]

    assert network.subnet.subnet_of(SUBNETS)
    start = network.subnet.network_address
    assert network.gateway == str(start + 1)
    assert [host.address for host in hosts] == [str(start + 2), str(start + 3), str(start + 4)]
    assert all(host.netns == f"{network.prefix}-{host.name}" for host in hosts)
    assert all(len(name) <= 15 for name in [network.bridge, *(host.veth for host in hosts)])
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    assert all(host.netns in listed for host in hosts)


def test_spawn_runs_inside_the_host_with_env_cwd_and_a_log(
    network: Network, tmp_path: Path
) -> None:
    a = network.add_host("a")
    script = f'echo "$GREETING"; pwd; {IP} -4 -o addr show dev eth0'

    process = a.spawn(["sh", "-c", script], env={"GREETING": "hello"}, cwd=tmp_path)

    assert process.wait(timeout=10) == 0
    lines = process.output().splitlines()
    assert lines[:2] == ["hello", str(tmp_path)]
    assert f"inet {a.address}/" in lines[2]


def test_two_hosts_reach_each_other_over_tcp(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    start_echo(a, 7000)

    assert probe(b, f"{a.address}:7000", b"hello") == reply(b"hello")


def test_two_networks_at_once_take_their_own_subnets_and_stay_apart(
    network: Network, tmp_path: Path
) -> None:
    a = network.add_host("a")
    start_echo(a, 7000)

    with Network(workdir=tmp_path / "other") as other:
        b = other.add_host("b")

        assert not other.subnet.overlaps(network.subnet)
        assert "No route to host" in probe(b, f"{a.address}:7000", b"x")


async def test_an_async_test_talks_to_a_host_from_its_own_loop(network: Network) -> None:
    a = network.add_host("a")
    start_echo(a, 7000)

    reader, writer = await asyncio.wait_for(asyncio.open_connection(a.address, 7000), 5)
    writer.write(b"from the test's loop")
    echoed = await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    await writer.wait_closed()

    assert echoed == b"from the test's loop"


def test_hosts_reach_nothing_outside_loopback_and_the_test_subnet(network: Network) -> None:
    a = network.add_host("a")

    # 203.0.113.0/24 is reserved for documentation; the host refuses to send there at all.
    assert "No route to host" in probe(a, "203.0.113.1:80")


@pytest.mark.parametrize(
    ("service", "payload", "answers"),
    [
        ("shared_redis", b"PING\r\n", (b"+PONG\r\n",)),
        ("shared_rabbitmq", b"AMQP\x00\x00\x09\x01", (b"\x01\x00\x00",)),  # connection.start
        ("shared_postgres", struct.pack("!ii", 8, 80877103), (b"S", b"N")),  # SSLRequest
    ],
)
def test_a_host_reaches_a_shared_service_through_a_forward(
    network: Network,
    request: pytest.FixtureRequest,
    service: str,
    payload: bytes,
    answers: tuple[bytes, ...],
) -> None:
    address = request.getfixturevalue(service)
    a = network.add_host("a")

    assert address.startswith(f"{network.gateway}:")
    outcome = probe(a, address, payload)
    assert outcome.startswith("reply "), outcome
    assert bytes.fromhex(outcome.removeprefix("reply ")).startswith(answers)


@pytest.fixture
def loopback_echo() -> Iterator[int]:
    """An echo server on the root namespace's loopback, echoing until its client is done."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            while chunk := connection.recv(65536):
                connection.sendall(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    thread.join(timeout=10)
    server.close()


def test_a_forward_relays_a_large_stream_both_ways(network: Network, loopback_echo: int) -> None:
    a = network.add_host("a")
    ip, port = network.forward(loopback_echo).split(":")
    size = 8 * 1024 * 1024

    result = a.run([sys.executable, "-c", STREAM, ip, port, str(size)], timeout=30)

    assert result.stdout.strip() == str(size), result.stderr


def test_a_cut_host_vanishes_silently_and_heal_brings_it_back(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    start_echo(a, 7000)
    assert probe(b, f"{a.address}:7000", b"x") == reply(b"x")

    a.cut()
    # No RST, no ICMP: the connection attempt just times out.
    assert probe(b, f"{a.address}:7000", b"x", timeout=0.5).startswith("TimeoutError")

    a.heal()
    assert probe(b, f"{a.address}:7000", b"x") == reply(b"x")


def test_blocking_one_port_stops_only_that_port(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    start_echo(a, 7000)
    start_echo(a, 7001)

    b.block(a.address, 7000)
    assert probe(b, f"{a.address}:7000", b"x", timeout=0.5).startswith("TimeoutError")
    assert probe(b, f"{a.address}:7001", b"x") == reply(b"x")

    b.unblock(a.address, 7000)
    assert probe(b, f"{a.address}:7000", b"x") == reply(b"x")


def test_blocking_an_address_cuts_two_hosts_apart_both_ways(network: Network) -> None:
    a, b, c = (network.add_host(name) for name in ("a", "b", "c"))
    for host in (a, b, c):
        start_echo(host, 7000)

    b.block(a.address)
    assert probe(b, f"{a.address}:7000", b"x", timeout=0.5).startswith("TimeoutError")
    assert probe(a, f"{b.address}:7000", b"x", timeout=0.5).startswith("TimeoutError")
    assert probe(b, f"{c.address}:7000", b"x") == reply(b"x")
    assert probe(a, f"{c.address}:7000", b"x") == reply(b"x")

    b.unblock(a.address)
    assert probe(b, f"{a.address}:7000", b"x") == reply(b"x")


def test_a_host_can_be_cut_from_redis_alone(network: Network, private_redis: RedisInstance) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    start_echo(b, 7000)

    a.block(private_redis.address)

    assert probe(a, private_redis.address, b"PING\r\n", timeout=0.5).startswith("TimeoutError")
    assert probe(b, private_redis.address, b"PING\r\n") == reply(b"+PONG\r\n")
    assert probe(a, f"{b.address}:7000", b"x") == reply(b"x")


def test_kill_all_ends_every_process_of_a_host_and_no_other(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    parent = a.spawn(["sh", "-c", "sleep 60 & sleep 60"])
    other = b.spawn(["sleep", "60"])
    deadline = time.monotonic() + 10
    while len(a.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    a.kill_all()

    assert a.pids() == []
    assert parent.popen.returncode == -9
    assert other.running


def test_the_private_redis_can_be_killed_and_restarts_empty(
    network: Network, private_redis: RedisInstance
) -> None:
    a = network.add_host("a")
    assert probe(a, private_redis.address, b"SET key value\r\n") == reply(b"+OK\r\n")

    private_redis.kill()
    assert probe(a, private_redis.address, b"PING\r\n").startswith("ConnectionRefusedError")

    private_redis.restart()
    assert probe(a, private_redis.address, b"GET key\r\n") == reply(b"$-1\r\n")


def test_a_paused_redis_answers_nothing_until_it_resumes(
    network: Network, private_redis: RedisInstance
) -> None:
    a = network.add_host("a")

    private_redis.pause(30)
    assert probe(a, private_redis.address, b"PING\r\n", timeout=0.5).startswith("TimeoutError")

    private_redis.resume()
    assert probe(a, private_redis.address, b"PING\r\n") == reply(b"+PONG\r\n")


# Connects to argv[1]:argv[2] and holds the connection open.
HOLD = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
time.sleep(60)
"""


def test_teardown_leaves_nothing_behind_even_when_the_test_fails(
    netns_support: None, tmp_path: Path
) -> None:
    service = socket.create_server(("127.0.0.1", 0))
    service.settimeout(10)
    open_files = len(os.listdir("/proc/self/fd"))

    with pytest.raises(RuntimeError, match="the test failed"), Network(workdir=tmp_path) as network:
        hosts = [network.add_host(name) for name in ("a", "b", "c")]
        ip, port = network.forward(service.getsockname()[1]).split(":")
        process = hosts[0].spawn([sys.executable, "-c", HOLD, ip, port])
        relayed, _ = service.accept()  # a connection through the relay is open
        names = [network.bridge, *(host.veth for host in hosts), *(host.netns for host in hosts)]
        raise RuntimeError("the test failed")

    namespaces = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run([IP, "-o", "link"], capture_output=True, text=True).stdout
    assert [name for name in names if name in namespaces or name in links] == []
    assert process.popen.returncode == -9
    assert relayed.recv(1) == b""  # the relay closed its side
    relayed.close()
    service.close()
    assert len(os.listdir("/proc/self/fd")) == open_files - 1  # the relay's sockets too
    assert "multihost-relay" not in [thread.name for thread in threading.enumerate()]


# Builds a network with two hosts and a process in one, writes its names to argv[2], then
# waits to be killed: a test run that dies without its teardown.
DYING_RUN = """
import json, pathlib, sys, time
sys.path.insert(0, sys.argv[1])
from multihost.hosts import Network
network = Network(workdir=pathlib.Path(sys.argv[2]).parent).__enter__()
hosts = [network.add_host(name) for name in ("a", "b")]
sleeper = hosts[0].spawn(["sleep", "60"])
names = [network.bridge, *(host.veth for host in hosts), *(host.netns for host in hosts)]
pathlib.Path(sys.argv[2]).write_text(json.dumps({"names": names, "pid": sleeper.pid}))
time.sleep(60)
"""


def test_a_new_network_removes_what_a_killed_run_left_behind(
    netns_support: None, tmp_path: Path
) -> None:
    report = tmp_path / "dying" / "names.json"
    report.parent.mkdir()
    tests = Path(__file__).resolve().parents[1]
    dying = subprocess.Popen([sys.executable, "-c", DYING_RUN, str(tests), str(report)])
    deadline = time.monotonic() + 10
    while not report.exists() and dying.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    dying.kill()
    dying.wait(timeout=10)
    left = json.loads(report.read_text())

    with Network(workdir=tmp_path / "new") as network:
        network.add_host("a")
        namespaces = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run([IP, "-o", "link"], capture_output=True, text=True).stdout

    assert [name for name in left["names"] if name in namespaces or name in links] == []
    assert ended(left["pid"])


def ended(pid: int, timeout: float = 5.0) -> bool:
    """Whether process ``pid`` is gone, or a zombie, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.01)
    return False
