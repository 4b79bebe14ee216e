"""One publisher, one channel, N subscribers on two gateways, against raw websockets' broadcast.

    .venv/bin/python benchmarks/channels.py              # N = 1,000 and 10,000 (about 100 s)
    .venv/bin/python benchmarks/channels.py --quick      # N = 100 and 1,000 (smoke test, ~10 s)
    .venv/bin/python benchmarks/channels.py --counts 10000 --rounds 5

Server processes, spawned with ``sys.executable``: for wiremesh, one hosts the embedded
registry (and in it the channel engine) and a node of ``Feed``, which owns ``feed:*``
(history kept, anyone may subscribe), on the loop wiremesh gives a node; two more host a
gateway each, on the gateway's loop. For the peer, one hosts a raw ``websockets`` server
(the asyncio implementation) on uvloop, its fast configuration, that keeps its connections
in a set and calls ``websockets.asyncio.server.broadcast`` for each message: one process
writing to all N. Keepalive pings are off on both (the gateways' ``ping_interval`` 0, the
raw server's ``ping_interval=None``), and so are the gateways' idle timeout and per-session
rates, which the raw server does not have.

Two client processes (on uvloop) each hold N/2 connections to each system: client ``k``'s
wiremesh sessions are on gateway ``k`` and subscribe to ``feed:bench`` (a text
``{"wm":"subscribe",...}``; a session counts once its ``subscribed`` answer came), its raw
connections on the raw server. They are minimal WebSocket clients on an asyncio
``Protocol`` (``_websocket.py``'s), spread over loopback source addresses, 500 each.

Each message carries its publisher's ``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock
for every process of the machine): the node stamps it as it calls
``await self.channels.publish("feed:bench", {"n": number, "t": stamp})``, the raw server
as it calls ``broadcast`` with the very text a gateway writes for that publication
(``{"wm":"pub","channel":...,"offset":...,"epoch":...,"data":{"n":...,"t":...}}``), so
both clients parse the same bytes. The clients stamp each arrival (once per
``data_received``).

A message is *in flight* until every subscriber has it; this process asks the publisher
for the next one (over a control WebSocket: to the node through gateway 0, or to the raw
server) as one completes. Per system and N, after an uncounted warm-up, each round
(systems alternated: wiremesh first, then raw first, ...) has:

- a *throughput run*: M messages, at most W in flight (``max(4, 20_000 // N)``: 20 at
  1,000, 4 at 10,000: enough to keep the pipeline busy). Its *deliveries per second* are
  its deliveries over the time from its first message's stamp to its last arrival;
  ``fanout_throughput_ratio`` is the median of the per-round ratios (wiremesh / raw);
- a *paced run*: one message in flight. ``delivery_p50_ms`` and ``delivery_p99_ms`` are
  the publish -> arrival times of every delivery of the paced runs. The same times in the
  throughput runs are ``loaded_*``: not comparable between the systems, since the engine
  accepts a publication at once and the gateways queue it after its stamp, while the raw
  server is its own bottleneck and its next command waits before being stamped.

A delivery missing 20 s after the last one counts in ``lost`` (``raw_lost``). Server CPU
per delivery (throughput runs): the gateways' and the node's (or the raw server's) user +
system time from ``/proc/<pid>/stat``.

Recovery, before the subscribers connect: one session subscribes to ``feed:recovery``
(history kept), then, R times: it disconnects, the node publishes 100 messages, and it
comes back on the other gateway and subscribes with ``since`` (the last offset it saw);
``recovery_p50_ms`` is the median time from sending that subscribe to holding all 100
(they come in its ``subscribed`` answer).

The last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import functools
import json
import math
import os
import re
import sys
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
from wiremesh.channels import Channel  # noqa: E402

#: descriptors each process asks for (a client holds N/2 + N/2, the raw server N)
NOFILE = 16_384
CHANNEL = "feed:bench"
RECOVERY_CHANNEL = "feed:recovery"
RECOVERY_MISSED = 100  # publications missed before each recovery
#: the raw server's epoch (a gateway writes the engine's: 16 hex digits too)
RAW_EPOCH = "0123456789abcdef"
PER_ADDRESS = 500  # connections per source address (the gateway allows 1,000)
#: seconds without a single message completing before a round gives up (the rest: lost)
STALL = 20.0
#: the throughput rounds' in-flight window, in deliveries: max(4, WINDOW_DELIVERIES // N)
#: messages
WINDOW_DELIVERIES = 20_000
WIREMESH, RAW = "wiremesh", "raw"
SYSTEMS = (WIREMESH, RAW)
LABEL = {WIREMESH: "wiremesh channel, 2 gateways", RAW: "raw websockets broadcast"}
#: a message's number and stamp, in the JSON the clients receive
MARK = re.compile(rb'"n":(\d+),"t":(\d+)')


def raw_text(number: int) -> str:
    """What the raw server broadcasts: a gateway's ``pub`` text for message ``number``."""
    return (
        f'{{"wm":"pub","channel":"{CHANNEL}","offset":{number},"epoch":"{RAW_EPOCH}",'
        f'"data":{{"n":{number},"t":{time.monotonic_ns()}}}}}'
    )


# ---------------------------------------------------------------------------- servers


class Feed(Service):
    """The publisher. Its control session's frames: ``P`` + a number (publish that message
    to ``feed:bench``), ``R`` + a count (publish that many to ``feed:recovery``, one after
    the other, then answer ``R``)."""

    name = "feed"
    owns_channels = {"feed:*": Channel(history_size=1_000, history_ttl=600, anyone=True)}

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        command, number = frame[:1], int.from_bytes(frame[1:5], "big")
        if command == b"P":
            await self.channels.publish(CHANNEL, {"n": number, "t": time.monotonic_ns()})
        elif command == b"R":
            for i in range(number):
                await self.channels.publish(RECOVERY_CHANNEL, {"n": i, "t": time.monotonic_ns()})
            await session.send(b"R")


async def serve_node() -> None:
    await serve_nodes(Feed)


async def serve_gateway(registry: str) -> None:
    limits = {
        "connections_per_principal": 100_000,
        "idle_timeout": 0,
        "ping_interval": 0,
        "messages_per_second": 1_000_000,
        "burst": 1_000_000,
    }
    await serve_token_gateway(registry, "reader", limits, nofile=NOFILE)


async def serve_raw() -> None:
    await serve_broadcast(b"P", raw_text, nofile=NOFILE, ping_interval=None)


# ---------------------------------------------------------------------------- the client


class Tally:
    """The arrivals of the round under way, over every connection of one system in a
    client process; ``D <number>`` goes to stdout as each message reaches them all."""

    def __init__(self) -> None:
        self.first = self.count = self.expected = 0
        self.counts: list[int] = []
        self.micros = array.array("I")  # each delivery's time, in µs
        self.received = 0
        self.first_stamp = 0
        self.last_arrival = 0

    def arm(self, first: int, count: int, expected: int) -> None:
        self.first, self.count, self.expected = first, count, expected
        self.counts = [0] * count
        self.micros = array.array("I")
        self.received = self.first_stamp = self.last_arrival = 0

    def arrived(self, opcode: int, payload: bytes, now: int) -> None:
        """A :class:`WebSocketClient`'s ``on_message``: a message stamped ``now``."""
        found = MARK.search(payload)
        if found is None:
            return
        index = int(found[1]) - self.first
        if not 0 <= index < self.count:
            return  # not this round's
        stamp = int(found[2])
        self.micros.append(max(0, now - stamp) // 1000)
        self.received += 1
        if not self.first_stamp or stamp < self.first_stamp:
            self.first_stamp = stamp
        if now > self.last_arrival:
            self.last_arrival = now
        self.counts[index] += 1
        if self.counts[index] == self.expected:
            sys.stdout.write(f"D {self.first + index}\n")
            sys.stdout.flush()


class Subscriber(WebSocketClient):
    """A :class:`WebSocketClient` that (``subscribe``: a wiremesh session) sends the
    subscribe request once open; ready once it is subscribed (or open), each message
    after that stamped on arrival into the :class:`Tally`."""

    __slots__ = ("subscribe", "tally")

    def __init__(self, request: bytes, subscribe: bytes | None, tally: Tally) -> None:
        super().__init__(request, self.answered)
        self.subscribe = subscribe
        self.tally = tally
        self.ready = asyncio.get_running_loop().create_future()

    def handshake_done(self, ok: bool) -> None:
        if ok and self.subscribe is not None:
            self.send(0x1, self.subscribe)
        else:
            self.subscribed(ok)

    def answered(self, opcode: int, payload: bytes, now: int) -> None:
        """The messages before it is ready: the answer to the subscribe request."""
        if payload.startswith(b'{"wm":"subscribed"'):
            self.subscribed(True)
        elif payload.startswith(b'{"wm":"error"'):
            self.subscribed(False)

    def subscribed(self, ok: bool) -> None:
        self.ready.set_result(ok)
        self.on_message = self.tally.arrived

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.ready.done():
            self.ready.set_result(False)


async def client(index: int, ports: dict[str, int], token: str) -> None:
    """A client process: commands on stdin, one JSON answer per command on stdout (and a
    ``D <number>`` line as each message reaches all of a system's connections).

    ``grow N``: hold N connections to each system (the wiremesh ones subscribed);
    ``arm <system> <first> <count>``: count the arrivals of messages first..first+count-1;
    ``report``: what the armed round saw."""
    raise_nofile(NOFILE)
    loop = asyncio.get_running_loop()
    tallies = {name: Tally() for name in SYSTEMS}
    held: dict[str, list[Subscriber]] = {name: [] for name in SYSTEMS}
    window = asyncio.Semaphore(200)
    subscribe = json.dumps({"wm": "subscribe", "channel": CHANNEL, "id": 1}).encode()
    paths = {WIREMESH: "/ws/feed", RAW: "/"}
    tokens = {WIREMESH: token, RAW: ""}
    armed = WIREMESH
    cpu = 0

    async def connect(name: str, i: int) -> Subscriber | None:
        request = upgrade_request(ports[name], paths[name], tokens[name])
        return await open_client(
            lambda: Subscriber(request, subscribe if name == WIREMESH else None, tallies[name]),
            ports[name],
            f"127.0.{10 + index}.{2 + i // PER_ADDRESS}",
            window,
        )

    read = sys.stdin.readline
    while line := await loop.run_in_executor(None, read):
        words = line.split()
        answer: dict[str, Any]
        if words[0] == "grow":
            count, started = int(words[1]), time.perf_counter()
            answer = {}
            for name in SYSTEMS:
                failed = await grow(held[name], count, functools.partial(connect, name))
                answer[name] = {"opened": len(held[name]), "failed": failed}
            answer["seconds"] = time.perf_counter() - started
            settle_heap()
        elif words[0] == "arm":
            armed, first, count = words[1], int(words[2]), int(words[3])
            tallies[armed].arm(first, count, len(held[armed]))
            cpu = time.process_time_ns()
            answer = {"armed": armed}
        elif words[0] == "report":
            tally = tallies[armed]
            answer = {
                "received": tally.received,
                "expected": tally.expected * tally.count,
                "first_stamp": tally.first_stamp,
                "last_arrival": tally.last_arrival,
                "micros": base64.b64encode(tally.micros.tobytes()).decode(),
                "client_cpu_ms": (time.process_time_ns() - cpu) / 1e6,
            }
            tally.arm(0, 0, 0)
        else:
            raise ValueError(f"unknown command {line!r}")
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for name in SYSTEMS:
        for session in held[name]:
            if session.transport is not None:
                session.transport.close()


class ClientProcess:
    """A client process (this script with ``--client``), driven from this process's
    loop; it exits when its stdin closes. ``on_done`` gets each ``D <number>``."""

    def __init__(self, index: int, ports: dict[str, int], token: str) -> None:
        self.index = index
        self.args = [sys.executable, __file__, "--client", str(index)]
        self.args += ["--ports", json.dumps(ports)]
        self.env = {**os.environ, "WM_TOKEN": token}
        self.proc: asyncio.subprocess.Process | None = None
        self.answers: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.on_done: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            limit=1 << 28,  # a report's line carries every delivery's time
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line.startswith(b"D "):
                if self.on_done is not None:
                    self.on_done(int(line[2:]))
            else:
                self.answers.put_nowait(json.loads(line))
        self.answers.put_nowait(None)

    async def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            answer = await asyncio.wait_for(self.answers.get(), timeout)
        except TimeoutError:
            raise RuntimeError(f"client {self.index}: no answer to {command!r}") from None
        if answer is None:
            raise RuntimeError(f"client {self.index} exited with {await self.proc.wait()}")
        return answer

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    counts: tuple[int, ...]
    messages: dict[int, int]  # messages per throughput round, per N
    paced: dict[int, int]  # messages per paced round (one in flight), per N
    rounds: int  # measured rounds per system and N
    recoveries: int
    quick: bool = False

    def messages_at(self, count: int) -> int:
        if count in self.messages:
            return self.messages[count]
        # about 300,000 deliveries a round, 20 to 400 messages
        return max(20, min(400, 300_000 // count))

    def paced_at(self, count: int) -> int:
        if count in self.paced:
            return self.paced[count]
        return max(10, min(100, 150_000 // count))

    def window_at(self, count: int) -> int:
        return max(4, WINDOW_DELIVERIES // count)


FULL = Settings(
    counts=(1_000, 10_000),
    messages={1_000: 300, 10_000: 30},
    paced={1_000: 60, 10_000: 15},
    rounds=3,
    recoveries=20,
)
QUICK = Settings(
    counts=(100, 300),
    messages={100: 100, 300: 30},
    paced={100: 20, 300: 10},
    rounds=2,
    recoveries=5,
    quick=True,
)


@dataclass
class Figures:
    """One system's measured rounds at one N."""

    rates: list[float] = field(default_factory=list)  # deliveries per second, per round
    ratios: list[float] = field(default_factory=list)  # per round, against raw's
    #: each delivery's time (µs) in the paced rounds, and in the throughput rounds
    micros: array.array[int] = field(default_factory=lambda: array.array("I"))
    loaded_micros: array.array[int] = field(default_factory=lambda: array.array("I"))
    client_cpu_ms: float = 0.0  # throughput rounds
    server_ticks: int = 0
    deliveries: int = 0
    _sorted: dict[str, list[int]] = field(default_factory=dict)

    def p_ms(self, q: float, *, loaded: bool = False) -> float:
        which = "loaded" if loaded else "paced"
        if which not in self._sorted:
            self._sorted[which] = sorted(self.loaded_micros if loaded else self.micros)
        return round(percentile(self._sorted[which], q, presorted=True) / 1000, 3)

    def rate(self) -> float:
        return round(median(self.rates), 1)

    def server_cpu_us(self) -> float:
        if not self.deliveries:
            return math.nan
        return round(self.server_ticks * TICK * 1000 / self.deliveries, 2)

    def client_cpu_us(self) -> float:
        if not self.deliveries:
            return math.nan
        return round(self.client_cpu_ms * 1000 / self.deliveries, 2)


class Bench:
    """This process's side: the control sessions, the clients, the rounds."""

    def __init__(self, settings: Settings, servers: dict[str, dict[str, Any]]) -> None:
        self.settings = settings
        self.servers = servers
        self.gateways = [servers["gateway0"], servers["gateway1"]]
        self.clients = [
            ClientProcess(k, {WIREMESH: gw["port"], RAW: servers["raw"]["port"]}, gw["token"])
            for k, gw in enumerate(self.gateways)
        ]
        self.control: dict[str, Any] = {}
        self.readers: list[asyncio.Task[None]] = []
        self.replies: dict[str, asyncio.Queue[bytes]] = {n: asyncio.Queue() for n in SYSTEMS}
        self.finished: asyncio.Queue[int] = asyncio.Queue()
        self.done_at: dict[int, int] = {}
        self.pids = {
            WIREMESH: [
                servers["gateway0"]["pid"],
                servers["gateway1"]["pid"],
                servers["node"]["pid"],
            ],
            RAW: [servers["raw"]["pid"]],
        }
        self.number = 0
        self.lost = dict.fromkeys(SYSTEMS, 0)
        self.failed = 0
        self.figures: dict[int, dict[str, Figures]] = {}
        self.recovery_ms: list[float] = []
        self.recovered_all = True

    async def open_controls(self) -> None:
        from websockets.asyncio.client import connect

        gateway = self.gateways[0]
        self.control[WIREMESH] = await connect(
            f"ws://127.0.0.1:{gateway['port']}/ws/feed",
            additional_headers={"Authorization": f"Bearer {gateway['control_token']}"},
            compression=None,
            ping_interval=None,
        )
        self.control[RAW] = await connect(
            f"ws://127.0.0.1:{self.servers['raw']['port']}/control",
            compression=None,
            ping_interval=None,
        )
        self.readers = [asyncio.create_task(self._replies(name)) for name in SYSTEMS]

    async def _replies(self, name: str) -> None:
        with contextlib.suppress(Exception):
            async for message in self.control[name]:
                self.replies[name].put_nowait(message)

    async def publish(self, name: str, number: int) -> None:
        await self.control[name].send(b"P" + number.to_bytes(4, "big"))

    def _done(self, number: int) -> None:
        got = self.done_at[number] = self.done_at.get(number, 0) + 1
        if got == len(self.clients):
            del self.done_at[number]
            self.finished.put_nowait(number)

    # ------------------------------------------------------------------ recovery

    async def recovery(self) -> None:
        """Disconnect, miss 100, reconnect on the other gateway and subscribe with
        ``since``: the time from that subscribe to holding all 100, R times."""
        from websockets.asyncio.client import connect

        async def session(gateway: dict[str, Any]) -> Any:
            return await connect(
                f"ws://127.0.0.1:{gateway['port']}/ws/feed",
                additional_headers={"Authorization": f"Bearer {gateway['token']}"},
                compression=None,
                ping_interval=None,
            )

        async def answer(ws: Any) -> dict[str, Any]:
            async with asyncio.timeout(10):
                while True:
                    message = await ws.recv()
                    if isinstance(message, str) and message.startswith('{"wm":"subscribed"'):
                        found: dict[str, Any] = json.loads(message)
                        return found

        ws = await session(self.gateways[0])
        await ws.send(json.dumps({"wm": "subscribe", "channel": RECOVERY_CHANNEL, "id": 1}))
        first = await answer(ws)
        since = {"offset": first["offset"], "epoch": first["epoch"]}
        await ws.close()
        for rep in range(self.settings.recoveries):
            await self.control[WIREMESH].send(b"R" + RECOVERY_MISSED.to_bytes(4, "big"))
            await asyncio.wait_for(self.replies[WIREMESH].get(), 30)
            ws = await session(self.gateways[(rep + 1) % 2])
            request = {"wm": "subscribe", "channel": RECOVERY_CHANNEL, "id": 1, "since": since}
            began = time.perf_counter_ns()
            await ws.send(json.dumps(request))
            got = await answer(ws)
            took = (time.perf_counter_ns() - began) / 1e6
            offsets = [p["offset"] for p in got["publications"]]
            if not got["recovered"] or offsets != list(
                range(since["offset"] + 1, since["offset"] + 1 + RECOVERY_MISSED)
            ):
                self.recovered_all = False
            self.recovery_ms.append(took)
            if offsets:
                since = {"offset": offsets[-1], "epoch": got["epoch"]}
            await ws.close()
        print(
            f"recovery of {RECOVERY_MISSED}: p50 {median(self.recovery_ms):.2f} ms over "
            f"{len(self.recovery_ms)}",
            file=sys.stderr,
        )

    # ------------------------------------------------------------------ rounds

    async def grow(self, count: int) -> None:
        answers = await asyncio.gather(
            *(c.ask(f"grow {count // len(self.clients)}", 600) for c in self.clients)
        )
        per_client = count // len(self.clients)
        for answer in answers:
            for name in SYSTEMS:
                self.failed += answer[name]["failed"] + per_client - answer[name]["opened"]
        # the raw server adds a connection to its set once its handler runs
        for _ in range(600):
            await self.control[RAW].send(b"n")
            reply = await asyncio.wait_for(self.replies[RAW].get(), 10)
            if int(reply.partition(b":")[2]) >= per_client * len(self.clients):
                break
            await asyncio.sleep(0.05)
        print(
            f"N={count:,}: {count:,} subscribers and {count:,} raw connections in "
            f"{max(a['seconds'] for a in answers):.1f} s",
            file=sys.stderr,
        )

    async def round(self, name: str, count: int, messages: int, window: int) -> dict[str, Any]:
        """``messages`` through ``name``, at most ``window`` in flight; the clients'
        reports."""
        first = self.number + 1
        self.number += messages
        await asyncio.gather(*(c.ask(f"arm {name} {first} {messages}", 30) for c in self.clients))
        while not self.finished.empty():
            self.finished.get_nowait()
        self.done_at.clear()
        window = min(messages, window)
        ticks = [cpu_ticks(pid) for pid in self.pids[name]]
        started = time.perf_counter()
        sent = finished = 0
        for _ in range(window):
            await self.publish(name, first + sent)
            sent += 1
        while finished < messages:
            try:
                await asyncio.wait_for(self.finished.get(), STALL)
            except TimeoutError:
                break  # what is missing counts as lost
            finished += 1
            if sent < messages:
                await self.publish(name, first + sent)
                sent += 1
        seconds = time.perf_counter() - started
        used = sum(cpu_ticks(pid) for pid in self.pids[name]) - sum(ticks)
        reports = await asyncio.gather(*(c.ask("report", 60) for c in self.clients))
        received = sum(r["received"] for r in reports)
        expected = sum(r["expected"] for r in reports)
        stamps = [r["first_stamp"] for r in reports if r["first_stamp"]]
        span = (max(r["last_arrival"] for r in reports) - min(stamps)) / 1e9 if stamps else 0
        micros = array.array("I")
        for r in reports:
            micros.frombytes(base64.b64decode(r["micros"]))
        return {
            "received": received,
            "expected": expected,
            "rate": received / span if span > 0 else math.nan,
            "micros": micros,
            "ticks": used,
            "client_cpu_ms": sum(r["client_cpu_ms"] for r in reports),
            "seconds": seconds,
        }

    async def size(self, count: int) -> None:
        await self.grow(count)
        messages, window = self.settings.messages_at(count), self.settings.window_at(count)
        paced = self.settings.paced_at(count)
        at = self.figures[count] = {name: Figures() for name in SYSTEMS}
        for name in SYSTEMS:
            await self.round(name, count, max(2, messages // 5), window)
        for round_no in range(self.settings.rounds):
            order = SYSTEMS if round_no % 2 == 0 else SYSTEMS[::-1]
            got: dict[str, dict[str, Any]] = {}
            calm: dict[str, dict[str, Any]] = {}
            for name in order:
                for into, size, most in ((got, messages, window), (calm, paced, 1)):
                    into[name] = result = await self.round(name, count, size, most)
                    self.lost[name] += result["expected"] - result["received"]
                    await asyncio.sleep(0.1)  # let the servers finish what a round left
            for name in SYSTEMS:
                result, figure = got[name], at[name]
                figure.rates.append(result["rate"])
                figure.ratios.append(ratio(result["rate"], got[RAW]["rate"]))
                figure.loaded_micros.extend(result["micros"])
                figure.micros.extend(calm[name]["micros"])
                figure.server_ticks += result["ticks"]
                figure.client_cpu_ms += result["client_cpu_ms"]
                figure.deliveries += result["received"]
            print(
                f"N={count:,} round {round_no + 1}/{self.settings.rounds}: "
                + ", ".join(
                    f"{name} {got[name]['rate']:,.0f} deliveries/s "
                    f"({got[name]['seconds']:.1f} s), paced p99 "
                    f"{percentile(calm[name]['micros'], 99) / 1000:.1f} ms"
                    for name in SYSTEMS
                ),
                file=sys.stderr,
            )

    async def run(self) -> None:
        for c in self.clients:
            c.on_done = self._done
            await c.start()
        try:
            await self.open_controls()
            await self.recovery()
            for count in self.settings.counts:
                await self.size(count)
        finally:
            for name in SYSTEMS:
                with contextlib.suppress(Exception):
                    await self.control[name].close()
            await asyncio.gather(*(c.stop() for c in self.clients))


def measure(settings: Settings) -> dict[str, Any]:
    loadavg_start = os.getloadavg()[0]
    began = time.monotonic()
    node = ServerProcess([__file__, "--serve", "node"], name="node")
    raw = ServerProcess([__file__, "--serve", "raw"], name="raw")
    with node, raw:
        registry = node.info["registry"]
        gateways = [
            ServerProcess(
                [__file__, "--serve", "gateway", "--registry", registry],
                name=f"gateway {k}",
                timeout=60,
            )
            for k in range(2)
        ]
        with gateways[0], gateways[1]:
            servers = {
                "node": node.info,
                "raw": raw.info,
                "gateway0": gateways[0].info,
                "gateway1": gateways[1].info,
            }
            print(
                "pids: " + ", ".join(f"{k} {v['pid']}" for k, v in servers.items()),
                file=sys.stderr,
            )
            bench = Bench(settings, servers)
            run_on("uvloop", bench.run())
    return report(settings, bench, loadavg_start, began)


def report(settings: Settings, bench: Bench, loadavg_start: float, began: float) -> dict[str, Any]:
    counts = list(settings.counts)
    figures = bench.figures
    rows = []
    for count in counts:
        for name in SYSTEMS:
            figure = figures[count][name]
            rows.append(
                [
                    f"{count:,} subscribers, {LABEL[name]}",
                    figure.rate(),
                    median(figure.ratios) if name == WIREMESH else "",
                    figure.p_ms(50),
                    figure.p_ms(99),
                    figure.p_ms(50, loaded=True),
                    figure.p_ms(99, loaded=True),
                    figure.server_cpu_us(),
                    figure.client_cpu_us(),
                    settings.window_at(count),
                ]
            )
    print_table(
        "one channel, one publisher, N subscribers (wiremesh: on two gateways)",
        [
            "N, system",
            "deliveries/s",
            "ratio vs raw",
            "p50 ms",
            "p99 ms",
            "loaded p50 ms",
            "loaded p99 ms",
            "server CPU µs/delivery",
            "client CPU µs/delivery",
            "window",
        ],
        rows,
        note=f"per system and N, {settings.rounds} rounds (systems alternated) of a throughput "
        "run (" + ", ".join(f"{settings.messages_at(c)}" for c in counts) + " messages, at "
        "most `window` in flight) and a paced run ("
        + ", ".join(f"{settings.paced_at(c)}" for c in counts)
        + " messages, one in flight); deliveries/s: a throughput run's deliveries over its "
        "first publication to its last arrival, median of rounds; ratio: median of per-round "
        "ratios (target >= 0.5 at 10,000); p50/p99: publish (stamped by the node, or the raw "
        "server) to each subscriber's arrival, over every delivery of the paced runs (target "
        "p99 <= 200 ms at 10,000); loaded: the same in the throughput runs (wiremesh queues "
        "after the stamp, raw before it: not comparable); CPU: per delivery in the "
        "throughput runs, server: both gateways and the node (raw: its server), /proc ticks",
    )
    print_table(
        "recovery after a reconnect",
        ["figure", "ms"],
        [
            [
                f"subscribe with since -> all {RECOVERY_MISSED} missed, p50",
                median(bench.recovery_ms),
            ],
            ["p99", percentile(bench.recovery_ms, 99)],
        ],
        note=f"{len(bench.recovery_ms)} reconnects, each on the other gateway",
    )
    top = counts[-1]
    head = figures[top]

    def by_subscribers(value: Any) -> list[dict[str, Any]]:
        return [{"subscribers": c, **{n: value(figures[c][n]) for n in SYSTEMS}} for c in counts]

    result: dict[str, Any] = {
        "quick": settings.quick,
        "rounds": settings.rounds,
        "counts": counts,
        "headline_subscribers": top,
        "messages_per_round": {str(c): settings.messages_at(c) for c in counts},
        "paced_messages_per_round": {str(c): settings.paced_at(c) for c in counts},
        "window_messages": {str(c): settings.window_at(c) for c in counts},
        "fanout_throughput_ratio": round(median(head[WIREMESH].ratios), 3),
        "delivery_p50_ms": head[WIREMESH].p_ms(50),
        "delivery_p99_ms": head[WIREMESH].p_ms(99),
        "raw_delivery_p50_ms": head[RAW].p_ms(50),
        "raw_delivery_p99_ms": head[RAW].p_ms(99),
        "loaded_delivery_p50_ms": head[WIREMESH].p_ms(50, loaded=True),
        "loaded_delivery_p99_ms": head[WIREMESH].p_ms(99, loaded=True),
        "raw_loaded_delivery_p50_ms": head[RAW].p_ms(50, loaded=True),
        "raw_loaded_delivery_p99_ms": head[RAW].p_ms(99, loaded=True),
        "wiremesh_deliveries_per_s": head[WIREMESH].rate(),
        "raw_deliveries_per_s": head[RAW].rate(),
        "deliveries_per_s_by_subscribers": by_subscribers(Figures.rate),
        "delivery_p50_ms_by_subscribers": by_subscribers(lambda f: f.p_ms(50)),
        "delivery_p99_ms_by_subscribers": by_subscribers(lambda f: f.p_ms(99)),
        "server_cpu_us_per_delivery_by_subscribers": by_subscribers(Figures.server_cpu_us),
        "client_cpu_us_per_delivery": {
            str(c): {n: figures[c][n].client_cpu_us() for n in SYSTEMS} for c in counts
        },
        "recovery_p50_ms": round(median(bench.recovery_ms), 3),
        "recovery_p99_ms": round(percentile(bench.recovery_ms, 99), 3),
        "recovery_missed": RECOVERY_MISSED,
        "recoveries": len(bench.recovery_ms),
        "recovered_all": bench.recovered_all,
        "lost": bench.lost[WIREMESH],
        "raw_lost": bench.lost[RAW],
        "failed": bench.failed,
        **run_context(loadavg_start, began),
    }
    for count in counts:
        result[f"fanout_throughput_ratio_{count}"] = round(
            median(figures[count][WIREMESH].ratios), 3
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 and 1,000 (smoke test)")
    parser.add_argument("--counts", help="subscriber counts, comma-separated (even numbers)")
    parser.add_argument("--rounds", type=int, help="measured rounds per system and N")
    parser.add_argument("--messages", type=int, help="messages per round at every N")
    parser.add_argument("--serve", choices=("node", "gateway", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
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
    if args.client is not None:
        run_on("uvloop", client(args.client, json.loads(args.ports), os.environ["WM_TOKEN"]))
        return 0
    install_signal_exit()
    settings = QUICK if args.quick else FULL
    if args.counts or args.rounds or args.messages:
        counts = tuple(int(c) for c in args.counts.split(",")) if args.counts else settings.counts
        messages = dict.fromkeys(counts, args.messages) if args.messages else settings.messages
        settings = Settings(
            counts,
            messages,
            settings.paced,
            args.rounds or settings.rounds,
            settings.recoveries,
            settings.quick,
        )
    print_result(measure(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
