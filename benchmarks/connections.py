"""Idle authenticated connections held on one gateway: memory per connection, none lost.

    .venv/bin/python benchmarks/connections.py            # 10,000 connections
    .venv/bin/python benchmarks/connections.py --quick    # 500 (smoke test)

Three processes besides this one: a node of ``Echo`` (with the embedded registry), the
gateway in front of it, and a client process that opens the connections (each with its
own token in ``Sec-WebSocket-Protocol``), spread over several source addresses in
127.0.0.0/8 (the gateway allows 1,000 connections per address by default), answers the
gateway's keepalive pings and holds them open. The client is a minimal WebSocket client
written on an asyncio ``Protocol`` (a few hundred bytes per connection), so that one
process holds them all. This process reads the gateway's resident memory (``VmRSS``)
before and after, checks every connection still echoes a message at the end of the hold,
and prints ``RESULT {json}`` last (``kb_per_connection``, ``lost``).

For context, the same is measured against a raw ``websockets`` server (the asyncio
implementation, an echo handler) holding the same number of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import struct
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
    serve_nodes,
    serve_until_stopped,
)
from _common import (  # noqa: E402
    serve_gateway as serve_gateway_process,
)

from wiremesh import Service, Session, on_socket  # noqa: E402

PER_ADDRESS = 500
PRINCIPALS = 500


class Echo(Service):
    name = "echo"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(frame)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------------------- servers


async def serve_node() -> None:
    await serve_nodes(Echo)


async def serve_gateway(registry: str) -> None:
    from wiremesh.gateway.auth import mint_token

    async def ready(gateway: Any) -> dict[str, Any]:
        await gateway.wait_for_streams()
        assert gateway.dev_secret is not None
        tokens = [
            mint_token(gateway.dev_secret, subject=f"user-{i}", ttl=3600) for i in range(PRINCIPALS)
        ]
        return {"port": gateway.port, "tokens": tokens}

    raise_nofile()
    await serve_gateway_process(registry, {"limits": {"connections_per_ip": PER_ADDRESS}}, ready)


async def serve_raw() -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    raise_nofile()
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
        return {"port": port, "tokens": [], "pid": os.getpid()}

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


def upgrade_request(port: int, path: str, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    protocols = f"wiremesh.v1, bearer.{token}" if token else "wiremesh.v1"
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    ).encode()


async def hold(
    port: int, path: str, tokens: list[str], count: int, seconds: float
) -> dict[str, Any]:
    """Open ``count`` connections, report, hold them ``seconds``, then echo on each."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    clients: list[IdleClient] = []
    started = time.perf_counter()
    failed = 0
    window = asyncio.Semaphore(200)

    async def open_one(i: int) -> None:
        nonlocal failed
        address = f"127.0.0.{2 + i // PER_ADDRESS}"
        token = tokens[i % len(tokens)] if tokens else ""
        async with window:
            try:
                _, client = await loop.create_connection(
                    lambda: IdleClient(upgrade_request(port, path, token)),
                    "127.0.0.1",
                    port,
                    local_addr=(address, 0),
                )
                if await asyncio.wait_for(client.opened, 30):
                    clients.append(client)
                else:
                    failed += 1
            except (OSError, TimeoutError):
                failed += 1

    await asyncio.gather(*(open_one(i) for i in range(count)))
    opened_in = time.perf_counter() - started
    print(json.dumps({"opened": len(clients), "failed": failed, "seconds": opened_in}), flush=True)
    sys.stdin.readline()  # the parent measured the server's memory
    await asyncio.sleep(seconds)
    alive = sum(await asyncio.gather(*(c.echo() for c in clients)))
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return {"opened": len(clients), "failed": failed, "alive": alive}


# ---------------------------------------------------------------------------- measuring


def measure_server(server: ServerProcess, path: str, count: int, seconds: float) -> dict[str, Any]:
    import subprocess

    pid = server.info["pid"]
    tokens = server.info["tokens"]
    # warm up: one round of connections made and closed, so that code paths are loaded
    before_warm = rss_kb(pid)
    client_args = [sys.executable, __file__, "--client", "--port", str(server.info["port"])]
    client_args += ["--path", path, "--seconds", "0"]
    warm = subprocess.Popen(
        [*client_args, "--count", str(min(200, count))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "WM_TOKENS": json.dumps(tokens)},
    )
    assert warm.stdin is not None and warm.stdout is not None
    warm.stdout.readline()
    warm.stdin.write("\n")
    warm.stdin.flush()
    warm.communicate(timeout=120)
    time.sleep(0.5)
    before = rss_kb(pid)
    client = subprocess.Popen(
        [*client_args[:-1], str(seconds), "--count", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "WM_TOKENS": json.dumps(tokens)},
    )
    assert client.stdin is not None and client.stdout is not None
    opened = json.loads(client.stdout.readline())
    time.sleep(1.0)
    after = rss_kb(pid)
    client.stdin.write("\n")
    client.stdin.flush()
    out, _ = client.communicate(timeout=seconds + 180)
    final = json.loads(out.strip().splitlines()[-1])
    return {
        "rss_before_kb": before,
        "rss_after_kb": after,
        "warmup_kb": before - before_warm,
        "opened": opened["opened"],
        "failed": opened["failed"],
        "open_seconds": opened["seconds"],
        "alive": final["alive"],
        "kb_per_connection": (after - before) / max(1, opened["opened"]),
    }


def measure(count: int, seconds: float) -> dict[str, Any]:
    node = ServerProcess([__file__, "--serve", "node"], name="node")
    with node:
        gateway = ServerProcess(
            [__file__, "--serve", "gateway", "--registry", node.info["registry"]],
            name="gateway",
            timeout=60,
        )
        with gateway:
            wm = measure_server(gateway, "/ws/echo", count, seconds)
    with ServerProcess([__file__, "--serve", "raw"], name="raw") as raw:
        peer = measure_server(raw, "/", count, seconds)
    lost = wm["opened"] - wm["alive"] + wm["failed"]
    print_table(
        f"{count:,} idle connections held {seconds:g}s",
        ["server", "opened", "failed", "alive at the end", "KB per connection", "open in s"],
        [
            [
                "wiremesh gateway",
                wm["opened"],
                wm["failed"],
                wm["alive"],
                wm["kb_per_connection"],
                wm["open_seconds"],
            ],
            [
                "raw websockets",
                peer["opened"],
                peer["failed"],
                peer["alive"],
                peer["kb_per_connection"],
                peer["open_seconds"],
            ],
        ],
        note="resident memory (VmRSS) of the server process before and after opening them; "
        "targets: <= 20 KB per connection, none lost",
    )
    return {
        "connections": count,
        "hold_seconds": seconds,
        "kb_per_connection": round(wm["kb_per_connection"], 2),
        "lost": lost,
        "opened": wm["opened"],
        "rss_before_kb": wm["rss_before_kb"],
        "rss_after_kb": wm["rss_after_kb"],
        "open_seconds": round(wm["open_seconds"], 2),
        "raw_kb_per_connection": round(peer["kb_per_connection"], 2),
        "raw_lost": peer["opened"] - peer["alive"] + peer["failed"],
        "rounds": 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 connections, a short hold")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--serve", choices=("node", "gateway", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "node":
        asyncio.run(serve_node())
        return 0
    if args.serve == "gateway":
        asyncio.run(serve_gateway(args.registry))
        return 0
    if args.serve == "raw":
        asyncio.run(serve_raw())
        return 0
    if args.client:
        tokens = json.loads(os.environ.get("WM_TOKENS", "[]"))
        result = asyncio.run(hold(args.port, args.path, tokens, args.count, args.seconds))
        print(json.dumps(result), flush=True)
        return 0
    install_signal_exit()
    count = args.count or (500 if args.quick else 10_000)
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 30.0)
    result = measure(count, seconds)
    result["quick"] = bool(args.quick)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
