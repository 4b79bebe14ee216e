"""The HTTP door against a bare uvicorn + Starlette endpoint, side by side in the same run.

    .venv/bin/python benchmarks/http.py            # the full run (about a minute)
    .venv/bin/python benchmarks/http.py --quick    # a short run (smoke test, < 30 s)

Four server processes, spawned with ``sys.executable``:

- *mesh*: an embedded registry and a wiremesh node of ``Echo`` (``echo`` returns its JSON
  payload);
- *gateway*: a wiremesh gateway in front of it, with a JWT secret (every request carries
  ``Authorization: Bearer``) and limits high enough never to refuse;
- *bare*: uvicorn serving a Starlette application whose one route, ``POST /echo``, parses
  the JSON body and answers it as JSON, as ``uvicorn[standard]`` runs it: on uvloop, with
  httptools parsing HTTP (the fast peer: ``p50_ratio``, ``throughput_ratio``);
- *bare default*: the same on asyncio's default loop with h11, uvicorn's defaults without
  its extras (the ``*_default_peer`` ratios).

wiremesh's two processes run as wiremesh's own do: the node on uvloop when it is
installed, the gateway on asyncio's loop (``wiremesh.runtime.loop``) with httptools when
it is installed (``wiremesh[speed]``; ``wiremesh_loop``, the node's, and
``wiremesh_http_parser`` in the RESULT say what ran).

This process is the load generator: a small HTTP/1.1 client on asyncio streams with
keep-alive connections (one request at a time per connection, no pipelining), so that the
client's own cost stays small beside the servers'. For a ~100 B JSON object it measures
the latency of sequential requests on one connection (p50, p99) and the throughput with
``CONNECTIONS`` connections each keeping one request in flight, for
``POST /rpc/echo/echo`` (client → gateway → node → back) and ``POST /echo`` (client →
Starlette → back). Each round measures the three in A-B-C-C-B-A slices, the order turning
each round; every figure is the median over the rounds, every ratio (gateway / bare) the
median of the per-round ratios. The
last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# this file's name is the standard library's ``http``: its folder goes last on the path,
# so that ``import http`` (uvicorn, the gateway) finds the library and not this script
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from _common import (  # noqa: E402
    ServerProcess,
    install_signal_exit,
    median,
    percentile,
    print_result,
    print_table,
    ratio,
    run_on,
    serve_nodes,
    serve_until_stopped,
    settle_heap,
    wiremesh_loop,
)
from _common import (  # noqa: E402
    serve_gateway as serve_gateway_process,
)

from wiremesh import Context, Service, rpc  # noqa: E402
from wiremesh.gateway.http_protocol import parser_name  # noqa: E402

SECRET = "benchmark-secret-of-at-least-32-bytes"
PAYLOAD = {"sku": "A-1042", "qty": 3, "tags": ["red", "large"], "note": "leave at the door"}
CONNECTIONS = 32
GATEWAY, BARE, BARE_DEFAULT = "gateway", "bare", "bare_default"
SYSTEMS = [GATEWAY, BARE, BARE_DEFAULT]
#: how each bare peer runs: its loop and uvicorn's HTTP implementation
PEERS = {BARE: ("uvloop", "httptools"), BARE_DEFAULT: ("asyncio", "h11")}


class Echo(Service):
    name = "echo"

    @rpc(idempotent=True)
    async def echo(self, ctx: Context, value: Any) -> Any:
        return value


# ---------------------------------------------------------------------------- servers


async def serve_mesh() -> None:
    await serve_nodes(Echo)


async def serve_gateway(registry: str) -> None:
    async def ready(gateway: Any) -> dict[str, Any]:
        await gateway.view.wait_for(lambda snapshot: bool(snapshot.serving("echo")), 10.0)
        return {"port": gateway.port}

    settings = {
        "auth": {"secret": SECRET},
        "http": {"rate": 1e9, "burst": 1_000_000, "concurrency": 100_000},
    }
    await serve_gateway_process(registry, settings, ready)


async def serve_bare(http: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await request.json())

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    # uvicorn binds the port itself, as when run from the command line
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=http,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task: dict[str, asyncio.Task[None]] = {}

    async def start() -> dict[str, Any]:
        task["serve"] = asyncio.create_task(server.serve())
        while not server.started:
            if task["serve"].done():
                task["serve"].result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        return {"port": port, "pid": os.getpid()}

    async def stop() -> None:
        server.should_exit = True
        await task["serve"]

    await serve_until_stopped(start, stop)


# ---------------------------------------------------------------------- the HTTP client


class Connection:
    """One keep-alive HTTP/1.1 connection that sends the same request again and again; it
    opens a new one when the server closed it while idle (as HTTP clients do)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        connection = cls(port)
        await connection.connect()
        return connection

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send ``raw`` (a whole request) and read the answer: its status and body."""
        try:
            return await self._exchange(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()  # closed while idle (keep-alive timeout): once more
            await self.connect()
            return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


def request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Send = Callable[[Connection], Awaitable[tuple[int, bytes]]]


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    rounds: int
    requests: int  # sequential requests measured per system and round (in two slices)
    warmup_requests: int  # before each latency slice
    duration: float  # seconds counted per system and round (in two slices)
    warmup_seconds: float  # before each throughput slice, not counted
    budget: float  # seconds of measuring: no round starts that would likely end past it


FULL = Settings(
    rounds=6, requests=1000, warmup_requests=50, duration=2.0, warmup_seconds=0.2, budget=100.0
)
QUICK = Settings(
    rounds=2, requests=100, warmup_requests=20, duration=0.2, warmup_seconds=0.05, budget=6.0
)


@dataclass
class Figures:
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)


def symmetric(names: list[str], turn: int) -> list[str]:
    """``names`` from the ``turn``-th (modulo), then back: A-B-C-C-B-A."""
    turn %= len(names)
    order = names[turn:] + names[:turn]
    return order + order[::-1]


async def latency_slice(
    connection: Connection, raw: bytes, requests: int, warmup: int
) -> list[int]:
    for _ in range(warmup):
        await connection.request(raw)
    clock = time.perf_counter_ns
    samples = [0] * requests
    for i in range(requests):
        start = clock()
        status, _ = await connection.request(raw)
        samples[i] = clock() - start
        if status != 200:
            raise RuntimeError(f"answered {status}")
    return samples


async def throughput_slice(
    connections: list[Connection], raw: bytes, duration: float, warmup: float
) -> tuple[int, float]:
    """Requests answered and seconds counted, one request in flight per connection."""
    done = 0
    running = True

    async def worker(connection: Connection) -> None:
        nonlocal done
        while running:
            status, _ = await connection.request(raw)
            if status != 200:
                raise RuntimeError(f"answered {status}")
            done += 1

    tasks = [asyncio.create_task(worker(c)) for c in connections]
    try:
        await asyncio.sleep(warmup)
        first, start = done, time.perf_counter()
        await asyncio.sleep(duration)
        last, end = done, time.perf_counter()
    finally:
        running = False
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return last - first, end - start


async def measure(ports: dict[str, int], settings: Settings) -> dict[str, Any]:
    from wiremesh.gateway.auth import mint_token

    body = json.dumps(PAYLOAD).encode()
    token = mint_token(SECRET, subject="bench", ttl=3600)
    raws = {
        GATEWAY: request_bytes("/rpc/echo/echo", body, {"Authorization": f"Bearer {token}"}),
        BARE: request_bytes("/echo", body, {}),
        BARE_DEFAULT: request_bytes("/echo", body, {}),
    }
    single = {name: await Connection.open(port) for name, port in ports.items()}
    pools = {
        name: [await Connection.open(port) for _ in range(CONNECTIONS)]
        for name, port in ports.items()
    }
    try:
        for name, connection in single.items():  # each answers, and answers right
            status, answer = await connection.request(raws[name])
            if status != 200 or json.loads(answer) != PAYLOAD:
                raise RuntimeError(f"{name} answered {status}: {answer[:200]!r}")
            for _ in range(200):
                await connection.request(raws[name])

        settle_heap()
        figures = {name: Figures() for name in ports}
        began = time.perf_counter()
        rounds = 0
        for round_no in range(settings.rounds):
            elapsed = time.perf_counter() - began
            if rounds >= 2 and elapsed * (rounds + 1) / rounds > settings.budget:
                print(f"stopping after {rounds} rounds (budget)", file=sys.stderr, flush=True)
                break
            samples: dict[str, list[int]] = {name: [] for name in ports}
            for name in symmetric(SYSTEMS, round_no):
                gc.collect()
                samples[name] += await latency_slice(
                    single[name], raws[name], settings.requests // 2, settings.warmup_requests
                )
            for name, values in samples.items():
                values.sort()
                figures[name].p50_us.append(percentile(values, 50, presorted=True) / 1000)
                figures[name].p99_us.append(percentile(values, 99, presorted=True) / 1000)
            counted = {name: (0, 0.0) for name in ports}
            for name in symmetric(SYSTEMS, round_no):
                gc.collect()
                n, seconds = await throughput_slice(
                    pools[name], raws[name], settings.duration / 2, settings.warmup_seconds
                )
                counted[name] = (counted[name][0] + n, counted[name][1] + seconds)
            for name, (n, seconds) in counted.items():
                figures[name].rps.append(n / seconds)
            rounds += 1
            gw, bare, slow = figures[GATEWAY], figures[BARE], figures[BARE_DEFAULT]
            print(
                f"round {round_no + 1}/{settings.rounds}: p50 {gw.p50_us[-1]:.0f} vs "
                f"{bare.p50_us[-1]:.0f} ({slow.p50_us[-1]:.0f}) µs, {gw.rps[-1]:,.0f} vs "
                f"{bare.rps[-1]:,.0f} ({slow.rps[-1]:,.0f}) req/s "
                f"({time.perf_counter() - began:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for connection in [*single.values(), *(c for pool in pools.values() for c in pool)]:
            await connection.close()
    return summarize(figures, settings, rounds)


def summarize(figures: dict[str, Figures], settings: Settings, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "rounds": rounds,
        "requests": settings.requests,
        "connections": CONNECTIONS,
        "duration_s": settings.duration,
        "payload_bytes": len(json.dumps(PAYLOAD)),
        "wiremesh_loop": wiremesh_loop(),
        "wiremesh_http_parser": parser_name(),
    }
    rows: list[list[Any]] = []
    gw = figures[GATEWAY]
    for metric, unit, key in (
        ("p50", "µs", "p50_us"),
        ("p99", "µs", "p99_us"),
        ("throughput", "req/s", "rps"),
    ):
        ours: list[float] = getattr(gw, key)
        result[f"gateway_{key}"] = round(median(ours), 1)
        row: list[Any] = [f"{metric} ({unit})", median(ours)]
        paired: dict[str, float] = {}
        for peer, suffix in ((BARE, ""), (BARE_DEFAULT, "_default_peer")):
            theirs: list[float] = getattr(figures[peer], key)
            paired[peer] = median(ratio(a, b) for a, b in zip(ours, theirs, strict=True))
            result[f"{peer}_{key}"] = round(median(theirs), 1)
            name = "throughput_ratio" if key == "rps" else f"{metric}_ratio"
            result[name + suffix] = round(paired[peer], 3)
            row.append(median(theirs))
        rows.append([*row, paired[BARE], paired[BARE_DEFAULT]])
    print_table(
        "HTTP door (client → gateway → node → back) vs bare uvicorn + Starlette",
        [
            f"figure (gateway: {result['wiremesh_loop']}, {result['wiremesh_http_parser']})",
            "gateway + node",
            "bare (uvloop, httptools)",
            "bare (asyncio, h11)",
            "ratio",
            "ratio (default peer)",
        ],
        rows,
        note=(
            f"medians over {rounds} rounds, A-B-C-C-B-A slices; p50/p99 of "
            f"{settings.requests} sequential requests on one keep-alive connection per round; "
            f"throughput with {CONNECTIONS} keep-alive connections, one request in flight "
            f"each, {settings.duration:g}s per round; ratio = median of per-round "
            "gateway/bare; targets against the fast peer: p50 ratio <= 2.5, throughput "
            "ratio >= 0.8"
        ),
    )
    return result


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--serve", choices=("mesh", "gateway", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--peer", choices=tuple(PEERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve == "mesh":
        run_on("wiremesh", serve_mesh())
        return 0
    if args.serve == "gateway":
        run_on("gateway", serve_gateway(args.registry))
        return 0
    if args.serve == "bare":
        loop, http = PEERS[args.peer]
        run_on(loop, serve_bare(http))
        return 0

    install_signal_exit()
    settings = QUICK if args.quick else FULL
    if args.rounds:
        budget = settings.budget * args.rounds / settings.rounds
        settings = dataclasses.replace(settings, rounds=args.rounds, budget=budget)
    script = str(Path(__file__).resolve())
    mesh = ServerProcess([script, "--serve", "mesh"], name="mesh server")
    bare = ServerProcess([script, "--serve", "bare", "--peer", BARE], name="bare server")
    bare_default = ServerProcess(
        [script, "--serve", "bare", "--peer", BARE_DEFAULT], name="bare server (default)"
    )
    gateway: ServerProcess | None = None
    try:
        registry = mesh.start()["registry"]
        gateway = ServerProcess(
            [script, "--serve", "gateway", "--registry", registry], name="gateway"
        )
        ports = {
            GATEWAY: gateway.start()["port"],
            BARE: bare.start()["port"],
            BARE_DEFAULT: bare_default.start()["port"],
        }
        result = run_on("wiremesh", measure(ports, settings))
    finally:
        if gateway is not None:
            gateway.stop()
        bare.stop()
        bare_default.stop()
        mesh.stop()
    result["quick"] = bool(args.quick)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
