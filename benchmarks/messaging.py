"""Durable messaging: wiremesh on RabbitMQ against raw aio-pika and FastStream, same run.

    .venv/bin/python benchmarks/messaging.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/messaging.py --quick    # a short run (smoke test)
    .venv/bin/python benchmarks/messaging.py --systems embedded   # only these systems

Needs RabbitMQ on 127.0.0.1:5672 (guest/guest; ``--url`` for another), unless
``--systems`` leaves out every system that runs on it. Each system runs in this process,
publishing and consuming in the same event loop (uvloop when it is installed, as
wiremesh's processes choose; the embedded broker's process too), with 256 B messages and
the same number in flight (``--inflight``, 256 by default: that many publishers, each
waiting for its confirm before the next, and a consumer prefetch of as many):

- **wiremesh amqp**: a :class:`~wiremesh.testing.TestMesh` with one node of ``Sink``
  (``@on_event`` handler) on the ``amqp`` backend; ``mesh.emit`` of raw bytes, which
  returns once RabbitMQ confirmed; the handler counts;
- **raw aio-pika**: a topic exchange and a queue, ``exchange.publish`` on a channel with
  publisher confirms, a consumer that acks each message;
- **FastStream**: ``RabbitBroker`` with publisher confirms, ``broker.publish`` to an
  exchange, a ``@broker.subscriber`` on a queue bound to it (acked after the handler);
- **wiremesh embedded** (no peer): the same ``Sink`` on the embedded backend, whose broker
  runs in a process of its own, as under ``wiremesh run`` (where the supervisor hosts it).

Throughput is messages handled per second, from the first publish to the last handled
message. Latency is emit-to-handler of sequential emits (one in flight), p50. Each round
runs every system once (in rotating order); figures are medians over rounds, ratios the
medians of per-round ratios. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

# this folder goes last on the path: it holds http.py (the HTTP door's benchmark), which
# must not shadow the standard library's http for the libraries imported here
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
    serve_until_stopped,
    wiremesh_loop,
)

from wiremesh import Context, Service, on_event  # noqa: E402
from wiremesh.testing import TestMesh  # noqa: E402

URL = "amqp://guest:guest@127.0.0.1:5672/"
PAYLOAD = b"\x5a" * 256
TOPIC = "bench.tick"
INFLIGHT = 256


class Tally:
    """Messages handled: how many, when the last one was, and each one's arrival time."""

    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self.done = asyncio.Event()
        self.last_at = 0.0
        self.arrivals: dict[str, float] = {}
        self.track = False

    def reset(self, expected: int, *, track: bool = False) -> None:
        self.count, self.expected, self.last_at, self.track = 0, expected, 0.0, track
        self.arrivals = {}
        self.done = asyncio.Event()

    def hit(self, message_id: str | None = None) -> None:
        self.count += 1
        self.last_at = time.perf_counter()
        if self.track and message_id is not None:
            self.arrivals[message_id] = self.last_at
        if self.count >= self.expected:
            self.done.set()


TALLY = Tally()


class Sink(Service):
    name = "sink"

    @on_event(TOPIC, concurrency=64)
    async def tick(self, ctx: Context, data: bytes) -> None:
        TALLY.hit(ctx.message.id if ctx.message is not None else None)


# ---------------------------------------------------------------------------- systems


@dataclass
class System:
    """One system under test: ``emit(i)`` publishes message ``i`` and returns once the
    broker confirmed it (its id, for latency)."""

    name: str
    emit: Callable[[], Awaitable[str]]
    close: Callable[[], Awaitable[None]]


async def pump(emit: Callable[[], Awaitable[str]], count: int, inflight: int) -> None:
    left = count

    async def publisher() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await emit()

    await asyncio.gather(*(publisher() for _ in range(min(inflight, count))))


async def wiremesh_system(url: str, name: str, inflight: int) -> System:
    mesh = TestMesh(Sink, broker=url, prefetch=inflight, mesh_name=f"bench-{uuid.uuid4().hex[:8]}")
    await mesh.__aenter__()

    async def emit() -> str:
        return await mesh.emit(TOPIC, PAYLOAD, codec="raw")

    async def close() -> None:
        await mesh.__aexit__(None, None, None)
        if url.startswith("amqp"):
            await delete_mesh(url, mesh.mesh_name, ["event.sink.tick"])

    return System(name, emit, close)


async def delete_mesh(url: str, mesh: str, queues: list[str]) -> None:
    """Delete a mesh's documented names (docs/protocol.md, AMQP topology)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for queue in [*queues, "dead"]:
            await channel.queue_delete(f"wm.{mesh}.{queue}")
        for exchange in ("events", "commands", "dead", "delay"):
            await channel.exchange_delete(f"wm.{mesh}.{exchange}")
    finally:
        await connection.close()


async def aiopika_system(url: str, inflight: int) -> System:
    connection = await aio_pika.connect_robust(url)
    publishing = await connection.channel(publisher_confirms=True)
    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=inflight)
    name = f"bench.raw.{uuid.uuid4().hex[:8]}"
    exchange = await publishing.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await consuming.declare_queue(name, durable=True)
    await queue.bind(name, TOPIC)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        TALLY.hit(message.message_id)
        await message.ack()

    await queue.consume(on_message)

    async def emit() -> str:
        message_id = uuid.uuid4().hex
        await exchange.publish(
            aio_pika.Message(
                PAYLOAD, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            TOPIC,
        )
        return message_id

    async def close() -> None:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()

    return System("raw aio-pika", emit, close)


async def faststream_system(url: str, inflight: int) -> System:
    from faststream.rabbit import (
        Channel,
        ExchangeType,
        RabbitBroker,
        RabbitExchange,
        RabbitMessage,
        RabbitQueue,
    )

    broker = RabbitBroker(url, default_channel=Channel(prefetch_count=inflight), logger=None)
    name = f"bench.fs.{uuid.uuid4().hex[:8]}"
    exchange = RabbitExchange(name, type=ExchangeType.TOPIC, durable=True)
    queue = RabbitQueue(name, durable=True, routing_key=TOPIC)

    @broker.subscriber(queue, exchange)
    async def on_message(body: bytes, message: RabbitMessage) -> None:
        TALLY.hit(message.message_id)

    await broker.start()

    async def emit() -> str:
        message_id = uuid.uuid4().hex
        await broker.publish(
            PAYLOAD, exchange=exchange, routing_key=TOPIC, persist=True, message_id=message_id
        )
        return message_id

    async def close() -> None:
        await broker.stop()
        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
        await connection.close()

    return System("FastStream", emit, close)


# ---------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    rounds: int
    messages: int  # per system and round, for throughput
    warmup: int  # before each throughput run, not counted
    sequential: int  # sequential emits per system and round, for latency


FULL = Settings(rounds=5, messages=8_000, warmup=500, sequential=200)
QUICK = Settings(rounds=2, messages=600, warmup=100, sequential=30)


@dataclass
class Figures:
    rate: list[float] = field(default_factory=list)
    p50_us: list[float] = field(default_factory=list)


async def throughput(system: System, count: int, inflight: int) -> float:
    TALLY.reset(count)
    began = time.perf_counter()
    await pump(system.emit, count, inflight)
    async with asyncio.timeout(120):
        await TALLY.done.wait()
    return count / (TALLY.last_at - began)


async def latency(system: System, count: int) -> float:
    TALLY.reset(count, track=True)
    sent: dict[str, float] = {}
    for _ in range(count):
        began = time.perf_counter()
        message_id = await system.emit()
        sent[message_id] = began
        # the next emit waits for this one's arrival: one message in the system at a time
        async with asyncio.timeout(30):
            while message_id not in TALLY.arrivals:  # noqa: ASYNC110
                await asyncio.sleep(0)
    samples = sorted((TALLY.arrivals[i] - sent[i]) * 1e6 for i in sent)
    return percentile(samples, 50, presorted=True)


async def drain(count: int) -> None:
    async with asyncio.timeout(120):
        await TALLY.done.wait()
    del count


async def measure(system: System, figures: Figures, settings: Settings, inflight: int) -> None:
    TALLY.reset(settings.warmup)
    await pump(system.emit, settings.warmup, inflight)
    await drain(settings.warmup)
    figures.rate.append(await throughput(system, settings.messages, inflight))
    figures.p50_us.append(await latency(system, settings.sequential))


async def serve_broker() -> None:
    """The embedded broker alone, in this process (``--serve-broker``)."""
    import shutil
    import tempfile

    from wiremesh.messaging.broker_server import BrokerServer

    folder = Path(tempfile.mkdtemp(prefix="wiremesh-bench-broker-"))
    server = BrokerServer(folder / "broker.db")

    async def start() -> dict[str, Any]:
        await server.start()
        return {"url": server.url}

    async def stop() -> None:
        try:
            await server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    await serve_until_stopped(start, stop)


#: ``--systems`` names -> the systems' names in the tables
SYSTEMS = {
    "amqp": "wiremesh amqp",
    "aiopika": "raw aio-pika",
    "faststream": "FastStream",
    "embedded": "wiremesh embedded",
}


async def run(
    settings: Settings,
    url: str,
    embedded: str | None,
    inflight: int,
    quick: bool,
    chosen: list[str],
) -> dict[str, Any]:
    makers: dict[str, Callable[[], Awaitable[System]]] = {
        "wiremesh amqp": lambda: wiremesh_system(url, "wiremesh amqp", inflight),
        "raw aio-pika": lambda: aiopika_system(url, inflight),
        "FastStream": lambda: faststream_system(url, inflight),
        "wiremesh embedded": lambda: wiremesh_system(str(embedded), "wiremesh embedded", inflight),
    }
    wanted = {SYSTEMS[c] for c in chosen}
    systems = {name: await make() for name, make in makers.items() if name in wanted}
    # a system left out (``--systems``) has no figures: its keys are null
    figures = {name: Figures() for name in makers}
    names = list(systems)
    try:
        for r in range(settings.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                await measure(systems[name], figures[name], settings, inflight)
            print(
                f"round {r + 1}/{settings.rounds}: "
                + ", ".join(f"{n} {figures[n].rate[-1]:,.0f}/s" for n in names),
                file=sys.stderr,
                flush=True,
            )
    finally:
        for system in systems.values():
            with contextlib.suppress(Exception):
                await system.close()

    def per_round(a: str, b: str) -> float:
        return median(ratio(x, y) for x, y in zip(figures[a].rate, figures[b].rate, strict=True))

    wm, raw, fs, emb = "wiremesh amqp", "raw aio-pika", "FastStream", "wiremesh embedded"
    rows = [[name, median(f.rate), median(f.p50_us)] for name, f in figures.items() if f.rate]
    print_table(
        f"emit -> handler, {len(PAYLOAD)} B, {inflight} in flight, {settings.rounds} rounds",
        ["system", "msgs/s", "p50 emit->handler (us)"],
        rows,
    )
    print_table(
        "ratios (medians of per-round ratios)",
        ["ratio", "value", "target"],
        [
            ["amqp_vs_aiopika", per_round(wm, raw), ">= 1.0"],
            ["amqp_vs_faststream", per_round(wm, fs), ">= 1.5"],
        ],
    )
    return {
        "quick": quick,
        "loop": wiremesh_loop(),
        "rounds": settings.rounds,
        "inflight": inflight,
        "payload_bytes": len(PAYLOAD),
        "amqp_vs_aiopika": per_round(wm, raw),
        "amqp_vs_faststream": per_round(wm, fs),
        "amqp_msgs_per_s": median(figures[wm].rate),
        "aiopika_msgs_per_s": median(figures[raw].rate),
        "faststream_msgs_per_s": median(figures[fs].rate),
        "embedded_msgs_per_s": median(figures[emb].rate),
        "amqp_p50_us": median(figures[wm].p50_us),
        "aiopika_p50_us": median(figures[raw].p50_us),
        "faststream_p50_us": median(figures[fs].p50_us),
        "embedded_p50_us": median(figures[emb].p50_us),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--url", default=URL, help="RabbitMQ url (default: %(default)s)")
    parser.add_argument("--inflight", type=int, default=INFLIGHT)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="the systems to run, comma-separated (default: %(default)s); "
        "leaving out amqp, aiopika and faststream needs no RabbitMQ",
    )
    parser.add_argument("--serve-broker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown or not chosen:
        parser.error(f"--systems: choose among {', '.join(SYSTEMS)} (got {args.systems!r})")
    if args.serve_broker:  # internal: the embedded broker's own process
        run_on("wiremesh", serve_broker())
        return 0
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = Settings(args.rounds, settings.messages, settings.warmup, settings.sequential)
    install_signal_exit()
    logging.basicConfig(level=logging.ERROR)
    broker = ServerProcess([str(Path(__file__).resolve()), "--serve-broker"], name="broker")
    try:
        embedded = broker.start()["url"] if "embedded" in chosen else None
        result = run_on(
            "wiremesh", run(settings, args.url, embedded, args.inflight, args.quick, chosen)
        )
    finally:
        broker.stop()
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
