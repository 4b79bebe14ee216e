"""Idle authenticated connections held on one gateway: memory per connection, none lost.

    .venv/bin/python benchmarks/connections.py            # 1,000 -> 100,000 (about 3 minutes)
    .venv/bin/python benchmarks/connections.py --quick    # 100 -> 250 (smoke test, ~8 s)
    .venv/bin/python benchmarks/connections.py --counts 1000,10000 --raw-up-to 10000

Besides this one, these processes: a node of ``Echo`` (with the embedded registry), the
gateway in front of it, and client processes that open the connections (each with a
token of its own principal in ``Sec-WebSocket-Protocol``), answer the gateway's
keepalive pings and hold them open. The node and the gateway run on the loop wiremesh
gives each (``wiremesh.runtime.loop``: the node on uvloop when it is installed, the
gateway on asyncio's; ``gateway_loop`` in the RESULT).

**The curve.** The connections are opened in steps on the same gateway (1,000, then up to
10,000, 30,000 and 100,000); at each step, a second after the last one opened, this
process reads the gateway's resident memory (``VmRSS``) and divides its growth since
before the first step (after a warm-up of 200 connections opened and closed) by the
connections held. After the last step every connection is held ``--seconds`` (25 s: the
gateway pings each one within its 20 s keepalive interval, and the clients answer),
then each must echo a message: ``lost`` counts those that failed to open or to echo.

For context, the same is measured against a raw ``websockets`` server (its asyncio
implementation, an echo handler, on the gateway's loop) up to ``--raw-up-to``
connections (30,000: it holds about 2.5 to 3 times the gateway's memory per connection,
and its opening rate is the same, so 100,000 would add a minute).

What holding 100,000 connections on one machine takes, and what the run does about it:

- **File descriptors.** Each connection costs one in the gateway and one in a client.
  Every process raises its ``RLIMIT_NOFILE`` to what it needs: the gateway refuses
  connections whose descriptor is in the top eighth of its limit
  (``gateway/listener.py``), so it asks for 8/7 of the count and more. Above the hard
  limit that takes ``CAP_SYS_RESOURCE`` (root outside a container that drops it);
  without it the steps the gateway cannot hold are left out, the largest it can
  (whole thousands) is measured instead, ``held_100k`` is false and
  ``gateway_capacity`` says how many it could hold (a hard limit of 20,000: 16,500).
- **Ephemeral ports.** A source address has about 28,000 of them towards one
  destination (``net.ipv4.ip_local_port_range``): the clients bind their connections to
  source addresses of 127.0.0.0/8, ``PER_ADDRESS`` (1,000) to each, 100 addresses for
  100,000 connections.
- **The gateway's limits.** ``[gateway.limits] connections_per_ip`` is set to
  ``PER_ADDRESS`` for the run (its default is 1,000 too), and the tokens belong to
  ``PRINCIPALS`` (2,000) principals, so that none has more than its 100
  (``connections_per_principal``, the default) at 100,000.
- **Client memory and CPU.** A client is a minimal WebSocket client written on an
  asyncio ``Protocol`` on uvloop (about 5 KB per connection), at most ``PER_CLIENT``
  (50,000, fewer when its descriptors are fewer) connections to a process; 200
  handshakes in flight per process.

``RESULT``: ``kb_per_connection`` (at 10,000, or the largest step below it),
``held_100k``, ``lost``, and the curve as ``kb_per_connection_by_connections`` (a list of
``{"connections": N, "wiremesh": KB, "raw_websockets": KB}``, the raw figure only up to
``--raw-up-to``), which ``run_all.py`` draws.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]

from _common import (  # noqa: E402
    ServerProcess,
    install_signal_exit,
    print_result,
    print_table,
    raise_nofile,
    run_on,
    serve_nodes,
    serve_until_stopped,
)
from _common import (  # noqa: E402
    serve_gateway as serve_gateway_process,
)
from _websocket import upgrade_request  # noqa: E402

from wiremesh import Service, Session, on_socket  # noqa: E402
from wiremesh.runtime import loop as event_loop  # noqa: E402

#: connections from one loopback source address (the gateway's connections_per_ip for the run)
PER_ADDRESS = 1_000
#: principals the tokens belong to (each may hold 100 connections: the default)
PRINCIPALS = 2_000
#: connections one client process holds at most (fewer if its descriptors are fewer)
PER_CLIENT = 50_000
#: handshakes in flight per client process
WINDOW = 200
CURVE = (1_000, 10_000, 30_000, 100_000)
QUICK_CURVE = (100, 250)
RAW_UP_TO = 30_000
#: the count whose figure is ``kb_per_connection`` (the largest one measured, if below)
HEADLINE = 10_000


class Echo(Service):
    name = "echo"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(frame)


def gateway_nofile(count: int) -> int:
    """The descriptor limit a gateway holding ``count`` connections asks for: the top
    eighth is kept for its own connections (``gateway/listener.py``)."""
    return (count + 1_000) * 8 // 7 + 1_000


def capacity(limit: int) -> int:
    """How many browser connections a gateway with descriptor ``limit`` takes."""
    from wiremesh.gateway.listener import reserve

    return max(0, limit - reserve(limit) - 1_000)


def per_client() -> int:
    """Connections to a client process: ``PER_CLIENT``, or what its descriptors allow (a
    process may raise its soft limit up to the hard one), whole source addresses."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    room = PER_CLIENT if hard == resource.RLIM_INFINITY else min(PER_CLIENT, hard - 1_000)
    return max(PER_ADDRESS, room // PER_ADDRESS * PER_ADDRESS)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def source_address(index: int) -> str:
    """The ``index``-th client source address: 127.0.1.1, 127.0.1.2, ... (200 to a /24)."""
    return f"127.0.{1 + index // 200}.{1 + index % 200}"


# ---------------------------------------------------------------------------- servers


async def serve_node() -> None:
    await serve_nodes(Echo)


async def serve_gateway(registry: str, count: int) -> None:
    from wiremesh.gateway.auth import mint_token

    limit = raise_nofile(gateway_nofile(count))

    async def ready(gateway: Any) -> dict[str, Any]:
        await gateway.wait_for_streams()
        assert gateway.dev_secret is not None
        tokens = [
            mint_token(gateway.dev_secret, subject=f"user-{i}", ttl=3600) for i in range(PRINCIPALS)
        ]
        return {
            "port": gateway.port,
            "tokens": tokens,
            "nofile": limit,
            "loop": event_loop.running(),
        }

    await serve_gateway_process(registry, {"limits": {"connections_per_ip": PER_ADDRESS}}, ready)


async def serve_raw(count: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    limit = raise_nofile(count + 2_000)
    state: dict[str, Any] = {}

    async def echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    async def start() -> dict[str, Any]:
        server = await serve(echo, "127.0.0.1", 0, compression=None, backlog=4096)
        state["server"] = server
        port = next(iter(server.sockets)).getsockname()[1]
        return {"port": port, "tokens": [], "pid": os.getpid(), "nofile": limit}

    async def stop() -> None:
        state["server"].close()
        await state["server"].wait_closed()

    await serve_until_stopped(start, stop)


# ---------------------------------------------------------------------------- the client


class IdleClient(asyncio.Protocol):
    """A minimal WebSocket client: the opening handshake, pongs, and one echo on demand."""

    __slots__ = ("buffer", "closed", "echoed", "opened", "request", "transport")

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buffer = b""
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.echoed: asyncio.Future[bool] | None = None
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]
        self.request = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened.done():
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.opened.set_result(head.startswith(b"HTTP/1.1 101"))
            self.buffer = rest
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1] & 0x7F
            offset = 2
            if second == 126:
                if len(self.buffer) < 4:
                    return
                second, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
            if len(self.buffer) < offset + second:
                return
            payload = self.buffer[offset : offset + second]
            self.buffer = self.buffer[offset + second :]
            opcode = first & 0x0F
            if opcode == 0x9:  # ping: pong with the same payload
                self.send(0xA, payload)
            elif opcode == 0x8:
                self.closed = True
            elif opcode == 0x2 and self.echoed is not None and not self.echoed.done():
                self.echoed.set_result(payload == b"ping")

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if self.transport is not None:
            self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_result(False)
        if self.echoed is not None and not self.echoed.done():
            self.echoed.set_result(False)

    async def echo(self) -> bool:
        if self.closed:
            return False
        self.echoed = asyncio.get_running_loop().create_future()
        self.send(0x2, b"ping")
        try:
            return await asyncio.wait_for(self.echoed, 30)
        except TimeoutError:
            return False
        finally:
            self.echoed = None


async def client(port: int, path: str, first: int, most: int) -> None:
    """A client process: connection ``i`` of this process is connection ``first + i`` of
    the run (its source address and token follow from that). On stdin the tokens (a JSON
    line), then commands, each answered with a JSON line on stdout: ``open N`` (hold N
    connections in all), ``echo`` (one message on each), ``close``."""
    raise_nofile(most + 1_000)
    loop = asyncio.get_running_loop()
    tokens: list[str] = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    clients: list[IdleClient] = []
    failed = 0
    errors: dict[str, int] = {}
    window = asyncio.Semaphore(WINDOW)

    async def open_one(i: int) -> None:
        nonlocal failed
        index = first + i
        token = tokens[index % len(tokens)] if tokens else ""
        async with window:
            try:
                _, protocol = await loop.create_connection(
                    lambda: IdleClient(upgrade_request(port, path, token)),
                    "127.0.0.1",
                    port,
                    local_addr=(source_address(index // PER_ADDRESS), 0),
                )
                if await asyncio.wait_for(protocol.opened, 30):
                    clients.append(protocol)
                else:
                    if protocol.transport is not None:
                        protocol.transport.abort()
                    failed += 1
                    errors["refused"] = errors.get("refused", 0) + 1
            except (OSError, TimeoutError) as exc:
                failed += 1
                errors[repr(exc)[:60]] = errors.get(repr(exc)[:60], 0) + 1

    def answer(**figures: Any) -> None:
        sys.stdout.write(json.dumps(figures) + "\n")
        sys.stdout.flush()

    tried = 0
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not command or command[0] == "close":
            break
        if command[0] == "open":
            wanted = min(int(command[1]), most)
            started = time.perf_counter()
            await asyncio.gather(*(open_one(i) for i in range(tried, wanted)))
            tried = max(tried, wanted)
            if errors:
                print(f"client {first}: failures {errors}", file=sys.stderr, flush=True)
            answer(opened=len(clients), failed=failed, seconds=time.perf_counter() - started)
        elif command[0] == "echo":
            alive = sum(await asyncio.gather(*(c.echo() for c in clients)))
            answer(opened=len(clients), failed=failed, alive=alive, rss_kb=rss_kb(os.getpid()))
    for protocol in clients:
        if protocol.transport is not None:
            protocol.transport.abort()
    answer(closed=len(clients))


class Clients:
    """The client processes that hold the connections to one server."""

    def __init__(self, server: ServerProcess, path: str, most: int) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        each = per_client()
        self.shares = max(1, math.ceil(most / each))
        tokens = json.dumps(server.info["tokens"])
        for k in range(self.shares):
            args = [sys.executable, __file__, "--client", "--port", str(server.info["port"])]
            args += ["--path", path, "--first", str(k * each), "--most", str(each)]
            process = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert process.stdin is not None
            process.stdin.write(tokens + "\n")  # the first line: the tokens (too many for argv)
            self.processes.append(process)

    def ask(self, commands: list[str]) -> list[dict[str, Any]]:
        for process, command in zip(self.processes, commands, strict=True):
            assert process.stdin is not None
            process.stdin.write(command + "\n")
            process.stdin.flush()
        answers = []
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("a client process ended early (see its error above)")
            answers.append(json.loads(line))
        return answers

    def open(self, count: int) -> dict[str, Any]:
        """Hold ``count`` connections in all, spread over the processes."""
        per = [count // self.shares + (k < count % self.shares) for k in range(self.shares)]
        answers = self.ask([f"open {n}" for n in per])
        return {
            "opened": sum(a["opened"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "seconds": max(a["seconds"] for a in answers),
        }

    def echo(self) -> dict[str, Any]:
        answers = self.ask(["echo"] * self.shares)
        return {
            "alive": sum(a["alive"] for a in answers),
            "opened": sum(a["opened"] for a in answers),
            "rss_kb": sum(a["rss_kb"] for a in answers),
        }

    def close(self) -> None:
        for process in self.processes:
            try:
                process.communicate("close\n", timeout=60)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                process.kill()
                process.wait()


# ---------------------------------------------------------------------------- measuring


def measure_server(
    server: ServerProcess, path: str, counts: list[int], seconds: float, name: str
) -> dict[str, Any]:
    """Open ``counts`` connections in steps on ``server``; its memory at each step, then
    the hold and the echo."""
    pid = server.info["pid"]
    most = counts[-1]
    # warm up: connections made and closed, so that the code paths are loaded
    warm = Clients(server, path, 1)
    try:
        warm.open(min(200, most))
    finally:
        warm.close()
    time.sleep(0.5)
    before = rss_kb(pid)
    steps: list[dict[str, Any]] = []
    clients = Clients(server, path, most)
    try:
        started = time.perf_counter()
        for count in counts:
            opened = clients.open(count)
            time.sleep(1.0)
            after = rss_kb(pid)
            held = opened["opened"]
            steps.append(
                {
                    "connections": count,
                    "opened": held,
                    "failed": opened["failed"],
                    "rss_kb": after,
                    "kb_per_connection": (after - before) / max(1, held),
                    "seconds": time.perf_counter() - started,
                }
            )
            print(
                f"{name}: {held:,} connections held ({opened['failed']} failed), "
                f"{steps[-1]['kb_per_connection']:.2f} KB each, "
                f"{steps[-1]['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(seconds)
        echoed = clients.echo()
        rss_end = rss_kb(pid)
    finally:
        clients.close()
    last = steps[-1]
    return {
        "steps": steps,
        "rss_before_kb": before,
        "rss_after_kb": last["rss_kb"],
        "rss_end_kb": rss_end,
        "opened": last["opened"],
        "failed": last["failed"],
        "alive": echoed["alive"],
        "lost": last["failed"] + last["opened"] - echoed["alive"],
        "open_seconds": last["seconds"],
        "client_kb_per_connection": echoed["rss_kb"] / max(1, echoed["opened"]),
    }


def measure(counts: list[int], raw_up_to: int, seconds: float) -> dict[str, Any]:
    node = ServerProcess([__file__, "--serve", "node"], name="node")
    with node:
        gateway_args = [__file__, "--serve", "gateway", "--registry", node.info["registry"]]
        gateway = ServerProcess(
            [*gateway_args, "--count", str(counts[-1])],
            name="gateway",
            timeout=60,
        )
        with gateway:
            fit = capacity(gateway.info["nofile"])
            held = [c for c in counts if c <= fit]
            if held != counts:
                # the largest step this machine allows instead of those it does not
                top = fit // 1_000 * 1_000
                if top > (held[-1] if held else 0):
                    held.append(top)
                print(
                    f"the gateway may have {gateway.info['nofile']:,} descriptors (the hard "
                    f"limit; raising it takes CAP_SYS_RESOURCE): {fit:,} connections at most; "
                    f"steps left out: {sorted(set(counts) - set(held))}, instead: {held[-1]:,}",
                    file=sys.stderr,
                )
            wm = measure_server(gateway, "/ws/echo", held, seconds, "wiremesh gateway")
            gateway_loop = gateway.info["loop"]
    peer: dict[str, Any] | None = None
    raw_held = [c for c in held if c <= raw_up_to]
    if raw_held:
        # on the gateway's loop, so that both hold their connections alike
        raw_args = [__file__, "--serve", "raw", "--loop", "gateway", "--count", str(raw_held[-1])]
        with ServerProcess(raw_args, name="raw") as raw:
            peer = measure_server(raw, "/", raw_held, min(seconds, 5.0), "raw websockets")
    raw_by_count = {s["connections"]: s["kb_per_connection"] for s in peer["steps"]} if peer else {}
    curve = [
        {
            "connections": s["connections"],
            "wiremesh": round(s["kb_per_connection"], 2),
            **(
                {"raw_websockets": round(raw_by_count[s["connections"]], 2)}
                if s["connections"] in raw_by_count
                else {}
            ),
        }
        for s in wm["steps"]
    ]
    headline = max((c for c in held if c <= HEADLINE), default=held[0])
    at = next(s for s in wm["steps"] if s["connections"] == headline)
    raw_at = max((c for c in raw_by_count if c <= headline), default=None)
    print_table(
        f"idle connections held on one server ({gateway_loop}), KB of resident memory each",
        ["connections", "wiremesh gateway", "raw websockets", "ratio", "opened", "failed"],
        [
            [
                s["connections"],
                s["kb_per_connection"],
                raw_by_count.get(s["connections"], "-"),
                (
                    s["kb_per_connection"] / raw_by_count[s["connections"]]
                    if s["connections"] in raw_by_count
                    else "-"
                ),
                s["opened"],
                s["failed"],
            ]
            for s in wm["steps"]
        ],
        note=(
            f"growth of the server's VmRSS since before the first step, per connection held; "
            f"then all held {seconds:g} s (keepalive pings answered) and each echoed once: "
            f"gateway {wm['alive']:,} of {held[-1]:,} alive at the end, "
            f"raw {peer['alive'] if peer else 0:,} of {raw_held[-1] if raw_held else 0:,}; "
            f"opening them all took {wm['open_seconds']:.1f} s; "
            f"targets: <= 8 KB per connection at {HEADLINE:,}, 100,000 held, none lost"
        ),
    )
    return {
        "connections": held[-1],
        "hold_seconds": seconds,
        "kb_per_connection": round(at["kb_per_connection"], 2),
        "kb_per_connection_at": headline,
        "held_100k": held[-1] >= 100_000 and wm["lost"] == 0,
        "lost": wm["lost"],
        "opened": wm["opened"],
        "alive": wm["alive"],
        "kb_per_connection_by_connections": curve,
        "rss_before_kb": wm["rss_before_kb"],
        "rss_after_kb": wm["rss_after_kb"],
        "rss_end_kb": wm["rss_end_kb"],
        "open_seconds": round(wm["open_seconds"], 2),
        "client_kb_per_connection": round(wm["client_kb_per_connection"], 2),
        "raw_kb_per_connection": round(raw_by_count[raw_at], 2) if raw_at else None,
        "raw_lost": peer["lost"] if peer else 0,
        "gateway_loop": gateway_loop,
        "gateway_nofile": gateway.info["nofile"],
        "gateway_capacity": fit,
        "rounds": 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 then 250 connections, 0.5 s")
    parser.add_argument("--counts", help="the steps, e.g. 1000,10000,30000,100000")
    parser.add_argument("--raw-up-to", type=int, help="the raw server's largest step")
    parser.add_argument("--seconds", type=float, help="the hold after the last step")
    parser.add_argument("--serve", choices=("node", "gateway", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="wiremesh", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--most", type=int, default=PER_CLIENT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "node":
        run_on("wiremesh", serve_node())
        return 0
    if args.serve == "gateway":
        run_on("gateway", serve_gateway(args.registry, args.count))
        return 0
    if args.serve == "raw":
        run_on(args.loop, serve_raw(args.count))
        return 0
    if args.client:
        # the load: on uvloop when installed, to leave the cores to the servers
        run_on("wiremesh", client(args.port, args.path, args.first, args.most))
        return 0
    install_signal_exit()
    if args.counts:
        counts = sorted({int(c) for c in args.counts.split(",")})
    else:
        counts = list(QUICK_CURVE if args.quick else CURVE)
    raw_up_to = args.raw_up_to if args.raw_up_to is not None else RAW_UP_TO
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 25.0)
    result = measure(counts, raw_up_to, seconds)
    result["quick"] = bool(args.quick)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
