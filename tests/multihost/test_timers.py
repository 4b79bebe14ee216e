"""A once-per-mesh timer over two real hosts while its nodes are killed.

Host ``a`` runs two ``ticker`` nodes, host ``b`` one, all on a Redis registry (a private
Redis of the test) and the machine's RabbitMQ. The timer ticks every second. Every few
seconds the test kills (SIGKILL) the node that ran the last tick, between two ticks, so
that the next consumer takes over; the supervisor starts a new node in its place. Each
tick of the window must run exactly once: none twice, none missing.

The window is ``WIREMESH_TIMER_WINDOW`` seconds (8 by default; the issue's 10-minute run
is ``WIREMESH_TIMER_WINDOW=600``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from wiremesh.client import MeshClient, connect
from wiremesh.core.model import NodeInfo

from .hosts import Network, RedisInstance

pytestmark = pytest.mark.multihost

HERE = Path(__file__).resolve().parent
WIREMESH = str(Path(sys.executable).with_name("wiremesh"))
WINDOW = float(os.environ.get("WIREMESH_TIMER_WINDOW", "8"))
#: seconds between two kills
KILL_EVERY = 2.5

CONFIG = """\
[mesh]
name = "{mesh}"
host = "0.0.0.0"
drain_grace = 1
python_path = ["{here}"]

[registry]
backend = "redis"
url = "{redis}"
heartbeat_interval = 0.5
ttl = 1.5

[broker]
url = "amqp://guest:guest@{rabbitmq}/?heartbeat=2"

[restart]
initial_backoff = 0.2
max_backoff = 1

[services.ticker]
target = "svc_timers:Ticker"

[hosts.a]
services = ["ticker"]
replicas = {{ ticker = 2 }}

[hosts.b]
services = ["ticker"]
"""


async def _seen(client: MeshClient, node_id: str) -> NodeInfo:
    """The node's record as the client sees it, waiting up to 5 s for it."""
    for _ in range(50):
        node = client.snapshot.by_id.get(node_id)
        if node is not None:
            return node
        await asyncio.sleep(0.1)
    raise AssertionError(f"the node that ran the last tick, {node_id}, is not seen")


def read_runs(log: Path) -> list[tuple[float, str]]:
    """(tick, node id) of each run, in the order they were noted."""
    if not log.exists():
        return []
    runs = []
    for line in log.read_text().splitlines():
        tick, node, _ = line.split(" ")
        runs.append((datetime.fromisoformat(tick).timestamp(), node))
    return runs


@pytest.mark.timeout(WINDOW + 120)
async def test_three_replicas_on_two_hosts_run_each_tick_once_while_nodes_are_killed(
    network: Network, private_redis: RedisInstance, shared_rabbitmq: str, tmp_path: Path
) -> None:
    name = f"mh-timers-{secrets.token_hex(3)}"
    log = tmp_path / "ticks.log"
    text = CONFIG.format(mesh=name, here=HERE, redis=private_redis.url, rabbitmq=shared_rabbitmq)
    hosts = {host: network.add_host(host) for host in ("a", "b")}
    supervisors = {}
    for host_name, host in hosts.items():
        folder = tmp_path / host_name
        folder.mkdir()
        (folder / "wiremesh.toml").write_text(text)
        supervisors[host_name] = host.spawn(
            [WIREMESH, "run", "--host", host_name],
            cwd=folder,
            env={"WM_TEST_HOST": host_name, "WM_TICK_LOG": str(log)},
        )
    client = await connect(f"{private_redis.url}#{name}", timeout=15)

    def serving() -> int:
        return len([n for n in client.snapshot.nodes if n.service == "ticker" and n.serving])

    def logs() -> str:
        return "\n".join(f"--- {h}\n{p.output()[-3000:]}" for h, p in supervisors.items())

    try:
        deadline = time.monotonic() + 60
        while serving() < 3 or not read_runs(log):
            assert time.monotonic() < deadline, f"the ticker nodes did not start\n{logs()}"
            await asyncio.sleep(0.1)
        started = time.time()
        killed: list[str] = []
        while time.time() - started < WINDOW:
            # half way between two ticks: the last tick has run, the next is not due
            pause = KILL_EVERY - (time.time() - started) % KILL_EVERY
            await asyncio.sleep(pause + (0.5 - (time.time() + pause) % 1.0) % 1.0)
            if time.time() - started >= WINDOW:
                break
            _, active = read_runs(log)[-1]
            # (a node that missed its heartbeats on a busy machine is out of the view a
            # moment; it comes back with its next one)
            node = await _seen(client, active)
            os.kill(node.pid, signal.SIGKILL)
            killed.append(active)
        ended = time.time()
        await asyncio.sleep(2.0)  # the ticks due by the end have run
        runs = read_runs(log)
    finally:
        await client.close()
        for host in hosts.values():
            host.kill_all()
    counts = Counter(tick for tick, _ in runs)
    twice = sorted(tick for tick, count in counts.items() if count > 1)
    assert not twice, f"ticks run twice: {twice}\n{logs()}"
    first = min(counts)
    expected = {first + i for i in range(int(ended - first) + 1)}
    missing = sorted(expected - set(counts))
    assert not missing, f"ticks never run: {missing}\n{logs()}"
    ran_on = {node for _, node in runs}
    assert len(killed) >= int(WINDOW // KILL_EVERY) - 1 and set(killed) <= ran_on
    assert len(ran_on) > len(killed)  # each kill handed the ticks to another node
    print(f"{len(counts)} ticks in {ended - first:.0f}s, {len(killed)} nodes killed, once each")
