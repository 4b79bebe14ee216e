"""wiremesh across hosts: registry propagation, calls between hosts, what Redis costs.

    .venv/bin/python benchmarks/multihost.py            # the full run, as root (2 to 4 minutes)
    .venv/bin/python benchmarks/multihost.py --quick    # a short run (smoke test, ~30 s)

The hosts are Linux network namespaces on a bridge (``tests/multihost/hosts.py``), so it
needs root, ``ip``, ``nft`` and ``redis-server`` (a private Redis of this run); without them
it says so in one line and exits 77. Its traffic stays on this machine: loopback, and the
bridge between the namespaces.

Four hosts, ``a`` to ``d``. The root namespace holds the embedded registry (a
``RegistryServer`` process bound to the bridge address), the private Redis (bound to it
too) and this process, which drives *agents*: processes of this script on the hosts, each
over one JSON-lines connection to this process. Time stamps are ``time.monotonic()``:
CLOCK_MONOTONIC is one clock for every process of the machine, whatever its network
namespace, so one agent's time stamp and another's subtract.

1. **Propagation**, per registry: an actor on ``a`` (a registry client with its own view,
   as a node holds) leases a record, drains it (``set_state(DRAINING)``) and releases it;
   a watcher on ``b`` (a ``MeshView``) stamps the moment its view shows each change. Then
   node processes on ``a`` (``wiremesh.runtime.node_process``, as the supervisor starts them)
   are killed (SIGKILL) one at a time; then host ``d``, holding nodes of both registries,
   loses its link to the bridge (``Host.cut``).
2. **Calls between hosts**: a node process on ``a`` serving ``echo.echo`` beside a raw
   grpc.aio unary server on ``a``; a caller on ``b`` measures ``MeshClient.call`` (over
   its mesh link, the default) against raw unary calls, with the shapes and helpers of
   ``links.py`` (which measures the same on loopback).
3. **Redis cost**: 50, then 200, simulated nodes spread over the four hosts (10 to a
   process), each with its own ``RedisRegistry``, lease and ``MeshView`` (what a node
   holds); Redis's ``INFO`` before and after a quiet window gives commands per second
   and Redis's CPU.
4. **First view**: 500 leases registered (from ``c`` and ``d``), then new watchers on
   ``b`` time ``MeshView.start()``, per registry.

The last line printed is ``RESULT {json}``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# this folder goes last on the path: it holds http.py (the HTTP door's benchmark), which
# must not shadow the standard library's http for the libraries imported here
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
#: where ``multihost`` (the package that builds the hosts) lives; the controller alone
#: imports it, and the agents never need it
TESTS = HERE.parent / "tests"

# wiremesh before grpc: grpc then runs with the settings wiremesh chooses (see
# wiremesh.transport.grpc_core) in this process and, through the environment it sets, in
# every process this benchmark starts, on the hosts too
import wiremesh  # noqa: E402, F401

# isort: split
import grpc  # noqa: E402
from _common import (  # noqa: E402
    ServerProcess,
    install_signal_exit,
    median,
    percentile,
    print_result,
    print_table,
    serve_until_stopped,
    settle_heap,
)
from links import (  # noqa: E402
    INFLIGHT,
    LINKS,
    PAYLOAD_BYTES,
    RAW,
    RAW_SERVICE,
    Figures,
    latency_pair,
    paired,
)
from rpc import symmetric, throughput_slice  # noqa: E402

from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo, NodeState  # noqa: E402
from wiremesh.observability.metrics import METRICS_KEY  # noqa: E402
from wiremesh.registry.backends import open_registry  # noqa: E402
from wiremesh.registry.redis import mesh_prefix  # noqa: E402
from wiremesh.registry.view import MeshView  # noqa: E402
from wiremesh.runtime.node_process import NodeLaunch  # noqa: E402
from wiremesh.transport.peer_links import MAX_MESSAGE_KEY  # noqa: E402

T = TypeVar("T")
SCRIPT = str(Path(__file__).resolve())
HOSTS = ("a", "b", "c", "d")
#: the exit status when this machine cannot build hosts (the smoke test and run_all.py
#: read it as "not run here", as automake's test drivers do)
EXIT_CANNOT_RUN = 77
#: a node's defaults, read from where they are defined: every lease, view and registry
#: of the run uses them, the embedded registry's ttl too
_DEFAULTS = NodeLaunch(target="", service="", node_id="", registry="", data_dir="")
HEARTBEAT = _DEFAULTS.heartbeat_interval
TTL = _DEFAULTS.ttl
REGISTRIES = ("embedded", "redis")
JOIN, DRAIN, LEAVE = "join", "drain", "leave"
#: seconds an actor waits before each action (uniform): actions land at any phase of the
#: heartbeats and checks
SPACING = (0.005, 0.03)
#: seconds a watcher has to show a join, drain or leave before it counts as missed
PROPAGATION_TIMEOUT = 5.0
#: seconds a watcher has to drop a dead node before it counts as missed
DETECT_TIMEOUT = TTL + 10.0
#: the service of the records that actors, fleets and loaders lease
PROBE_SERVICE = "probe"
#: what an idle node sends with every heartbeat (``Node.stats``: every counter, at zero)
IDLE_STATS = dict.fromkeys(
    (
        "published",
        "publish_sent",
        "publish_dropped",
        "publish_received",
        "publish_delivered",
        "publish_delivery_dropped",
        "publish_delivery_queued",
        "publish_unmatched",
        "publish_invalid",
        "publish_failed",
    ),
    0,
)
#: simulated nodes started at once, mesh-wide, in the Redis cost's rolling start. Each
#: join reaches every view, and each view decodes it and builds a new snapshot (some
#: 300 µs of CPU at 200 nodes): all 200 at once keep the loops of a 2-core machine busy
#: for seconds, leases miss their ttl, are swept while alive and register again, which
#: makes more changes, and the views may not settle at all. 20 at a time keep each
#: wave's work well under the ttl.
START_WAVE = 20
#: seconds a rolling start may take before the mesh is measured as it is
SETTLE_LIMIT = 60.0
#: leases a loader holds on one registry client
LOADER_SHARE = 50
#: simulated nodes in one process at most. A real node has a process of its own: the
#: kernel shares the CPU among them, so no node's heartbeat waits for the changes its
#: neighbours are working through; the more nodes share one event loop, the longer their
#: heartbeats wait on a busy machine (50 to a loop, a 200-node mesh on a loaded 2-core
#: machine did not settle in a minute)
FLEET_SHARE = 10
#: attempts to start one simulated node (a supervisor restarts a node that failed)
START_ATTEMPTS = 5
LINE_LIMIT = 1 << 20  # bytes of one JSON line between this process and an agent


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    repetitions: int  # joins (each followed by a drain and a leave) timed per registry
    warmup: int  # untimed joins before them
    crashes: int  # node processes killed one at a time, per registry
    cut_nodes: int  # nodes of each registry on the host that loses its link
    rounds: int  # rounds of calls between hosts
    calls: int  # sequential calls per system and round (in two slices)
    warmup_calls: int
    duration: float  # throughput seconds counted per system and round (in two slices)
    warmup_seconds: float
    call_budget: float  # seconds of call rounds: no round starts that would end past it
    fleets: tuple[int, ...]  # simulated nodes whose cost to Redis is measured
    window: float  # seconds of each Redis cost window
    first_view_nodes: int
    first_view_reps: int  # new watchers timed per registry


FULL = Settings(
    repetitions=50,
    warmup=3,
    crashes=10,
    cut_nodes=2,
    rounds=6,
    calls=600,
    warmup_calls=30,
    duration=0.8,
    warmup_seconds=0.1,
    call_budget=60.0,
    fleets=(50, 200),
    window=10.0,
    first_view_nodes=500,
    first_view_reps=10,
)
QUICK = Settings(
    repetitions=3,
    warmup=1,
    crashes=1,
    cut_nodes=1,
    rounds=2,
    calls=60,
    warmup_calls=10,
    duration=0.2,
    warmup_seconds=0.05,
    call_budget=4.0,
    fleets=(10, 50),
    window=0.5,
    first_view_nodes=100,
    first_view_reps=1,
)


def record(node_id: str, host: str, port: int) -> NodeInfo:
    """A registry record shaped like a node's (``Node.info``): methods, metadata, host."""
    return NodeInfo(
        node_id=node_id,
        service=PROBE_SERVICE,
        address=f"{host}:{port}",
        pid=os.getpid(),
        started_at=time.time(),
        methods={"echo": MethodInfo("echo", idempotent=True)},
        metadata={MAX_MESSAGE_KEY: str(4 * 1024 * 1024), METRICS_KEY: f"{host}:{port + 1}"},
        host=host,
    )


def registry_for(address: str, mesh: str) -> Any:
    return open_registry(address, mesh=mesh, heartbeat_interval=HEARTBEAT, ttl=TTL)


# ---------------------------------------------------------------------------- agents
#
# An agent is ``python multihost.py --agent ROLE ...`` on a host. It connects to this
# process, says hello (with what it started), then answers requests
# ``{"id": n, "op": name, "args": {...}}`` with ``{"reply": n, ...}``, in order; it may
# also send ``{"event": kind, "node": id, "t": monotonic}`` and ``{"progress": text}``
# at any time. It exits at once when the connection closes (this process is done or
# dead), without leaving the mesh politely: what it held is left to expire.


class Line:
    """One JSON-lines connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        try:
            text = await self.reader.readline()
        except (ConnectionError, asyncio.IncompleteReadError):
            return None
        return json.loads(text) if text else None


class Role:
    """What an agent does: ``start`` (its answer goes with the hello), then ``op_*``."""

    def __init__(self, line: Line, params: dict[str, Any]) -> None:
        self.line = line
        self.params = params

    async def start(self) -> dict[str, Any]:
        return {}


class Watcher(Role):
    """A view of the mesh that stamps each join, drain and leave as it shows them."""

    async def start(self) -> dict[str, Any]:
        registry = registry_for(self.params["registry"], self.params["mesh"])
        self.view = MeshView(registry, grace=TTL + 1.0)
        self.view.on_change(self._changed)
        await self.view.start()
        return {}

    def _changed(self, old: MeshSnapshot, new: MeshSnapshot) -> None:
        t = time.monotonic()
        for node in new.nodes:
            before = old.by_id.get(node.node_id)
            if before is None:
                self.line.send({"event": JOIN, "node": node.node_id, "t": t})
            elif before.serving and not node.serving:
                self.line.send({"event": DRAIN, "node": node.node_id, "t": t})
        for node in old.nodes:
            if node.node_id not in new.by_id:
                self.line.send({"event": LEAVE, "node": node.node_id, "t": t})


class Actor(Role):
    """Leases, drains and releases records, and says when each began."""

    async def start(self) -> dict[str, Any]:
        self.registry = registry_for(self.params["registry"], self.params["mesh"])
        # as a node: its view is up (and its connection open) before its lease
        self.view = MeshView(self.registry, grace=TTL + 1.0)
        await self.view.start()
        self.leases: dict[str, Any] = {}
        return {}

    async def op_join(self, node: str) -> dict[str, Any]:
        info = record(node, self.params["host"], 7000)
        t0 = time.monotonic()
        self.leases[node] = await self.registry.lease(info)
        return {"t0": t0}

    async def op_drain(self, node: str) -> dict[str, Any]:
        t0 = time.monotonic()
        await self.leases[node].set_state(NodeState.DRAINING)
        return {"t0": t0}

    async def op_leave(self, node: str) -> dict[str, Any]:
        lease = self.leases.pop(node)
        t0 = time.monotonic()
        await lease.release()
        return {"t0": t0}


class RawServer(Role):
    """A raw grpc.aio server: unary ``/bench.Raw/Echo``, no (de)serializer."""

    async def start(self) -> dict[str, Any]:
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.unary_unary_rpc_method_handler(echo)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(RAW_SERVICE, {"Echo": handler}),)
        )
        host = self.params["host"]
        port = self.server.add_insecure_port(f"{host}:0")
        await self.server.start()
        settle_heap()  # as every server process of the benchmarks does once it serves
        return {"address": f"{host}:{port}"}


class Caller(Role):
    """Calls the echo node and the raw server on another host, as ``links.py`` does."""

    async def op_measure(
        self, registry: str, mesh: str, raw: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        from wiremesh.client import MeshClient

        s = Settings(**{**settings, "fleets": tuple(settings["fleets"])})
        client = MeshClient(registry, mesh=mesh)
        channel = grpc.aio.insecure_channel(raw)
        try:
            await client.start()
            await client.view.wait_for(lambda snap: len(snap.serving("echo")) == 1, 60.0)
            stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/{RAW_SERVICE}/Echo", None, None
            )
            calls: dict[str, Callable[[bytes], Awaitable[Any]]] = {
                LINKS: functools.partial(client.call, "echo.echo"),
                RAW: stub,
            }
            payload = os.urandom(PAYLOAD_BYTES)
            for name, call in calls.items():
                if await call(payload) != payload:
                    raise RuntimeError(f"{name} did not echo the payload")
                for _ in range(50):
                    await call(payload)
            settle_heap()
            figures = {LINKS: Figures(), RAW: Figures()}
            rounds = 0
            began = time.perf_counter()
            for round_no in range(s.rounds):
                elapsed = time.perf_counter() - began
                if rounds >= 2 and elapsed * (rounds + 1) / rounds > s.call_budget:
                    self.line.send({"progress": f"stopping after {rounds} rounds (budget)"})
                    break
                await self._round(calls, figures, payload, s, round_no % 2 == 1)
                rounds += 1
                f = figures
                self.line.send(
                    {
                        "progress": f"calls round {round_no + 1}/{s.rounds}: p50 "
                        f"{f[LINKS].p50_us[-1]:.0f} vs {f[RAW].p50_us[-1]:.0f} µs, "
                        f"{f[LINKS].rate[-1]:,.0f} vs {f[RAW].rate[-1]:,.0f} calls/s"
                    }
                )
        finally:
            await channel.close(None)
            await client.close()
        return {"rounds": rounds, **{k: dataclasses.asdict(v) for k, v in figures.items()}}

    async def _round(
        self,
        calls: dict[str, Callable[[bytes], Awaitable[Any]]],
        figures: dict[str, Figures],
        payload: bytes,
        s: Settings,
        flip: bool,
    ) -> None:
        await latency_pair(calls, [LINKS, RAW], figures, payload, s.calls, s.warmup_calls, flip)
        counted = {LINKS: (0, 0.0), RAW: (0, 0.0)}
        for name in symmetric([LINKS, RAW], flip):
            gc.collect()
            n, seconds = await throughput_slice(
                calls[name], payload, s.duration / 2, s.warmup_seconds
            )
            counted[name] = (counted[name][0] + n, counted[name][1] + seconds)
        for name, (n, seconds) in counted.items():
            figures[name].rate.append(n / seconds)


class Fleet(Role):
    """Simulated nodes: each its own Redis registry client, lease and view, as a node.

    A node that cannot start is started again, as a supervisor restarts a node process
    that exited; the registry's warnings are counted (a lease that finds itself swept
    while alive registers again and says so)."""

    async def start(self) -> dict[str, Any]:
        self.views: list[MeshView] = []
        self.restarts = 0
        self.started = 0
        self.warnings = WarningCount()
        logging.getLogger("wiremesh.registry").addHandler(self.warnings)
        return {}

    async def op_start(self, count: int) -> dict[str, Any]:
        host = self.params["host"]
        first, self.started = self.started, self.started + count

        async def one(i: int) -> None:
            from wiremesh.errors import Unavailable

            for attempt in range(START_ATTEMPTS):
                registry = registry_for(self.params["registry"], self.params["mesh"])
                view = MeshView(registry, grace=TTL + 1.0)
                try:
                    await view.start(30.0)
                    name = f"{self.params['name']}-{i}"
                    lease = await registry.lease(record(name, host, 10_000 + 2 * i))
                except Unavailable:
                    if attempt == START_ATTEMPTS - 1:
                        raise
                    self.restarts += 1
                    await view.close()
                    await registry.close()
                    continue
                lease.stats = IDLE_STATS.copy
                self.views.append(view)
                return

        await asyncio.gather(*(one(first + i) for i in range(count)))
        settle_heap()
        return {}

    async def op_views(self) -> dict[str, Any]:
        sizes = [len(view.snapshot.nodes) for view in self.views]
        return {
            "min": min(sizes),
            "max": max(sizes),
            "restarts": self.restarts,
            "swept_alive": self.warnings.count("registering again"),
            "unreachable": self.warnings.count("is unreachable"),
        }


class WarningCount(logging.Handler):
    """Counts the warnings logged, by their message template."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[str(record.msg)] = self.seen.get(str(record.msg), 0) + 1

    def count(self, words: str) -> int:
        return sum(n for msg, n in self.seen.items() if words in msg)


class Loader(Role):
    """Many leases, LOADER_SHARE to a registry client: a big mesh, cheaply (no views).

    A Redis registry client holds a pool of at most 100 connections (redis-py's default),
    one per command in flight: 50 leases keep well inside it."""

    async def op_start(self, count: int) -> dict[str, Any]:
        host = self.params["host"]
        self.leases = []
        for first in range(0, count, LOADER_SHARE):
            registry = registry_for(self.params["registry"], self.params["mesh"])
            infos = [
                record(f"load-{host}-{i}", host, 20_000 + 2 * i)
                for i in range(first, min(first + LOADER_SHARE, count))
            ]
            self.leases += await asyncio.gather(*(registry.lease(info) for info in infos))
        for lease in self.leases:
            lease.stats = IDLE_STATS.copy
        return {}


class FirstView(Role):
    """Times ``MeshView.start()`` of new watchers (each its own registry client)."""

    async def op_measure(self, expect: int, reps: int) -> dict[str, Any]:
        address, mesh = self.params["registry"], self.params["mesh"]
        probe = registry_for(address, mesh)
        try:
            async with asyncio.timeout(60.0):
                # the registry is asked, not watched: nothing here to wait on
                while len((await probe.snapshot()).nodes) < expect:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        finally:
            await probe.close()
        times, sizes = [], []
        for _ in range(reps):
            await asyncio.sleep(0.05)
            registry = registry_for(address, mesh)
            view = MeshView(registry, grace=TTL + 1.0)
            began = time.perf_counter()
            await view.start(30.0)
            times.append((time.perf_counter() - began) * 1000)
            sizes.append(len(view.snapshot.nodes))
            await view.close()
            await registry.close()
        return {"ms": times, "nodes": sizes}


ROLES: dict[str, type[Role]] = {
    "watcher": Watcher,
    "actor": Actor,
    "raw": RawServer,
    "caller": Caller,
    "fleet": Fleet,
    "loader": Loader,
    "first-view": FirstView,
}


async def run_agent(role: str, control: str, token: str, params: dict[str, Any]) -> None:
    host, _, port = control.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=LINE_LIMIT)
    line = Line(reader, writer)
    agent = ROLES[role](line, params)
    line.send({"hello": token, "pid": os.getpid(), **await agent.start()})
    while (request := await line.receive()) is not None:
        try:
            answer = await getattr(agent, f"op_{request['op']}")(**request.get("args", {}))
            line.send({"reply": request["id"], **answer})
        except Exception as exc:
            line.send({"reply": request["id"], "error": f"{type(exc).__name__}: {exc}"})
        await writer.drain()
    # this process is done with us: leave at once, holding nothing up (a fleet releasing
    # 200 leases one by one would be a storm of changes)
    sys.stdout.flush()
    os._exit(0)


# ---------------------------------------------------------------------------- the controller


class Agent:
    """This process's end of one agent."""

    def __init__(self, name: str, process: Any, line: Line, hello: dict[str, Any]) -> None:
        self.name = name
        self.process = process
        self.line = line
        self.hello = hello
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: (kind, node id) -> when the agent's view showed it
        self.seen: dict[tuple[str, str], float] = {}
        self._news = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=f"agent-{name}")

    async def ask(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        self.line.send({"id": self._next, "op": op, "args": args})
        try:
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no answer to {op} within {timeout:g}s") from None
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {op} failed: {answer['error']}")
        return answer

    async def seen_at(self, kind: str, node: str, timeout: float) -> float | None:
        """When this watcher's view showed ``kind`` of ``node``; None when it did not in time."""
        deadline = time.monotonic() + timeout
        while (kind, node) not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            news = self._news
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), left)
        return self.seen[(kind, node)]

    async def _read(self) -> None:
        while (message := await self.line.receive()) is not None:
            if "reply" in message:
                future = self._pending.pop(message["reply"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif "event" in message:
                self.seen[(message["event"], message["node"])] = message["t"]
                news, self._news = self._news, asyncio.Event()
                news.set()
            elif "progress" in message:
                print(f"  {self.name}: {message['progress']}", file=sys.stderr, flush=True)
        gone = RuntimeError(f"{self.name} exited:\n{self.process.output()[-3000:]}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)

    async def close(self) -> None:
        """Close the connection (the agent exits at once) and wait until it is gone."""
        self.line.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.process.wait, 10.0)
        self.process.signal(signal.SIGKILL)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Control:
    """Where agents connect: a TCP server on the bridge address of the root namespace."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[tuple[dict[str, Any], Line]]] = {}
        self.agents: list[Agent] = []
        self.address = ""

    async def start(self, bind: str) -> None:
        self._server = await asyncio.start_server(self._accept, bind, 0, limit=LINE_LIMIT)
        self.address = f"{bind}:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = Line(reader, writer)
        hello = await line.receive()
        future = self._waiting.pop(hello.get("hello", ""), None) if hello else None
        if future is None or future.done():
            writer.close()
            return
        future.set_result((hello, line))

    async def spawn(
        self, host: Any, role: str, params: dict[str, Any], timeout: float = 60.0
    ) -> Agent:
        """Start ``role`` on ``host``; returns once it has started and said hello."""
        token = secrets.token_hex(6)
        future = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        argv = [sys.executable, SCRIPT, "--agent", role, "--control", self.address]
        process = host.spawn([*argv, "--token", token, "--params", json.dumps(params)])
        deadline = time.monotonic() + timeout
        while not future.done():
            if not process.running or time.monotonic() > deadline:
                self._waiting.pop(token, None)
                why = "exited" if not process.running else f"not ready in {timeout:g}s"
                raise RuntimeError(f"{role} on {host.name} {why}:\n{process.output()[-3000:]}")
            await asyncio.wait([future], timeout=0.1)
        hello, line = future.result()
        agent = Agent(f"{role}@{host.name}", process, line, hello)
        self.agents.append(agent)
        return agent

    async def close(self, agents: list[Agent] | None = None) -> None:
        """Stop ``agents`` (all of them when None)."""
        chosen = list(self.agents) if agents is None else agents
        await asyncio.gather(*(agent.close() for agent in chosen))
        self.agents = [agent for agent in self.agents if agent not in chosen]
        if agents is None:
            self._server.close()


class Nodes:
    """Node processes (``wiremesh.runtime.node_process``) started on hosts, as a supervisor
    would."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, Any] = {}

    def start(self, host: Any, node_id: str, registry: str, mesh: str, target: str) -> None:
        service = target.rpartition(":")[2].lower()
        launch = NodeLaunch(
            target=target,
            service=service,
            node_id=node_id,
            registry=registry,
            mesh=mesh,
            host=host.address,
            data_dir=str(self.workdir / "nodes" / node_id),
            drain_grace=1.0,
            heartbeat_interval=HEARTBEAT,
            ttl=TTL,
            # the node leaves (draining) when this process is gone
            supervisor_pid=os.getpid(),
        )
        self.processes[node_id] = host.spawn([sys.executable, SCRIPT, "--node", launch.to_json()])

    async def while_alive(self, work: Awaitable[T], node_id: str) -> T:
        """``await work``; a clear error, with its output, if ``node_id`` exits before."""
        task = asyncio.ensure_future(work)
        process = self.processes[node_id]
        while not task.done():
            if not process.running:
                task.cancel()
                raise RuntimeError(f"node {node_id} exited:\n{process.output()[-3000:]}")
            await asyncio.wait([task], timeout=0.2)
        return task.result()

    def kill(self, node_id: str) -> None:
        """SIGKILL: the process dies at once, as on a crash (nothing is released)."""
        self.processes[node_id].signal(signal.SIGKILL)

    async def reap(self) -> None:
        for node_id, process in list(self.processes.items()):
            process.signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(process.wait, 10.0)
            del self.processes[node_id]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def spread(total: int, parts: int) -> list[int]:
    """``total`` split in ``parts`` near-equal counts."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ---------------------------------------------------------------------------- 1. propagation


async def propagation(
    control: Control,
    hosts: dict[str, Any],
    registries: dict[str, str],
    nodes: Nodes,
    settings: Settings,
) -> dict[str, dict[str, Any]]:
    """For each registry: joins, drains and leaves, then crashes; then one host cut."""
    a, b, d = hosts["a"], hosts["b"], hosts["d"]
    meshes = {name: f"bench-propagation-{name}" for name in REGISTRIES}
    params = {name: {"registry": registries[name], "mesh": meshes[name]} for name in REGISTRIES}
    spawned = await asyncio.gather(
        *(control.spawn(b, "watcher", params[name]) for name in REGISTRIES),
        *(control.spawn(a, "actor", {**params[name], "host": a.address}) for name in REGISTRIES),
    )
    watchers = dict(zip(REGISTRIES, spawned[: len(REGISTRIES)], strict=True))
    actors = dict(zip(REGISTRIES, spawned[len(REGISTRIES) :], strict=True))
    results: dict[str, dict[str, Any]] = {}
    for name in REGISTRIES:
        results[name] = await changes(actors[name], watchers[name], name, settings)
    await control.close(list(actors.values()))
    # every node process at once (they take a second or two each to start): on host a
    # those that crash, plus one per registry that lives on; on host d those cut off
    run = secrets.token_hex(2)
    crashing = {
        name: [f"crash-{name}-{run}-{i}" for i in range(settings.crashes)] for name in REGISTRIES
    }
    cut_off = {
        name: [f"cut-{name}-{run}-{i}" for i in range(settings.cut_nodes)] for name in REGISTRIES
    }
    for name in REGISTRIES:
        for node_id in [*crashing[name], f"live-{name}-{run}"]:
            nodes.start(a, node_id, registries[name], meshes[name], "links:Echo")
        for node_id in cut_off[name]:
            nodes.start(d, node_id, registries[name], meshes[name], "links:Echo")
    for name in REGISTRIES:
        for node_id in [*crashing[name], *cut_off[name]]:
            if await watchers[name].seen_at(JOIN, node_id, 120.0) is None:
                raise RuntimeError(f"{node_id} did not join:\n{nodes.processes[node_id].output()}")
    for name in REGISTRIES:
        results[name].update(await crashes(watchers[name], nodes, crashing[name], name))
    cut = await host_cut(d, watchers, nodes, cut_off)
    await nodes.reap()
    for name in REGISTRIES:
        results[name].update(cut[name])
    await control.close(list(watchers.values()))
    return results


async def changes(actor: Agent, watcher: Agent, name: str, settings: Settings) -> dict[str, Any]:
    """Per repetition: join, drain, leave, each timed from the actor's call to the
    watcher's view showing it."""
    samples: dict[str, list[float]] = {JOIN: [], DRAIN: [], LEAVE: []}
    missed = 0
    run = secrets.token_hex(2)
    for i in range(settings.warmup + settings.repetitions):
        node = f"probe-{run}-{i:03d}"
        for op in (JOIN, DRAIN, LEAVE):
            await asyncio.sleep(random.uniform(*SPACING))
            began = (await actor.ask(op, node=node))["t0"]
            seen = await watcher.seen_at(op, node, PROPAGATION_TIMEOUT)
            if seen is None:
                missed += 1
                seen = began + PROPAGATION_TIMEOUT  # counted at the timeout: a lower bound
            if i >= settings.warmup:
                samples[op].append((seen - began) * 1000)
    result: dict[str, Any] = {"missed": missed}
    for op, values in samples.items():
        values.sort()
        result[f"{op}_p50_ms"] = round(percentile(values, 50, presorted=True), 2)
        result[f"{op}_p99_ms"] = round(percentile(values, 99, presorted=True), 2)
        result[f"{op}_max_ms"] = round(values[-1], 2)
    progress(
        f"{name}: join p50 {result['join_p50_ms']:.1f} ms p99 {result['join_p99_ms']:.1f} ms, "
        f"drain p50 {result['drain_p50_ms']:.1f} ms p99 {result['drain_p99_ms']:.1f} ms, "
        f"leave p50 {result['leave_p50_ms']:.1f} ms ({settings.repetitions} each)"
    )
    return result


async def crashes(watcher: Agent, nodes: Nodes, ids: list[str], name: str) -> dict[str, Any]:
    """The node processes ``ids`` killed (SIGKILL) one at a time: how long until the
    watcher's view drops each."""
    detect: list[float] = []
    missed = 0
    for node_id in ids:
        await asyncio.sleep(random.uniform(0.1, 0.1 + HEARTBEAT))  # any phase of its beats
        killed = time.monotonic()
        nodes.kill(node_id)
        seen = await watcher.seen_at(LEAVE, node_id, DETECT_TIMEOUT)
        if seen is None:
            missed += 1
            seen = killed + DETECT_TIMEOUT  # counted at the timeout: a lower bound
        detect.append(seen - killed)
    result = {
        "crash_missed": missed,
        "crash_detect_s": round(max(detect), 3),
        "crash_detect_p50_s": round(median(detect), 3),
        "crash_detect_min_s": round(min(detect), 3),
        "crashes": len(detect),
    }
    progress(
        f"{name}: crash detected in {result['crash_detect_p50_s']:.2f} s (p50), "
        f"{result['crash_detect_s']:.2f} s (max) of {len(detect)}; ttl {TTL:g} s"
    )
    return result


async def host_cut(
    host: Any, watchers: dict[str, Agent], nodes: Nodes, ids: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """``host``, holding the nodes ``ids`` of each registry, loses its link: nobody gets
    an error, its leases just stop; how long until each watcher drops the last of them."""
    await asyncio.sleep(random.uniform(0.2, 0.2 + HEARTBEAT))
    cut = time.monotonic()
    host.cut()
    try:
        results: dict[str, dict[str, Any]] = {}
        for name in REGISTRIES:
            seen = [await watchers[name].seen_at(LEAVE, n, DETECT_TIMEOUT) for n in ids[name]]
            # a node still shown at the timeout counts at the timeout: a lower bound
            worst = max(cut + DETECT_TIMEOUT if s is None else s for s in seen) - cut
            results[name] = {"cut_detect_s": round(worst, 3)}
            progress(f"{name}: host cut detected in {worst:.2f} s (the last of its nodes)")
    finally:
        host.kill_all()
        for node_id in [n for names in ids.values() for n in names]:
            nodes.processes.pop(node_id, None)
        host.heal()
    return results


# ---------------------------------------------------------------------------- 2. calls


async def calls_between_hosts(
    control: Control, hosts: dict[str, Any], redis_url: str, nodes: Nodes, settings: Settings
) -> dict[str, Any]:
    a, b = hosts["a"], hosts["b"]
    mesh = "bench-calls"
    nodes.start(a, "echo-a", redis_url, mesh, "links:Echo")
    raw, caller = await asyncio.gather(
        control.spawn(a, "raw", {"host": a.address}), control.spawn(b, "caller", {})
    )
    try:
        measuring = caller.ask(
            "measure",
            timeout=settings.call_budget * 2 + 120.0,
            registry=redis_url,
            mesh=mesh,
            raw=raw.hello["address"],
            settings=dataclasses.asdict(settings),
        )
        answer = await nodes.while_alive(measuring, "echo-a")
    finally:
        await control.close([caller, raw])
        await nodes.reap()
    links, peer = Figures(**answer[LINKS]), Figures(**answer[RAW])

    def mid(values: list[float]) -> float:
        return round(median(values), 1)

    return {
        "rounds": answer["rounds"],
        "cross_host_call_p50_ratio": paired(links.p50_us, peer.p50_us),
        "cross_host_call_throughput_ratio": paired(links.rate, peer.rate),
        "cross_host_call_p99_ratio": paired(links.p99_us, peer.p99_us),
        "links_call_p50_us": mid(links.p50_us),
        "raw_call_p50_us": mid(peer.p50_us),
        "links_call_p99_us": mid(links.p99_us),
        "raw_call_p99_us": mid(peer.p99_us),
        "links_call_rps": mid(links.rate),
        "raw_call_rps": mid(peer.rate),
    }


# ---------------------------------------------------------------------------- 3. Redis cost


def script_commands() -> frozenset[str]:
    """The commands the Redis registry's Lua scripts run: Redis counts each of them in
    ``total_commands_processed``, beside the EVALSHA that ran the script."""
    from wiremesh.registry import redis as module

    texts = [v for v in vars(module).values() if isinstance(v, str) and "redis.call(" in v]
    return frozenset(
        name.lower() for text in texts for name in re.findall(r"redis\.call\('(\w+)'", text)
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_cost(
    control: Control, hosts: dict[str, Any], redis: Any, settings: Settings
) -> dict[str, Any]:
    import redis.asyncio as aioredis

    inner = script_commands()
    client: Any = aioredis.Redis.from_url(redis.local_url)
    results: dict[str, Any] = {}
    try:
        for total in settings.fleets:
            results[str(total)] = await one_fleet(
                control, hosts, redis, client, inner, total, settings
            )
    finally:
        await client.aclose()
    return results


async def one_fleet(
    control: Control,
    hosts: dict[str, Any],
    redis: Any,
    client: Any,
    inner: frozenset[str],
    total: int,
    settings: Settings,
) -> dict[str, Any]:
    mesh = f"bench-cost-{total}"
    params = {"registry": redis.url, "mesh": mesh}
    # FLEET_SHARE nodes to a process at most, the processes spread over the hosts
    count = -(-total // FLEET_SHARE)
    places = [list(hosts.values())[i % len(hosts)] for i in range(count)]
    fleet = await asyncio.gather(
        *(
            control.spawn(host, "fleet", {**params, "host": host.address, "name": f"fleet{i}"})
            for i, host in enumerate(places)
        )
    )
    try:
        # a rolling start, WAVE nodes at a time over every host, each wave once every
        # view shows the last one (see START_WAVE)
        # (a mesh that has not settled within SETTLE_LIMIT gets its other waves at once,
        # and is measured as it is: the result says so)
        began = time.monotonic()
        settled: float | None = None
        for wave in range(0, total, START_WAVE):
            size = min(START_WAVE, total - wave)
            await asyncio.gather(
                *(
                    agent.ask("start", timeout=180.0, count=count)
                    for agent, count in zip(fleet, spread(size, len(fleet)), strict=True)
                )
            )
            while time.monotonic() - began < SETTLE_LIMIT:
                sizes = await asyncio.gather(*(agent.ask("views") for agent in fleet))
                if all(s["min"] == s["max"] == wave + size for s in sizes):
                    settled = time.monotonic() - began
                    break
                await asyncio.sleep(0.1)
            else:
                settled = None
        if settled is None:
            progress(f"redis cost, {total} nodes: the views did not settle in {SETTLE_LIMIT:g} s")
        await asyncio.sleep(1.0)  # the last changes' work is done everywhere
        pids = [agent.process.pid for agent in fleet]
        state = mesh_prefix(mesh) + "state"
        cpu_before = sum(map(cpu_seconds, pids))
        v0 = int(await client.hget(state, "version"))
        before, t0 = await client.info("all"), time.monotonic()
        await asyncio.sleep(settings.window)
        after, t1 = await client.info("all"), time.monotonic()
        cpu_after = sum(map(cpu_seconds, pids))
        v1 = int(await client.hget(state, "version"))
        sizes = await asyncio.gather(*(agent.ask("views") for agent in fleet))
    finally:
        await control.close(fleet)
    seconds = t1 - t0
    beats = total / HEARTBEAT * seconds  # the leases' beats in the window, nominally

    def calls(info: dict[str, Any], command: str) -> int:
        return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))

    names = {k[len("cmdstat_") :] for k in after if k.startswith("cmdstat_")}
    per_command = {name: calls(after, name) - calls(before, name) for name in names}
    commands = after["total_commands_processed"] - before["total_commands_processed"]
    # the clients' own: everything the scripts did not run, less our INFO
    requests = sum(n for name, n in per_command.items() if name not in inner) - 1
    cpu = sum(after[k] - before[k] for k in ("used_cpu_sys", "used_cpu_user"))
    result = {
        "nodes": total,
        "settle_s": round(settled, 2) if settled is not None else math.nan,
        "settled": settled is not None,
        # commands the clients send (EVALSHA, PING, ...): what the registry asks of Redis
        "cmds_per_s": round(requests / seconds, 1),
        "cmds_per_lease_beat": round(requests / beats, 2),
        # every command Redis ran, those inside the Lua scripts included
        "script_cmds_per_s": round(commands / seconds, 1),
        "script_cmds_per_lease_beat": round(commands / beats, 2),
        "beats_per_s": round(per_command.get("zscore", 0) / seconds, 1),
        "redis_cpu_pct": round(cpu / seconds * 100, 2),
        "node_cpu_pct": round((cpu_after - cpu_before) / seconds * 100 / total, 3),
        # the mesh's changes during the window: none, when every lease held
        "changes_in_window": v1 - v0,
        # while the views settled: nodes started again, live leases swept (each then
        # registered again)
        "restarts": sum(size["restarts"] for size in sizes),
        "swept_alive": sum(size["swept_alive"] for size in sizes),
        "per_lease_beat": {
            name: round(n / beats, 2)
            for name, n in sorted(per_command.items(), key=lambda kv: -kv[1])
            if n > 0 and name != "info"
        },
    }
    progress(
        f"redis cost, {total} nodes: {result['cmds_per_s']:,.0f} commands/s "
        f"({result['cmds_per_lease_beat']} per lease-beat; {result['script_cmds_per_lease_beat']} "
        f"counting the scripts' own), Redis CPU {result['redis_cpu_pct']:.1f}%; views settled in "
        f"{result['settle_s']:.1f} s"
    )
    return result


# ---------------------------------------------------------------------------- 4. first view


async def first_view(
    control: Control, hosts: dict[str, Any], registries: dict[str, str], settings: Settings
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    loading = [hosts["c"], hosts["d"]]
    for name in REGISTRIES:
        params = {"registry": registries[name], "mesh": f"bench-first-view-{name}"}
        *loaders, viewer = await asyncio.gather(
            *(control.spawn(host, "loader", {**params, "host": host.address}) for host in loading),
            control.spawn(hosts["b"], "first-view", params),
        )
        try:
            counts = spread(settings.first_view_nodes, len(loaders))
            await asyncio.gather(
                *(
                    loader.ask("start", timeout=180.0, count=count)
                    for loader, count in zip(loaders, counts, strict=True)
                )
            )
            answer = await viewer.ask(
                "measure",
                timeout=180.0,
                expect=settings.first_view_nodes,
                reps=settings.first_view_reps,
            )
        finally:
            await control.close([*loaders, viewer])
        results[name] = {
            "first_view_ms": round(median(answer["ms"]), 2),
            "first_view_max_ms": round(max(answer["ms"]), 2),
            "first_view_nodes": min(answer["nodes"]),
        }
        progress(
            f"{name}: first view of {min(answer['nodes'])} nodes in "
            f"{results[name]['first_view_ms']:.1f} ms (median of {len(answer['ms'])})"
        )
    return results


# ---------------------------------------------------------------------------- the run


async def measure(network: Any, redis: Any, embedded: str, settings: Settings) -> dict[str, Any]:
    hosts = {host.name: host for host in network.hosts}
    registries = {"embedded": embedded, "redis": redis.url}
    control = Control()
    await control.start(network.gateway)
    nodes = Nodes(network.workdir)
    began = time.monotonic()

    def phase(text: str) -> None:
        progress(f"[{time.monotonic() - began:5.1f}s] {text}")

    try:
        phase("1/4 propagation")
        per_registry = await propagation(control, hosts, registries, nodes, settings)
        phase("2/4 calls between hosts")
        calls = await calls_between_hosts(control, hosts, redis.url, nodes, settings)
        phase("3/4 redis cost")
        cost = await redis_cost(control, hosts, redis, settings)
        phase("4/4 first view")
        views = await first_view(control, hosts, registries, settings)
        phase("done")
    finally:
        await nodes.reap()
        await control.close()
    for name in REGISTRIES:
        per_registry[name].update(views[name])
        per_registry[name]["ttl_s"] = TTL
    return summarize(per_registry, calls, cost, settings)


def summarize(
    per_registry: dict[str, dict[str, Any]],
    calls: dict[str, Any],
    cost: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    headline = per_registry["redis"]
    fleets = [cost[str(n)] for n in settings.fleets]
    result: dict[str, Any] = {
        "rounds": calls["rounds"],
        "calls": settings.calls,
        "duration_s": settings.duration,
        "inflight": INFLIGHT,
        "repetitions": settings.repetitions,
        "crash_repetitions": settings.crashes,
        "cost_window_s": settings.window,
        "hosts": len(HOSTS),
        # the Redis registry: the headline
        **{
            key: headline[key]
            for key in (
                "join_p50_ms",
                "join_p99_ms",
                "drain_p50_ms",
                "drain_p99_ms",
                "leave_p50_ms",
                "leave_p99_ms",
                "crash_detect_s",
                "crash_detect_p50_s",
                "cut_detect_s",
                "ttl_s",
            )
        },
        "first_view_500_ms": headline["first_view_ms"],
        "embedded": {k: v for k, v in per_registry["embedded"].items()},
        "redis": {k: v for k, v in per_registry["redis"].items()},
        **{k: v for k, v in calls.items() if k != "rounds"},
        "redis_cmds_per_lease_beat": max(f["cmds_per_lease_beat"] for f in fleets),
        "redis_script_cmds_per_lease_beat": max(f["script_cmds_per_lease_beat"] for f in fleets),
    }
    for fleet in fleets:
        n = fleet["nodes"]
        result[f"redis_cmds_per_s_{n}"] = fleet["cmds_per_s"]
        result[f"redis_cpu_{n}"] = fleet["redis_cpu_pct"]
        result[f"redis_cmds_per_lease_beat_{n}"] = fleet["cmds_per_lease_beat"]
        result[f"redis_script_cmds_per_lease_beat_{n}"] = fleet["script_cmds_per_lease_beat"]
        result[f"redis_settle_s_{n}"] = fleet["settle_s"]
        result[f"redis_settled_{n}"] = fleet["settled"]
        result[f"node_registry_cpu_pct_{n}"] = fleet["node_cpu_pct"]
        result[f"redis_swept_alive_{n}"] = fleet["swept_alive"]
        result[f"redis_changes_in_window_{n}"] = fleet["changes_in_window"]
    for name in REGISTRIES:
        result[name]["first_view_500_ms"] = result[name].pop("first_view_ms")
    print_tables(per_registry, calls, fleets, settings)
    return result


def print_tables(
    per_registry: dict[str, dict[str, Any]],
    calls: dict[str, Any],
    fleets: list[dict[str, Any]],
    settings: Settings,
) -> None:
    e, r = per_registry["embedded"], per_registry["redis"]

    def row(label: str, key: str, target: str = "") -> list[Any]:
        return [label, e[key], r[key], target]

    print_table(
        "Registry propagation to a watcher on another host",
        ["figure", "embedded", "redis", "target"],
        [
            row("join p50 (ms)", "join_p50_ms"),
            row("join p99 (ms)", "join_p99_ms", "<= 100"),
            row("drain p50 (ms)", "drain_p50_ms"),
            row("drain p99 (ms)", "drain_p99_ms", "<= 100"),
            row("leave p50 (ms)", "leave_p50_ms"),
            row("leave p99 (ms)", "leave_p99_ms"),
            row("changes missed", "missed"),
            row("crash (SIGKILL) detected, p50 (s)", "crash_detect_p50_s"),
            row("crash (SIGKILL) detected, max (s)", "crash_detect_s", f"<= {TTL + 0.5:g}"),
            row("host cut detected, last node (s)", "cut_detect_s", f"<= {TTL + 0.5:g}"),
            row("ttl (s)", "ttl_s"),
            row(f"first view of {settings.first_view_nodes} nodes, median (ms)", "first_view_ms"),
            row("first view, slowest (ms)", "first_view_max_ms"),
        ],
        note=(
            f"{settings.repetitions} joins, drains and leaves per registry (actor on host a, "
            f"watcher on b), {settings.crashes} crashes, {settings.cut_nodes} node(s) per "
            f"registry on the host cut, {settings.first_view_reps} new watchers"
        ),
    )
    print_table(
        f"Calls between hosts (b -> a, {PAYLOAD_BYTES} B payloads)",
        ["figure", "links", "raw unary", "ratio", "target"],
        [
            [
                "call p50 (µs)",
                calls["links_call_p50_us"],
                calls["raw_call_p50_us"],
                calls["cross_host_call_p50_ratio"],
                "<= 0.7",
            ],
            [
                "call p99 (µs)",
                calls["links_call_p99_us"],
                calls["raw_call_p99_us"],
                calls["cross_host_call_p99_ratio"],
                "",
            ],
            [
                f"calls/s, {INFLIGHT} in flight",
                calls["links_call_rps"],
                calls["raw_call_rps"],
                calls["cross_host_call_throughput_ratio"],
                ">= 3",
            ],
        ],
        note=(
            f"medians over {calls['rounds']} rounds in A-B-B-A slices; ratio = median of the "
            "per-round links/raw ratios"
        ),
    )
    rows: list[list[Any]] = []
    for label, key, target in (
        ("commands/s (sent by clients)", "cmds_per_s", ""),
        ("commands per lease-beat", "cmds_per_lease_beat", "<= 3"),
        ("  counting the scripts' own", "script_cmds_per_lease_beat", ""),
        ("lease beats/s (measured)", "beats_per_s", ""),
        ("Redis CPU (% of a core)", "redis_cpu_pct", ""),
        ("node CPU per node (% of a core)", "node_cpu_pct", ""),
        ("views settled after start (s)", "settle_s", ""),
        ("  live leases swept meanwhile", "swept_alive", ""),
        ("  node starts tried again", "restarts", ""),
        ("mesh changes during the window", "changes_in_window", ""),
    ):
        rows.append([label, *(f[key] for f in fleets), target])
    print_table(
        "What the Redis registry costs, every node a lease and a view",
        ["figure", *(f"{f['nodes']} nodes" for f in fleets), "target"],
        rows,
        note=(
            f"{settings.window:g} s windows at a heartbeat of {HEARTBEAT:g} s; commands as "
            "Redis counts them (each script's own commands too); per lease-beat at "
            f"{fleets[-1]['nodes']} nodes: "
            + ", ".join(f"{k} {v}" for k, v in list(fleets[-1]["per_lease_beat"].items())[:12])
        ),
    )


async def serve_registry(bind: str) -> None:
    from wiremesh.registry.embedded import RegistryServer

    registry = RegistryServer(host=bind, ttl=TTL)

    async def start() -> dict[str, Any]:
        await registry.start()
        return {"address": registry.address, "pid": os.getpid()}

    async def stop() -> None:
        await registry.stop(0.2)

    await serve_until_stopped(start, stop)


def cannot_run() -> str | None:
    """Why this machine cannot build the hosts, or None."""
    sys.path.insert(0, str(TESTS))
    from multihost.hosts import missing_requirements, redis_server_path

    missing = [m for m in missing_requirements() if not m.startswith("root")]
    if os.geteuid() != 0:
        missing.insert(0, "root (its hosts are network namespaces)")
    if redis_server_path() is None:
        missing.append("`redis-server` (apt-get install redis-server)")
    return ", ".join(missing) if missing else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about half a minute)")
    # internal: the processes this benchmark starts
    parser.add_argument("--serve", choices=("registry",), help=argparse.SUPPRESS)
    parser.add_argument("--bind", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--agent", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--control", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.node:  # a node process, exactly as `python -m wiremesh.runtime.node_process` runs it
        from wiremesh.runtime.node_process import main as node_main

        return node_main([args.node])
    if args.serve == "registry":
        asyncio.run(serve_registry(args.bind))
        return 0
    if args.agent:
        asyncio.run(run_agent(args.agent, args.control, args.token, json.loads(args.params)))
        return 0

    why = cannot_run()
    if why:
        print(f"multihost.py cannot run here: it needs {why}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    from multihost.hosts import Network

    install_signal_exit()
    settings = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="wiremesh-bench-hosts-"))
    began, load = time.monotonic(), os.getloadavg()[0]
    done = False
    try:
        with Network(workdir=workdir) as network:
            for name in HOSTS:
                network.add_host(name)
            redis = network.start_redis()
            registry_args = [SCRIPT, "--serve", "registry", "--bind", network.gateway]
            with ServerProcess(registry_args, name="embedded registry") as registry:
                result = asyncio.run(measure(network, redis, registry.info["address"], settings))
        done = True
    finally:
        if done:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"the hosts' logs are kept in {workdir}", file=sys.stderr)
    result["quick"] = bool(args.quick)
    result["seconds"] = round(time.monotonic() - began, 1)
    # the machine's 1-minute load average as the run began and ended: a busy machine
    # delays heartbeats and moves every p99
    result["loadavg_start"], result["loadavg_end"] = load, os.getloadavg()[0]
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
