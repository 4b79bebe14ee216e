"""A node's push to N browser sessions on one gateway, against raw websockets' broadcast.

    .venv/bin/python benchmarks/push.py            # N = 100, 1,000 and 10,000 (60-75 s)
    .venv/bin/python benchmarks/push.py --quick    # N = 100 and 1,000 (smoke test, < 30 s)

Server processes, spawned with ``sys.executable``: for wiremesh, one hosts an embedded
registry and a node of ``Pusher``, another a gateway in front of it (each on the loop
wiremesh gives it: the node on uvloop when it is installed, the gateway on asyncio's);
for the peer, one hosts a raw ``websockets`` server (the asyncio implementation) that
keeps its connections in a set, on uvloop, its fast configuration. The clients run on
uvloop too. Two client processes, one per server (each holds up to 10,000 connections,
so neither runs out of file descriptors), open the N sessions: a minimal WebSocket
client on an asyncio ``Protocol`` (``_websocket.py``), spread over source
addresses in 127.0.0.0/8 (500 each: the gateway allows 1,000 per address by default).
Every wiremesh session carries a token of the same principal (``audience``; the
gateway's ``connections_per_principal`` is raised to allow them all, and
``idle_timeout`` is off, as the raw server has none). One more connection per server,
the *control* session, asks for each push; this process drives both clients, N growing
100 -> 1,000 -> 10,000 on the same connections.

Each push, the server takes ``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for every
process of the machine), writes it into a 64 B message and pushes it:

- *wiremesh* (what is measured against raw): the node's socket handler calls
  ``await self.sessions.send_to_principal("audience", message)``: one frame to the gateway,
  which writes it to each of the principal's sessions. This is the way that scales: the
  node's work does not grow with N;
- *per session* (for context): the same handler does
  ``for session in self.sessions: await session.send(message)``: N frames to the gateway
  (coalesced on its stream), one per session;
- *raw*: the server's handler for the control connection calls
  ``websockets.asyncio.server.broadcast(audience, message)``.

The client stamps each message's arrival with ``time.monotonic_ns()`` (once per
``data_received``); a push's time is the last session's arrival less the server's stamp
(the first session's is shown beside). A message that has not arrived 30 s after its push
counts in ``lost`` (``raw_lost`` for the peer). Each round pushes once with each system, in
an order reversed every round, after uncounted warm-up pushes; figures are the p50 and p99
of a system's pushes over the rounds, ratios (wiremesh / raw) the median of the per-round
ratios.

Beside the times, the CPU each push costs: the servers' (the gateway's and the node's, or
the raw server's: user + system time of every thread, from ``/proc/<pid>/stat`` before and
after each push, in 10 ms ticks, so a mean over the rounds) and the client process's
(``time.process_time``). The client's reading (a ``data_received`` per session) runs
beside the server's writing on the other core and costs about half to all as much per
message, so a push's time is bounded by both; the server CPU is the server's cost alone.
The last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import queue
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = str(Path(__file__).resolve().parent)
# this folder goes last: a benchmark named like a standard module (http.py) must not
# shadow it for the libraries this one imports
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]

from _common import (  # noqa: E402
    TICK,
    ServerProcess,
    cpu_ticks,
    install_signal_exit,
    median,
    percentile,
    print_result,
    print_table,
    raise_nofile,
    ratio,
    run_context,
    run_on,
    serve_nodes,
    settle_heap,
)
from _websocket import (  # noqa: E402
    WebSocketClient,
    grow,
    open_client,
    serve_broadcast,
    serve_token_gateway,
    upgrade_request,
)

from wiremesh import Service, Session, on_socket  # noqa: E402

#: the descriptors each process asks for: 10,000 sessions, the eighth a gateway keeps for
#: its own connections (``gateway/listener.py``), and room
NOFILE = 16_384
AUDIENCE = "audience"  # the principal of every session pushed to
SIZE = 64  # bytes of a pushed message
HEAD = struct.Struct("!Iq")  # the push's number, the server's monotonic_ns when it pushed
PER_ADDRESS = 500  # connections per source address (the gateway allows 1,000)
TIMEOUT = 30.0  # seconds a push has to reach every session; later, they count as lost
WIREMESH, PER_SESSION, RAW = "wiremesh", "per_session", "raw"
SYSTEMS = (WIREMESH, PER_SESSION, RAW)
#: the command each system's control session sends: to the principal, to each session
COMMAND = {WIREMESH: b"p", PER_SESSION: b"s", RAW: b"p"}
LABEL = {
    WIREMESH: "wiremesh send_to_principal",
    PER_SESSION: "wiremesh per session",
    RAW: "raw websockets broadcast",
}


def message(number: int) -> bytes:
    """Push number ``number``, stamped now (CLOCK_MONOTONIC), 64 bytes."""
    return HEAD.pack(number, time.monotonic_ns()).ljust(SIZE, b".")


# ---------------------------------------------------------------------------- servers


class Pusher(Service):
    """The control session's frames ask for a push (``p`` to every session of the
    principal, ``s`` to each session, one by one, then the push's number) or for how many
    sessions of the principal this node holds (``n``)."""

    name = "push"

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        command, number = frame[:1], int.from_bytes(frame[1:5], "big")
        if command == b"p":
            await self.sessions.send_to_principal(AUDIENCE, message(number))
        elif command == b"s":
            data = message(number)
            for each in self.sessions:
                await each.send(data)
        elif command == b"n":
            await session.send(b"count:%d" % len(self.sessions.of_principal(AUDIENCE)))


async def serve_node() -> None:
    await serve_nodes(Pusher)


async def serve_gateway(registry: str) -> None:
    limits = {"connections_per_principal": 100_000, "idle_timeout": 0}
    await serve_token_gateway(registry, AUDIENCE, limits, nofile=NOFILE)


async def serve_raw() -> None:
    await serve_broadcast(b"p", message, nofile=NOFILE, info={"token": "", "control_token": ""})


# ---------------------------------------------------------------------------- the client


class Tally:
    """The arrivals of the push under way, over every connection of a client process."""

    def __init__(self) -> None:
        self.number = -1
        self.expected = 0
        self.stamp = 0
        self.arrivals: list[int] = []
        self.done: asyncio.Future[None] | None = None

    def arm(self, number: int, expected: int) -> asyncio.Future[None]:
        self.number, self.expected, self.stamp, self.arrivals = number, expected, 0, []
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def arrived(self, opcode: int, payload: bytes, now: int) -> None:
        """A :class:`WebSocketClient`'s ``on_message``: a binary message stamped ``now``."""
        if opcode != 0x2 or len(payload) < HEAD.size:
            return
        number, stamp = HEAD.unpack_from(payload)
        if number != self.number:
            return  # a push that was already given up on
        self.stamp = stamp
        self.arrivals.append(now)
        done = self.done
        if len(self.arrivals) >= self.expected and done is not None and not done.done():
            done.set_result(None)


async def client(port: int, path: str, control_path: str, token: str, control_token: str) -> None:
    """A client process: commands on stdin, one JSON answer per command on stdout.

    ``grow N``: open sessions until N are open and the server counts N;
    ``push <system> <number>``: ask for a push, wait until every session has it.
    """
    raise_nofile(NOFILE)
    loop = asyncio.get_running_loop()
    tally = Tally()
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    sessions: list[WebSocketClient] = []
    window = asyncio.Semaphore(200)

    def control_message(opcode: int, payload: bytes, now: int) -> None:
        """The control session's messages: the server's counts (and no pushes)."""
        if opcode == 0x2 and payload.startswith(b"count:"):
            replies.put_nowait(payload)

    async def connect(i: int, *, control: bool = False) -> WebSocketClient | None:
        request = upgrade_request(
            port, control_path if control else path, control_token if control else token
        )
        on_message = control_message if control else tally.arrived
        return await open_client(
            lambda: WebSocketClient(request, on_message),
            port,
            f"127.0.0.{2 + i // PER_ADDRESS}",
            window,
        )

    async def counted() -> int:
        control.send(0x2, b"n")
        reply = await asyncio.wait_for(replies.get(), 10)
        return int(reply.partition(b":")[2])

    found = await connect(0, control=True)
    if found is None:
        raise RuntimeError("the control session did not open")
    control = found
    read = sys.stdin.readline
    while line := await loop.run_in_executor(None, read):
        words = line.split()
        if words[0] == "grow":
            count, started = int(words[1]), time.perf_counter()
            failed = await grow(sessions, count, connect)
            for _ in range(600):  # until the server holds them all, 30 s at most
                if (held := await counted()) >= len(sessions):
                    break
                await asyncio.sleep(0.05)
            settle_heap()
            answer: dict[str, Any] = {
                "opened": len(sessions),
                "held": held,
                "failed": failed,
                "seconds": time.perf_counter() - started,
            }
        elif words[0] == "push":
            system, number = words[1], int(words[2])
            done = tally.arm(number, len(sessions))
            cpu = time.process_time_ns()
            control.send(0x2, COMMAND[system] + number.to_bytes(4, "big"))
            with contextlib.suppress(TimeoutError):  # the missing ones count as lost
                await asyncio.wait_for(done, TIMEOUT)
            cpu = time.process_time_ns() - cpu
            arrivals, stamp = tally.arrivals, tally.stamp
            tally.number = -1
            answer = {
                "received": len(arrivals),
                "expected": len(sessions),
                "first_ms": (arrivals[0] - stamp) / 1e6 if arrivals else None,
                "last_ms": (max(arrivals) - stamp) / 1e6 if arrivals else None,
                "client_cpu_ms": cpu / 1e6,
            }
        else:
            raise ValueError(f"unknown command {line!r}")
        print(json.dumps(answer), flush=True)
    for session in [control, *sessions]:
        if session.transport is not None:
            session.transport.close()


class ClientProcess:
    """A client process (this script with ``--client``), driven by one command at a time;
    it exits when its stdin closes."""

    def __init__(self, name: str, info: dict[str, Any], path: str, control_path: str) -> None:
        args = [sys.executable, __file__, "--client", "--port", str(info["port"])]
        args += ["--path", path, "--control-path", control_path]
        env = {
            **os.environ,
            "WM_TOKEN": info["token"],
            "WM_CONTROL_TOKEN": info["control_token"],
        }
        self.name = name
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def reader() -> None:
            for text in stdout:
                self.lines.put(text)
            self.lines.put("")

        threading.Thread(target=reader, name=f"{name}-stdout", daemon=True).start()

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no answer to {command!r} in {timeout}s") from None
        if not line:
            raise RuntimeError(f"{self.name} exited with {self.proc.wait()}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    rounds: dict[int, int]  # measured rounds per N
    warmup: int  # uncounted pushes per system and N


FULL = Settings(sizes=(100, 1_000, 10_000), rounds={100: 30, 1_000: 20, 10_000: 12}, warmup=2)
QUICK = Settings(sizes=(100, 1_000), rounds={100: 5, 1_000: 3}, warmup=1)


@dataclass
class Figures:
    """One system's pushes at one N."""

    last_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # per round, last_ms / raw's
    client_cpu_ms: list[float] = field(default_factory=list)
    server_ticks: int = 0  # over every measured push: the gateway and node, or raw's server
    node_ticks: int = 0
    pushes: int = 0

    def p(self, q: float) -> float:
        return round(percentile(self.last_ms, q), 3)

    def server_cpu_ms(self) -> float:
        return round(self.server_ticks * TICK / self.pushes, 3) if self.pushes else math.nan

    def node_cpu_ms(self) -> float:
        return round(self.node_ticks * TICK / self.pushes, 3) if self.pushes else math.nan


def measure(settings: Settings) -> dict[str, Any]:
    loadavg_start = os.getloadavg()[0]
    began = time.monotonic()
    figures: dict[int, dict[str, Figures]] = {}
    lost = dict.fromkeys(SYSTEMS, 0)
    failed = 0
    number = 0
    node = ServerProcess([__file__, "--serve", "node"], name="node")
    raw = ServerProcess([__file__, "--serve", "raw"], name="raw")
    with node, raw:
        gateway = ServerProcess(
            [__file__, "--serve", "gateway", "--registry", node.info["registry"]],
            name="gateway",
            timeout=60,
        )
        with gateway:
            wm_client = ClientProcess("wiremesh client", gateway.info, "/ws/push", "/ws/push")
            raw_client = ClientProcess("raw client", raw.info, "/", "/control")
            with wm_client, raw_client:
                clients = {WIREMESH: wm_client, PER_SESSION: wm_client, RAW: raw_client}
                wm_pids = [gateway.info["pid"], node.info["pid"]]
                pids = {WIREMESH: wm_pids, PER_SESSION: wm_pids, RAW: [raw.info["pid"]]}
                for size in settings.sizes:
                    for name, proc in (("wiremesh", wm_client), ("raw", raw_client)):
                        grown = proc.ask(f"grow {size}", 300)
                        failed += grown["failed"] + size - grown["opened"]
                        print(
                            f"{name}: {grown['opened']:,} sessions open in "
                            f"{grown['seconds']:.1f}s ({grown['held']:,} held by the server)",
                            file=sys.stderr,
                        )
                    at = figures[size] = {name: Figures() for name in SYSTEMS}
                    for round_no in range(-settings.warmup, settings.rounds[size]):
                        order = SYSTEMS if round_no % 2 == 0 else SYSTEMS[::-1]
                        got: dict[str, dict[str, Any]] = {}
                        for name in order:
                            number += 1
                            before = [cpu_ticks(pid) for pid in pids[name]]
                            got[name] = clients[name].ask(f"push {name} {number}", TIMEOUT + 30)
                            used = [
                                cpu_ticks(pid) - b
                                for pid, b in zip(pids[name], before, strict=True)
                            ]
                            got[name]["ticks"] = used
                            lost[name] += got[name]["expected"] - got[name]["received"]
                            time.sleep(0.05)  # let the servers finish what a push left
                        if round_no < 0:
                            continue
                        for name in SYSTEMS:
                            answer, figure = got[name], at[name]
                            if answer["received"] == answer["expected"]:
                                figure.last_ms.append(answer["last_ms"])
                                figure.first_ms.append(answer["first_ms"])
                            figure.ratios.append(
                                ratio(answer["last_ms"] or math.nan, got[RAW]["last_ms"] or 0)
                            )
                            figure.client_cpu_ms.append(answer["client_cpu_ms"])
                            figure.server_ticks += sum(answer["ticks"])
                            figure.node_ticks += answer["ticks"][1] if name != RAW else 0
                            figure.pushes += 1
                        print(
                            f"N={size:,} round {round_no + 1}/{settings.rounds[size]}: "
                            + ", ".join(
                                f"{name} {got[name]['last_ms'] or math.nan:.2f} ms"
                                for name in SYSTEMS
                            ),
                            file=sys.stderr,
                        )
    return report(settings, figures, lost, failed, loadavg_start, began)


def report(
    settings: Settings,
    figures: dict[int, dict[str, Figures]],
    lost: dict[str, int],
    failed: int,
    loadavg_start: float,
    began: float,
) -> dict[str, Any]:
    sizes = list(settings.sizes)
    rows = []
    for size in sizes:
        for name in SYSTEMS:
            figure = figures[size][name]
            rows.append(
                [
                    f"{size:,} sessions, {LABEL[name]}",
                    figure.p(50),
                    figure.p(99),
                    median(figure.first_ms),
                    median(figure.ratios),
                    figure.server_cpu_ms(),
                    figure.node_cpu_ms() if name != RAW else "",
                    median(figure.client_cpu_ms),
                ]
            )
    print_table(
        "a push to N sessions on one gateway, until the last session has it",
        [
            "N, system",
            "p50 ms",
            "p99 ms",
            "first session p50 ms",
            "p50 ratio vs raw",
            "server CPU ms",
            "of it node",
            "client CPU ms",
        ],
        rows,
        note="each push stamped by the server (CLOCK_MONOTONIC) and by the client as each "
        f"session receives it; p50 and p99 over {min(settings.rounds.values())} to "
        f"{max(settings.rounds.values())} rounds per N (one push per system each round); "
        "ratios: median of the per-round ratios; server CPU: the gateway's and the node's "
        "(raw: its server's) per push, mean from /proc ticks; client CPU: the client "
        "process's per push, median",
    )

    def by_sessions(value: Any) -> list[dict[str, Any]]:
        return [
            {"sessions": s, **{name: value(figures[s][name]) for name in SYSTEMS}} for s in sizes
        ]

    result: dict[str, Any] = {
        "quick": settings is QUICK,
        "rounds": min(settings.rounds[s] for s in sizes),
        "rounds_per_size": {str(s): settings.rounds[s] for s in sizes},
        "warmup": settings.warmup,
        "payload_bytes": SIZE,
        "timeout_s": TIMEOUT,
        "push_p50_ms_by_sessions": by_sessions(lambda f: f.p(50)),
        "push_p99_ms_by_sessions": by_sessions(lambda f: f.p(99)),
        "push_server_cpu_ms_by_sessions": by_sessions(Figures.server_cpu_ms),
        # context, not a curve (a mapping, which run_all.py does not draw)
        "client_cpu_ms_per_size": {
            str(s): {name: round(median(figures[s][name].client_cpu_ms), 3) for name in SYSTEMS}
            for s in sizes
        },
        "lost": lost[WIREMESH] + lost[PER_SESSION],
        "raw_lost": lost[RAW],
        "failed": failed,
        **run_context(loadavg_start, began),
    }
    for size in sizes:
        result[f"push_p50_ratio_{size}"] = round(median(figures[size][WIREMESH].ratios), 3)
        result[f"per_session_p50_ratio_{size}"] = round(
            median(figures[size][PER_SESSION].ratios), 3
        )
        result[f"push_server_cpu_ratio_{size}"] = round(
            ratio(figures[size][WIREMESH].server_cpu_ms(), figures[size][RAW].server_cpu_ms()), 3
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000 (< 30 s)")
    parser.add_argument("--rounds", type=int, help="measured rounds at every N")
    parser.add_argument("--serve", choices=("node", "gateway", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--control-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "node":
        run_on("wiremesh", serve_node())
        return 0
    if args.serve == "gateway":
        run_on("gateway", serve_gateway(args.registry))
        return 0
    if args.serve == "raw":
        run_on("uvloop", serve_raw())
        return 0
    if args.client:
        token, control_token = os.environ["WM_TOKEN"], os.environ["WM_CONTROL_TOKEN"]
        run_on("uvloop", client(args.port, args.path, args.control_path, token, control_token))
        return 0
    install_signal_exit()
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = Settings(
            settings.sizes, dict.fromkeys(settings.sizes, args.rounds), settings.warmup
        )
    print_result(measure(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
