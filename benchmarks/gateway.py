"""Browser messages through the gateway against a raw websockets echo server, same run.

    .venv/bin/python benchmarks/gateway.py            # the full run (about a minute)
    .venv/bin/python benchmarks/gateway.py --quick    # a short run (smoke test)

Server processes, spawned with ``sys.executable``: for wiremesh, one hosts an embedded
registry and a node of ``Echo`` (an ``@on_socket`` method that sends each message back),
another a gateway (uvicorn, JWT checked at the upgrade) in front of it, each on the loop
wiremesh gives it (``wiremesh.runtime.loop``: the node on uvloop when it is installed,
the gateway on asyncio's); for the peer, a raw ``websockets`` echo server
(``websockets.asyncio.server.serve``, a handler that sends back what it receives) twice:
on uvloop, the fast configuration its users deploy (the peer of ``p50_ratio`` and
``throughput_ratio``), and on asyncio's default loop (the ``*_default_peer`` ratios).
This process is the client of all three, with the ``websockets`` client, over plain
``ws://`` on loopback: 64 B binary messages, measured for latency (one message in
flight: p50, p99) and throughput (``PIPELINE`` messages in flight, pipelined on one
connection). Each round measures the three systems in A-B-C-C-B-A slices, the order
turning each round; figures are medians over rounds, ratios (wiremesh / raw) medians of
the per-round ratios. The last line printed is ``RESULT {json}``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = str(Path(__file__).resolve().parent)
# this folder goes last: a benchmark named like a standard module (http.py) must not
# shadow it for the libraries this one imports
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]

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

from wiremesh import Service, Session, on_socket  # noqa: E402

PAYLOAD = b"x" * 64
PIPELINE = 64
WIREMESH, RAW, RAW_DEFAULT = "wiremesh", "raw", "raw_default"
#: the raw peers' loops: the fast configuration, and the default one
PEER_LOOPS = {RAW: "uvloop", RAW_DEFAULT: "asyncio"}


class Echo(Service):
    name = "echo"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(frame)


# ---------------------------------------------------------------------------- servers


async def serve_node() -> None:
    await serve_nodes(Echo)


async def serve_gateway(registry: str) -> None:
    from wiremesh.gateway.auth import mint_token

    async def ready(gateway: Any) -> dict[str, Any]:
        await gateway.wait_for_streams()
        assert gateway.dev_secret is not None
        token = mint_token(gateway.dev_secret, subject="bench", ttl=3600)
        return {"url": f"{gateway.ws_url}/ws/echo", "token": token}

    limits = {"messages_per_second": 1e9, "burst": 10**9}
    await serve_gateway_process(registry, {"limits": limits}, ready)


async def serve_raw() -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    state: dict[str, Any] = {}

    async def start() -> dict[str, Any]:
        server = await serve(echo, "127.0.0.1", 0, compression=None)
        state["server"] = server
        port = next(iter(server.sockets)).getsockname()[1]
        return {"url": f"ws://127.0.0.1:{port}/", "pid": os.getpid()}

    async def stop() -> None:
        server = state.get("server")
        if server is not None:
            server.close()
            await server.wait_closed()

    await serve_until_stopped(start, stop)


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    rounds: int
    messages: int  # sequential round trips measured per system and round (two slices)
    warmup: int
    pipelined: int  # messages sent pipelined per system and round (two slices)
    budget: float


FULL = Settings(rounds=9, messages=1000, warmup=50, pipelined=20000, budget=110.0)
QUICK = Settings(rounds=2, messages=200, warmup=20, pipelined=2000, budget=12.0)


@dataclass
class Figures:
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    mps: list[float] = field(default_factory=list)


Connect = Callable[[], Awaitable[Any]]


async def latency(ws: Any, count: int, warmup: int) -> list[int]:
    for _ in range(warmup):
        await ws.send(PAYLOAD)
        await ws.recv()
    clock = time.perf_counter_ns
    samples = [0] * count
    for i in range(count):
        start = clock()
        await ws.send(PAYLOAD)
        await ws.recv()
        samples[i] = clock() - start
    return samples


async def throughput(ws: Any, count: int) -> float:
    """Messages per second echoed with ``PIPELINE`` in flight on one connection."""
    window = asyncio.Semaphore(PIPELINE)

    async def sender() -> None:
        for _ in range(count):
            await window.acquire()
            await ws.send(PAYLOAD)

    start = time.perf_counter()
    task = asyncio.create_task(sender())
    for _ in range(count):
        await ws.recv()
        window.release()
    await task
    return count / (time.perf_counter() - start)


async def measure(settings: Settings) -> dict[str, Any]:
    import websockets

    node = ServerProcess([__file__, "--serve", "node"], name="node")
    raw = ServerProcess([__file__, "--serve", "raw", "--loop", PEER_LOOPS[RAW]], name="raw")
    raw_default = ServerProcess(
        [__file__, "--serve", "raw", "--loop", PEER_LOOPS[RAW_DEFAULT]], name="raw-default"
    )
    with node, raw, raw_default:
        gateway = ServerProcess(
            [__file__, "--serve", "gateway", "--registry", node.info["registry"]], name="gateway"
        )
        with gateway:
            info = gateway.info
            sockets = {
                WIREMESH: await websockets.connect(
                    info["url"],
                    subprotocols=["wiremesh.v1", f"bearer.{info['token']}"],  # type: ignore[list-item]
                    compression=None,
                    max_queue=None,
                ),
                RAW: await websockets.connect(raw.info["url"], compression=None, max_queue=None),
                RAW_DEFAULT: await websockets.connect(
                    raw_default.info["url"], compression=None, max_queue=None
                ),
            }
            settle_heap()
            figures = {name: Figures() for name in sockets}
            ratios: dict[str, list[float]] = {
                "p50": [],
                "throughput": [],
                "p50_default": [],
                "throughput_default": [],
            }
            systems = list(sockets)
            started = time.perf_counter()
            rounds = 0
            try:
                for round_no in range(settings.rounds):
                    elapsed = time.perf_counter() - started
                    if rounds >= 2 and elapsed * (rounds + 1) / rounds > settings.budget:
                        break
                    turn = round_no % len(systems)
                    order = systems[turn:] + systems[:turn]
                    samples: dict[str, list[int]] = {name: [] for name in sockets}
                    rates: dict[str, list[float]] = {name: [] for name in sockets}
                    gc.collect()
                    for name in order + order[::-1]:
                        ws = sockets[name]
                        samples[name] += await latency(ws, settings.messages // 2, settings.warmup)
                        rates[name].append(await throughput(ws, settings.pipelined // 2))
                    for name in sockets:
                        data = sorted(samples[name])
                        figures[name].p50_us.append(percentile(data, 50, presorted=True) / 1e3)
                        figures[name].p99_us.append(percentile(data, 99, presorted=True) / 1e3)
                        figures[name].mps.append(sum(rates[name]) / len(rates[name]))
                    ratios["p50"].append(
                        ratio(figures[WIREMESH].p50_us[-1], figures[RAW].p50_us[-1])
                    )
                    ratios["throughput"].append(
                        ratio(figures[WIREMESH].mps[-1], figures[RAW].mps[-1])
                    )
                    ratios["p50_default"].append(
                        ratio(figures[WIREMESH].p50_us[-1], figures[RAW_DEFAULT].p50_us[-1])
                    )
                    ratios["throughput_default"].append(
                        ratio(figures[WIREMESH].mps[-1], figures[RAW_DEFAULT].mps[-1])
                    )
                    rounds += 1
                    print(
                        f"round {round_no + 1}/{settings.rounds}: p50 "
                        f"{figures[WIREMESH].p50_us[-1]:.0f} vs {figures[RAW].p50_us[-1]:.0f}"
                        f" ({figures[RAW_DEFAULT].p50_us[-1]:.0f}) us, "
                        f"{figures[WIREMESH].mps[-1]:.0f} vs {figures[RAW].mps[-1]:.0f}"
                        f" ({figures[RAW_DEFAULT].mps[-1]:.0f}) msg/s",
                        file=sys.stderr,
                    )
            finally:
                for ws in sockets.values():
                    await ws.close()
    result = {
        "quick": settings is QUICK,
        "rounds": rounds,
        "payload_bytes": len(PAYLOAD),
        "pipeline": PIPELINE,
        "wiremesh_loop": wiremesh_loop(),
        "p50_ratio": median(ratios["p50"]),
        "throughput_ratio": median(ratios["throughput"]),
        "p50_ratio_default_peer": median(ratios["p50_default"]),
        "throughput_ratio_default_peer": median(ratios["throughput_default"]),
        "wiremesh_p50_us": median(figures[WIREMESH].p50_us),
        "raw_p50_us": median(figures[RAW].p50_us),
        "raw_default_p50_us": median(figures[RAW_DEFAULT].p50_us),
        "wiremesh_p99_us": median(figures[WIREMESH].p99_us),
        "raw_p99_us": median(figures[RAW].p99_us),
        "raw_default_p99_us": median(figures[RAW_DEFAULT].p99_us),
        "wiremesh_mps": median(figures[WIREMESH].mps),
        "raw_mps": median(figures[RAW].mps),
        "raw_default_mps": median(figures[RAW_DEFAULT].mps),
    }
    print_table(
        "browser messages, 64 B: client -> gateway -> node -> back vs raw websockets echo",
        ["system", "p50 us", "p99 us", "msg/s pipelined", "p50 ratio", "throughput ratio"],
        [
            [
                f"wiremesh gateway ({result['wiremesh_loop']})",
                result["wiremesh_p50_us"],
                result["wiremesh_p99_us"],
                result["wiremesh_mps"],
                result["p50_ratio"],
                result["throughput_ratio"],
            ],
            [
                "raw websockets (uvloop)",
                result["raw_p50_us"],
                result["raw_p99_us"],
                result["raw_mps"],
                1.0,
                1.0,
            ],
            [
                "raw websockets (asyncio), the default peer",
                result["raw_default_p50_us"],
                result["raw_default_p99_us"],
                result["raw_default_mps"],
                result["p50_ratio_default_peer"],
                result["throughput_ratio_default_peer"],
            ],
        ],
        note=f"medians over {rounds} rounds, A-B-C-C-B-A slices; {PIPELINE} messages in flight "
        "for throughput; ratios are wiremesh / that peer (the wiremesh row's: against the fast "
        "peer); targets against the fast peer: p50 ratio <= 2.5, throughput ratio >= 0.6",
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 20 s)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--serve", choices=("node", "gateway", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "node":
        run_on("wiremesh", serve_node())
        return 0
    if args.serve == "gateway":
        run_on("gateway", serve_gateway(args.registry))
        return 0
    if args.serve == "raw":
        run_on(args.loop, serve_raw())
        return 0
    install_signal_exit()
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = Settings(
            args.rounds, settings.messages, settings.warmup, settings.pipelined, settings.budget
        )
    print_result(run_on("wiremesh", measure(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
