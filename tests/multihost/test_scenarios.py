"""A mesh over three real hosts, and what each failure does to it.

Every host is a network namespace running ``wiremesh run --host <name>`` with one and the
same ``wiremesh.toml``: a Redis registry (a private Redis of the test, so that it may be
killed), the machine's RabbitMQ and PostgreSQL (reached through relays on the bridge).

- host ``a``: a ``stock`` node and a gateway;
- host ``b``: a ``stock`` node, a ``ledger`` node and a gateway;
- host ``c``: a ``stock`` node and a ``ledger`` node.

The test itself is a fourth host (the root namespace): its client calls the mesh through
the registry, and its browsers are ``websockets`` clients of the gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import msgpack
import pytest
import redis
import websockets
from websockets.asyncio.client import ClientConnection

from tests.fixtures.postgres import fresh_database
from wiremesh.client import MeshClient, connect
from wiremesh.core.model import NodeInfo
from wiremesh.gateway.auth import mint_token
from wiremesh.registry.redis import mesh_prefix

from .hosts import Host, HostProcess, Network, RedisInstance

pytestmark = pytest.mark.multihost

HERE = Path(__file__).resolve().parent
WIREMESH = str(Path(sys.executable).with_name("wiremesh"))
TTL = 1.5
#: a node that died or vanished leaves every view within this (ttl + 1 s)
LEAVES_WITHIN = TTL + 1.0
GATEWAY_PORT = 8080
PRESENCE_TTL = 3.0
T = TypeVar("T")
#: the hosts and what runs there
PLAN = {
    "a": {"services": ["stock"], "gateway": True},
    "b": {"services": ["stock", "ledger"], "gateway": True},
    "c": {"services": ["stock", "ledger"], "gateway": False},
}

CONFIG = """\
[mesh]
name = "{mesh}"
host = "0.0.0.0"
default_timeout = 5
drain_grace = 2
python_path = ["{here}"]

[registry]
backend = "redis"
url = "{redis}"
heartbeat_interval = 0.5
ttl = {ttl}

[broker]
# a consumer cut off holds its unacknowledged messages until RabbitMQ's heartbeat ends
# its connection: a short one for the test (docs/deploy.md)
url = "amqp://guest:guest@{rabbitmq}/?heartbeat=2"
publish_timeout = 3

[restart]
initial_backoff = 0.2
max_backoff = 1

[gateway]
enabled = false
host = "0.0.0.0"
port = {gateway_port}
allow_plain = true
auth.secret_file = "{secret}"
# a dead gateway's channel members leave presence this long after it (15 s by default);
# only the channel scenario has members
limits.channels.presence_ttl = {presence_ttl}

[services.stock]
target = "svc_mesh:Stock"
store = "postgresql+asyncpg://postgres@{postgres}/{stock_db}"

[services.ledger]
target = "svc_mesh:Ledger"
store = "postgresql+asyncpg://postgres@{postgres}/{ledger_db}"
"""


@dataclass
class Mesh:
    """The running three-host mesh of one test."""

    network: Network
    redis: RedisInstance
    #: the machine's RabbitMQ as the hosts reach it (``ip:port``)
    rabbitmq: str
    name: str
    secret: str
    hosts: dict[str, Host]
    supervisors: dict[str, HostProcess] = field(default_factory=dict)
    client: MeshClient | None = None

    @property
    def url(self) -> str:
        return f"{self.redis.url}#{self.name}"

    def nodes_on(self, host: str, service: str | None = None) -> list[NodeInfo]:
        assert self.client is not None
        address = self.hosts[host].address
        return [
            n
            for n in self.client.snapshot.nodes
            if n.host == address and (service is None or n.service == service)
        ]

    def registered(self) -> set[str]:
        """The node ids Redis holds now."""
        with redis.Redis.from_url(self.redis.local_url) as direct:
            return {k.decode() for k in direct.hkeys(mesh_prefix(self.name) + "nodes")}

    def browser(self, host: str, path: str, subject: str = "ada") -> websockets.connect:
        token = mint_token(self.secret, subject=subject)
        return websockets.connect(
            f"ws://{self.hosts[host].address}:{GATEWAY_PORT}{path}",
            subprotocols=["wiremesh.v1", f"bearer.{token}"],  # type: ignore[list-item]
            open_timeout=5,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{p.output()[-3000:]}" for name, p in self.supervisors.items()
        )


@pytest.fixture
def databases(shared_postgres: str) -> Iterator[dict[str, str]]:
    with fresh_database("wm_mh_stock") as stock, fresh_database("wm_mh_ledger") as ledger:
        yield {"stock": stock, "ledger": ledger}


@pytest.fixture
async def mesh(
    network: Network,
    private_redis: RedisInstance,
    shared_rabbitmq: str,
    shared_postgres: str,
    databases: dict[str, str],
    tmp_path: Path,
) -> AsyncIterator[Mesh]:
    secret = secrets.token_hex(32)
    secret_file = tmp_path / "gateway-secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    name = f"mh-{secrets.token_hex(3)}"
    text = CONFIG.format(
        mesh=name,
        here=HERE,
        redis=private_redis.url,
        ttl=TTL,
        rabbitmq=shared_rabbitmq,
        gateway_port=GATEWAY_PORT,
        presence_ttl=PRESENCE_TTL,
        secret=secret_file,
        postgres=shared_postgres,
        stock_db=databases["stock"],
        ledger_db=databases["ledger"],
    )
    for host, plan in PLAN.items():
        text += f"\n[hosts.{host}]\nservices = {plan['services']!r}\n"
        text += f"gateway = {'true' if plan['gateway'] else 'false'}\n"
    hosts = {host: network.add_host(host) for host in PLAN}
    running = Mesh(network, private_redis, shared_rabbitmq, name, secret, hosts)
    for host_name, host in hosts.items():
        folder = tmp_path / host_name  # every host has the same file, its own data
        folder.mkdir()
        (folder / "wiremesh.toml").write_text(text)
        running.supervisors[host_name] = host.spawn(
            [WIREMESH, "run", "--host", host_name], cwd=folder, env={"WM_TEST_HOST": host_name}
        )
    try:
        running.client = await connect(running.url, timeout=15)
        await eventually(
            lambda: all(
                len([n for n in running.nodes_on(h) if n.serving])
                == len(PLAN[h]["services"]) + (1 if PLAN[h]["gateway"] else 0)
                for h in PLAN
            ),
            60,
            "every host's nodes and gateways to serve",
            running,
        )
        yield running
    finally:
        if running.client is not None:
            await running.client.close()
        for host in hosts.values():
            host.kill_all()


async def eventually(
    condition: Callable[[], T], timeout: float, what: str, mesh: Mesh | None = None
) -> T:
    """Wait until ``condition()`` is truthy; the hosts' logs when it is not in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = mesh.logs() if mesh is not None else ""
            raise AssertionError(f"not true within {timeout:g}s: {what}\n{logs}")
        await asyncio.sleep(0.05)


class CallLoop:
    """Idempotent calls in a loop from the test's host, each with a deadline: none may fail."""

    def __init__(self, client: MeshClient, target: str = "stock.whoami") -> None:
        self.client = client
        self.target = target
        self.ok = 0
        self.failed: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CallLoop:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.client.call(self.target, timeout=3)
                self.ok += 1
            except Exception as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)


class Browser:
    """One open browser session; it notes what arrives and how the socket closed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[bytes] = []
        self.closed: int | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.received.append(message if isinstance(message, bytes) else message.encode())
        except websockets.ConnectionClosed:
            pass
        self.closed = self.ws.close_code or 1006

    async def ask(self, text: bytes, timeout: float = 5) -> bytes:
        count = len(self.received)
        await self.ws.send(text)
        await eventually(lambda: len(self.received) > count, timeout, f"a reply to {text!r}")
        return self.received[count]

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def open_browser(mesh: Mesh, host: str, path: str, subject: str = "ada") -> Browser:
    browser = Browser(await mesh.browser(host, path, subject))
    await browser.ask(b"hello")
    return browser


# ------------------------------------------------------------------ a host lost


@pytest.mark.parametrize("how", ["killed", "cut off"])
async def test_a_lost_host_leaves_every_view_and_costs_no_call_session_or_message(
    mesh: Mesh, how: str
) -> None:
    assert mesh.client is not None
    (stock_a,) = mesh.nodes_on("a", "stock")
    (stock_c,) = mesh.nodes_on("c", "stock")
    a_ids = {n.node_id for n in mesh.nodes_on("a")}
    # browsers: on b's gateway, one pinned to a's node (it must move), one to c's node and
    # one on a's gateway (lost with its host); all of principal "ada"
    moving = await open_browser(mesh, "b", f"/ws/stock/{stock_a.node_id}")
    staying = await open_browser(mesh, "b", f"/ws/stock/{stock_c.node_id}")
    await open_browser(mesh, "a", "/ws/stock")
    # a's outbox: orders committed on a while its relay cannot reach RabbitMQ
    mesh.hosts["a"].block(mesh.rabbitmq)
    orders = [f"order-{i}" for i in range(5)]
    for order in orders:
        await mesh.client.call("stock.reserve", order, node=stock_a.node_id)
    async with CallLoop(mesh.client) as calls:
        await asyncio.sleep(0.3)
        lost_at = time.monotonic()
        if how == "killed":
            mesh.hosts["a"].kill_all()
        else:
            mesh.hosts["a"].cut()
        await eventually(
            lambda: not a_ids & set(mesh.client.snapshot.by_id),  # type: ignore[union-attr]
            LEAVES_WITHIN,
            f"host a's nodes to leave the view ({how})",
            mesh,
        )
        left_after = time.monotonic() - lost_at
        # the session pinned to a's node is closed with 1012 and reconnects to a live one
        await eventually(lambda: moving.closed is not None, 10, "the moved session to close")
        assert moving.closed == 1012
        again = await open_browser(mesh, "b", "/ws/stock")
        reply = await again.ask(b"where")
        assert reply.split()[1] in (b"b", b"c")
        # the session on b's gateway to c's node never noticed, and pushes reach it
        assert staying.closed is None
        pushed = await mesh.client.call(
            "stock.push", {"principal": "ada", "text": "news"}, node=stock_c.node_id
        )
        assert pushed >= 1
        await eventually(lambda: b"news" in staying.received, 5, "the push")
        await asyncio.sleep(1.0)
    assert calls.ok > 50
    assert calls.failed == [], calls.failed[:5]
    print(f"host a ({how}) left the view after {left_after:.2f}s")
    # a's outbox rows are relayed by a live stock node, and each order counted once
    deadline = time.monotonic() + 30
    while True:
        counts = await mesh.client.call("ledger.orders", timeout=5)
        if all(counts.get(o) for o in orders) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    assert {o: counts.get(o) for o in orders} == dict.fromkeys(orders, 1), mesh.logs()


# ------------------------------------------------------------------ partitions


async def test_a_host_cut_off_from_redis_leaves_the_others_views_keeps_its_own_and_returns(
    mesh: Mesh,
) -> None:
    assert mesh.client is not None
    c_ids = {n.node_id for n in mesh.nodes_on("c")}
    (ledger_c,) = mesh.nodes_on("c", "ledger")
    everyone = set(mesh.client.snapshot.by_id)
    mesh.hosts["c"].block(mesh.redis.address)
    cut_at = time.monotonic()
    await eventually(
        lambda: not c_ids & set(mesh.client.snapshot.by_id),  # type: ignore[union-attr]
        LEAVES_WITHIN,
        "c's nodes to leave the others' views",
        mesh,
    )
    print(f"c left the others' views after {time.monotonic() - cut_at:.2f}s")
    await asyncio.sleep(TTL)  # c's own view must still hold everyone, long past its ttl
    # the mesh no longer lists c's node: asked straight over gRPC, as any client can
    async with grpc.aio.insecure_channel(ledger_c.address) as channel:
        reply = await channel.unary_unary("/ledger/view")(msgpack.packb(None), timeout=3)
    assert set(msgpack.unpackb(reply)) == everyone
    mesh.hosts["c"].unblock(mesh.redis.address)
    healed_at = time.monotonic()
    await eventually(
        lambda: c_ids <= set(mesh.client.snapshot.by_id),  # type: ignore[union-attr]
        5,
        "c's nodes to come back",
        mesh,
    )
    back_after = time.monotonic() - healed_at
    print(f"c came back {back_after:.2f}s after healing")
    assert back_after <= 1.0 + 0.5  # within 1 s of healing, and the view's own delivery


async def test_two_hosts_cut_off_from_each_other_send_their_calls_elsewhere(
    mesh: Mesh,
) -> None:
    assert mesh.client is not None
    (ledger_b,) = mesh.nodes_on("b", "ledger")
    (stock_c,) = mesh.nodes_on("c", "stock")
    # b and c both reach Redis (so every view lists both), but not each other
    mesh.hosts["b"].block(mesh.hosts["c"].address)
    answered: list[str] = []
    started = time.monotonic()
    for _ in range(40):
        began = time.monotonic()
        reply = await mesh.client.call("ledger.ask_stock", 2.0, node=ledger_b.node_id, timeout=5)
        assert time.monotonic() - began < 2.5  # within the nested call's deadline
        answered.append(reply["node"])
    assert stock_c.node_id not in answered[-20:]  # ejected: c's node is not tried again
    assert stock_c.node_id in {n.node_id for n in mesh.client.snapshot.nodes}  # still listed
    print(f"40 calls across the partition in {time.monotonic() - started:.2f}s")


# ------------------------------------------------------------------ Redis away


async def test_redis_down_for_15s_then_back_empty_costs_no_call_and_no_session(
    mesh: Mesh,
) -> None:
    assert mesh.client is not None
    everyone = set(mesh.client.snapshot.by_id)
    (stock_a,) = mesh.nodes_on("a", "stock")
    browsers = [
        await open_browser(mesh, "a", "/ws/stock"),
        await open_browser(mesh, "b", f"/ws/stock/{stock_a.node_id}"),
    ]
    async with CallLoop(mesh.client) as calls:
        mesh.redis.kill()
        await asyncio.sleep(15)  # ten ttls: far past any lease it could have kept
        assert set(mesh.client.snapshot.by_id) == everyone  # the last view, kept
        mesh.redis.restart()  # empty
        back_at = time.monotonic()
        await eventually(lambda: everyone <= mesh.registered(), 2.0, "the registry whole", mesh)
        print(f"registry whole {time.monotonic() - back_at:.2f}s after Redis returned")
        await asyncio.sleep(2 * TTL)
        assert set(mesh.client.snapshot.by_id) == everyone
    assert calls.failed == [], calls.failed[:5]
    assert calls.ok > 300
    for browser in browsers:
        assert browser.closed is None
        assert (await browser.ask(b"still")).endswith(b"still")


# ------------------------------------------------------------------ RabbitMQ away


async def test_a_host_cut_off_from_rabbitmq_loses_nothing_acknowledged(mesh: Mesh) -> None:
    assert mesh.client is not None
    (stock_b,) = mesh.nodes_on("b", "stock")
    before = [f"early-{i}" for i in range(10)]
    for order in before:
        await mesh.client.call("stock.reserve", order)
    mesh.hosts["b"].block(mesh.rabbitmq)  # b's stock relay and b's ledger consumer lose it
    during = [f"during-{i}" for i in range(10)]
    for order in during:  # committed on b (its outbox keeps them) and elsewhere
        await mesh.client.call("stock.reserve", order, node=stock_b.node_id)
        await mesh.client.call("stock.reserve", order + "x")
    await asyncio.sleep(3)
    mesh.hosts["b"].unblock(mesh.rabbitmq)
    expected = before + during + [o + "x" for o in during]
    deadline = time.monotonic() + 60
    while True:
        counts = await mesh.client.call("ledger.orders", timeout=5)
        if all(counts.get(o) for o in expected) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    # every order reserved (acknowledged to its caller) arrives, exactly once
    assert {o: counts.get(o) for o in expected} == dict.fromkeys(expected, 1), mesh.logs()


# ------------------------------------------------------------------ channels

FEED = "feed:orders"


def controls(browser: Browser, since: int = 0) -> list[dict[str, Any]]:
    """The control messages (JSON text) the browser received from its ``since``-th
    message on, in order."""
    return [json.loads(m) for m in browser.received[since:] if m.startswith(b"{")]


async def request(browser: Browser, kind: str, number: int, **fields: Any) -> dict[str, Any]:
    """Send the control request ``kind`` with id ``number``; its answer (or error)."""
    count = len(browser.received)
    await browser.ws.send(json.dumps({"wm": kind, "id": number, **fields}))

    def answer() -> dict[str, Any] | None:
        return next((m for m in controls(browser, count) if m.get("id") == number), None)

    found = await eventually(answer, 5, f"an answer to {kind} {fields}")
    assert found is not None
    return found


def joins(browser: Browser) -> list[dict[str, Any]]:
    return [m for m in controls(browser) if m["wm"] == "join"]


def pubs(browser: Browser, since: int = 0) -> list[tuple[int, str]]:
    return [(m["offset"], m["data"]["text"]) for m in controls(browser, since) if m["wm"] == "pub"]


def top_offset(browser: Browser) -> int:
    """The offset of the last publication the browser received (0: none yet)."""
    found = pubs(browser)
    return found[-1][0] if found else 0


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


class Publisher:
    """Publications to a channel from the test's host: one per :meth:`one`, and one every
    50 ms while entered (``async with``; leaving waits for the one under way, so that
    ``sent`` holds every publication made, with its offset and text)."""

    def __init__(self, client: MeshClient, channel: str, prefix: str) -> None:
        self.client = client
        self.channel = channel
        self.prefix = prefix
        self.sent: list[tuple[int, str]] = []
        self.epochs: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def one(self) -> tuple[int, str]:
        text = f"{self.prefix}{len(self.sent)}"
        position = await self.client.call("stock.post", {"channel": self.channel, "text": text})
        self.sent.append((position["offset"], text))
        self.epochs.add(position["epoch"])
        return self.sent[-1]

    async def __aenter__(self) -> Publisher:
        async def run() -> None:
            while not self._stopping:
                await self.one()
                await asyncio.sleep(0.05)

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._stopping = True
        await self._task


async def test_a_subscriber_whose_gateway_is_killed_recovers_every_publication_on_another(
    mesh: Mesh,
) -> None:
    assert mesh.client is not None
    began = time.monotonic()
    (gateway_a,) = [n for n in mesh.nodes_on("a") if n.service != "stock"]
    (gateway_b,) = [n for n in mesh.nodes_on("b") if n.service not in ("stock", "ledger")]
    ada = await open_browser(mesh, "a", "/ws/stock", "ada")
    bob = await open_browser(mesh, "b", "/ws/stock", "bob")
    seen_by_bob = len(bob.received)
    assert (await request(bob, "subscribe", 1, channel=FEED))["wm"] == "subscribed"
    first = await request(ada, "subscribe", 1, channel=FEED)
    assert first["wm"] == "subscribed" and first["recovered"] is False, first
    epoch = first["epoch"]
    # bob, subscribed on b's gateway, is told of ada's join on a's
    joined = await eventually(
        lambda: [m for m in joins(bob) if m["member"]["principal"] == "ada"],
        5,
        "ada's join at bob",
    )
    assert len(joined) == 1, joined
    assert joined[0]["member"]["gateway"] == gateway_a.node_id
    ada_session = joined[0]["member"]["session"]
    presence = await request(bob, "presence", 2, channel=FEED)
    members = {m["principal"]: m for m in presence["members"]}
    assert members.keys() == {"ada", "bob"}, presence
    assert members["ada"]["gateway"] == gateway_a.node_id
    assert members["bob"]["gateway"] == gateway_b.node_id
    assert members["ada"]["session"] == ada_session
    # a sequence from the mesh reaches both, in order
    publisher = Publisher(mesh.client, FEED, "m")
    for _ in range(10):
        await publisher.one()
    await eventually(lambda: len(pubs(ada)) >= 10 <= len(pubs(bob)), 5, "the first ten")
    assert pubs(ada) == pubs(bob) == publisher.sent
    last = pubs(ada)[-1][0]
    # gateway a dies without a goodbye, while publications go on
    assert "wiremesh.runtime.gateway_process" in command_line(gateway_a.pid)
    async with publisher:
        await asyncio.sleep(0.3)
        killed_at = time.monotonic()
        os.kill(gateway_a.pid, signal.SIGKILL)
        await eventually(lambda: ada.closed is not None, 5, "ada's session to end")
        await asyncio.sleep(0.5)
        # ada comes back on b's gateway and asks for what came after what she saw
        again = await open_browser(mesh, "b", "/ws/stock", "ada")
        back = await request(
            again, "subscribe", 1, channel=FEED, since={"offset": last, "epoch": epoch}
        )
        assert back["wm"] == "subscribed" and back["recovered"] is True, back
        recovered = [(p["offset"], p["data"]["text"]) for p in back["publications"]]
        assert recovered, "publications went on while ada was away"
        count = len(publisher.sent)
        await eventually(lambda: len(publisher.sent) >= count + 10, 5, "ten more publications")
    top = publisher.sent[-1][0]
    await eventually(lambda: top_offset(again) >= top <= top_offset(bob), 5, "the last one")
    live = pubs(again)
    delivered = recovered + live
    # every publication after `last`, in order, none twice, and live ones after recovery
    assert delivered == [p for p in publisher.sent if p[0] > last], (recovered, live)
    assert live and live[0][0] == recovered[-1][0] + 1
    assert publisher.epochs == {epoch}
    assert pubs(bob) == publisher.sent
    # the dead gateway's member leaves presence within the presence ttl, with a leave
    left = await eventually(
        lambda: [m for m in controls(bob, seen_by_bob) if m["wm"] == "leave"],
        PRESENCE_TTL + 2,
        "a leave for ada's first session at bob",
        mesh,
    )
    gone_after = time.monotonic() - killed_at
    assert [m["member"]["session"] for m in left] == [ada_session]
    assert left[0]["member"]["gateway"] == gateway_a.node_id
    presence = await request(bob, "presence", 3, channel=FEED)
    assert sorted((m["principal"], m["gateway"]) for m in presence["members"]) == [
        ("ada", gateway_b.node_id),
        ("bob", gateway_b.node_id),
    ]
    assert ada_session not in {m["session"] for m in presence["members"]}
    for browser in (bob, again):
        await browser.close()
    print(
        f"{len(recovered)} publications recovered on b; a's member left presence "
        f"{gone_after:.2f}s after its gateway was killed; scenario {time.monotonic() - began:.1f}s"
    )
