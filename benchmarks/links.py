"""wiremesh mesh links against raw grpc.aio, side by side in the same run.

    .venv/bin/python benchmarks/links.py            # the full run (under 2 minutes)
    .venv/bin/python benchmarks/links.py --quick    # a short run (smoke test, < 25 s)

Three kinds of server process, spawned with ``sys.executable`` (grpc.aio in each, every
process, the raw peers' and this one included, on the loop wiremesh's processes choose:
uvloop when it is installed, the fast configuration, else asyncio's default loop; the
RESULT's ``loop`` says which):

- *wiremesh*: an embedded registry, a node of ``Echo``, a node of ``Sink`` (which
  subscribes to the benchmark's topic and counts what arrives) and a node of
  ``Streamer`` (a server-streaming ``items`` of 64 B items, a client-streaming ``upload``
  that counts the bytes of the chunks it reads);
- *fan*: the eight nodes of ``Fan`` that multicasts go to (one process by default,
  ``--fan-processes`` spreads them);
- *wide*: the nodes of ``Wide`` (32, in one process) that the multicast curve goes to, 1,
  2, 4, 8, 16 and 32 of them (``nodes=``), against a gather of as many raw unary calls;
- *raw*: one grpc.aio server, on 32 ports (one per node), with generic handlers and no
  (de)serializers: unary ``/bench.Raw/Echo``, bidi ``/bench.Raw/Pong`` (answers each
  message), bidi ``/bench.Raw/Sink`` (counts the messages it reads), unary-stream
  ``/bench.Raw/Items`` (writes as many 64 B items as asked, one message per ``write``)
  and stream-unary ``/bench.Raw/Bulk`` (counts the bytes of the chunks it reads).

This process is the client of all of them, and hosts the publishing node. With 64 B
payloads it measures:

1. **calls**: ``MeshClient.call`` (over its mesh link, the default) against raw unary
   grpc.aio: p50 of sequential calls, and calls/s with 64 in flight;
2. **publish**: the publishing node's ``publish`` to the ``Sink`` node against a raw
   grpc.aio bidi stream written one message per ``write``: messages received per second
   (counted by the receiver, up to the arrival of the last one);
3. **multicast**: ``MeshClient.multicast(..., mode="all")`` to the eight ``Fan`` nodes
   against what a user writes without wiremesh (``asyncio.gather`` over one raw grpc.aio
   unary stub per server, eight servers) and against the raw fan-out floor (eight bidi
   pings at once, one per server): p50 of sequential requests. Against one
   ``MeshClient.call`` to one fan node too (``multicast_p50_vs_unicast``);
4. **streams**: ``MeshClient.stream`` of ``streamer.items`` (64 B items, batched on the
   wire) against raw ``/bench.Raw/Items`` (one item per message): items received per
   second, from the call to the last item (``stream_ratio``); and an upload of 100 MB
   in 64 KiB chunks, ``streamer.upload`` against raw ``/bench.Raw/Bulk`` (one chunk per
   ``write``): MB per second, from the call to its answer (``bulk_transfer_ratio``);
5. **how multicast grows**, after the rounds: ``multicast(..., nodes=...)`` to 1, 2, 4, 8,
   16 and 32 ``Wide`` nodes against a gather of as many raw unary calls (1, 2 and 4 in
   the quick run): ``multicast_p50_us_by_nodes``, drawn by ``make bench``.

For context (no target): a raw bidi ping-pong (the least any request/reply over one
gRPC stream costs), and the same ping-pong on eight streams at once against one (what a
gather-all over eight streams costs in grpc.aio itself, before wiremesh adds anything).

Each round measures every pair in A-B-B-A slices; every figure is the median over the
rounds, every ratio the median of the per-round ratios. The last line printed is
``RESULT {json}``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import itertools
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# this folder goes last on the path: it holds http.py (the HTTP door's benchmark), which
# must not shadow the standard library's http for the libraries imported here
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

# wiremesh before grpc: grpc then runs with the settings wiremesh chooses (see
# wiremesh.transport.grpc_core) in this process and, through the environment it sets, in
# every server process this benchmark starts, the raw peers' included
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
    ratio,
    run_on,
    serve_nodes,
    serve_until_stopped,
    settle_heap,
    wiremesh_loop,
)
from rpc import latency_slice, symmetric, throughput_slice  # noqa: E402

from wiremesh import Context, Service, rpc, subscribe  # noqa: E402

RAW_SERVICE = "bench.Raw"
RAW_ECHO = f"/{RAW_SERVICE}/Echo"
RAW_PONG = f"/{RAW_SERVICE}/Pong"
RAW_SINK = f"/{RAW_SERVICE}/Sink"
RAW_ITEMS = f"/{RAW_SERVICE}/Items"
RAW_BULK = f"/{RAW_SERVICE}/Bulk"
PAYLOAD_BYTES = 64
#: streams: each item of the item stream (64 B), and each chunk of the bulk transfer
STREAM_ITEM = bytes(range(PAYLOAD_BYTES))
CHUNK = bytes(range(256)) * 256  # 64 KiB
MB = 1024 * 1024  # bulk figures are in MB of 2**20 bytes (100 MB = 1,600 chunks)
#: a stream's timeout (a bulk transfer on a busy machine takes seconds)
STREAM_TIMEOUT = 120.0
FAN_NODES = 8
#: how multicast grows: the node counts of the curve (``wide`` nodes, one process), and of
#: the quick run's
CURVE_NODES = (1, 2, 4, 8, 16, 32)
QUICK_CURVE_NODES = (1, 2, 4)
#: the processes the fan nodes run in by default (FAN_NODES / processes nodes each)
FAN_PROCESSES = 1
TOPIC = "bench.sink"
INFLIGHT = 64  # calls in flight for throughput (as in rpc.py)
#: the publisher yields to the event loop after this many publishes ...
PUBLISH_BURST = 64
#: ... and waits while its link holds this many frames not yet written (at most once)
PUBLISH_HIGH_WATER = 1024
#: a raw receiver's answer: messages counted, ``time.monotonic()`` of the last one
_COUNT = struct.Struct("!Qd")
#: the raw item stream's request (how many items) and the raw bulk upload's answer (bytes)
_SIZE = struct.Struct("!Q")

Call = Callable[[bytes], Awaitable[Any]]


class Echo(Service):
    name = "echo"

    @rpc(idempotent=True)
    async def echo(self, ctx: Context, data: bytes) -> bytes:
        return data


class Fan(Service):
    name = "fan"

    @rpc(idempotent=True)
    async def echo(self, ctx: Context, data: bytes) -> bytes:
        return data


class Wide(Fan):
    """The nodes of the multicast curve: up to ``max(CURVE_NODES)``."""

    name = "wide"


SERVICES: dict[str, type[Service]] = {"fan": Fan, "wide": Wide}


class Counter:
    """Messages received: how many, and when the last one arrived (``time.monotonic``:
    one clock for every process of the machine, so the sender can subtract its own)."""

    def __init__(self) -> None:
        self.count = 0
        self.last_at = 0.0

    def hit(self) -> None:
        self.count += 1
        self.last_at = time.monotonic()

    def take(self) -> tuple[int, float]:
        answer = (self.count, self.last_at)
        self.count, self.last_at = 0, 0.0
        return answer

    async def settle(self, expected: int, quiet: float = 0.05, limit: float = 5.0) -> list[Any]:
        """Once ``expected`` arrived (or nothing more for ``quiet`` s): the count and the
        time of the last one, and start counting again."""
        began = since = time.monotonic()
        seen = self.count
        while self.count < expected and time.monotonic() - began < limit:
            await asyncio.sleep(0.001)
            if self.count != seen:
                seen, since = self.count, time.monotonic()
            elif time.monotonic() - since > quiet:
                break
        return list(self.take())


RECEIVED = Counter()


class Sink(Service):
    name = "sink"

    @subscribe(TOPIC)
    async def on_message(self, ctx: Context, data: bytes) -> None:
        RECEIVED.hit()

    @rpc
    async def received(self, ctx: Context, expected: int) -> list[Any]:
        """``[count, last_at]`` of the messages received since the last ask."""
        return await RECEIVED.settle(expected)


class Streamer(Service):
    """Streams: 64 B items to the caller, and a bulk upload whose bytes it counts."""

    name = "streamer"

    @rpc
    async def items(self, ctx: Context, count: int) -> AsyncIterator[bytes]:
        item = STREAM_ITEM
        for _ in range(count):
            yield item

    @rpc
    async def upload(self, ctx: Context, chunks: AsyncIterator[bytes]) -> int:
        size = 0
        async for chunk in chunks:
            size += len(chunk)
        return size


class Pub(Service):
    """The publishing node (it serves nothing the benchmark calls)."""

    name = "pub"

    @rpc
    async def ping(self, ctx: Context) -> None:
        return None


# ---------------------------------------------------------------------------- servers


async def serve_wiremesh() -> None:
    await serve_nodes(Echo, Sink, Streamer)


async def serve_fan(registry: str, count: int, service: type[Service] = Fan) -> None:
    from wiremesh.runtime.node import Node

    data_dir = Path(tempfile.mkdtemp(prefix="wiremesh-bench-fan-"))
    nodes: list[Node] = []

    async def start() -> dict[str, Any]:
        for _ in range(count):
            node = Node(service, registry_address=registry, data_dir=data_dir)
            await node.start()
            nodes.append(node)
        return {"nodes": [n.node_id for n in nodes], "pid": os.getpid()}

    async def stop() -> None:
        try:
            await asyncio.gather(*(node.stop(0.5) for node in nodes), return_exceptions=True)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    await serve_until_stopped(start, stop)


async def serve_raw() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def pong(requests: Any, context: Any) -> Any:
        async for message in requests:
            yield message

    async def sink(requests: Any, context: Any) -> Any:
        # one message per read; an empty one asks for the count (and resets it)
        counter = Counter()
        async for message in requests:
            if message:
                counter.hit()
            else:
                yield _COUNT.pack(*counter.take())

    async def items(request: bytes, context: Any) -> None:
        # as many 64 B items as asked, one message per write
        (count,) = _SIZE.unpack(request)
        write, item = context.write, STREAM_ITEM
        for _ in range(count):
            await write(item)

    async def bulk(requests: Any, context: Any) -> bytes:
        # the bytes of the chunks it reads, one chunk per message
        size = 0
        async for chunk in requests:
            size += len(chunk)
        return _SIZE.pack(size)

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                RAW_SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Pong": grpc.stream_stream_rpc_method_handler(pong),
                    "Sink": grpc.stream_stream_rpc_method_handler(sink),
                    "Items": grpc.unary_stream_rpc_method_handler(items),
                    "Bulk": grpc.stream_unary_rpc_method_handler(bulk),
                },
            ),
        )
    )

    async def start() -> dict[str, Any]:
        # one port per node: N connections, as a client has to N nodes
        most = max(FAN_NODES, *CURVE_NODES)
        ports = [server.add_insecure_port("127.0.0.1:0") for _ in range(most)]
        await server.start()
        return {"addresses": [f"127.0.0.1:{port}" for port in ports], "pid": os.getpid()}

    async def stop() -> None:
        await server.stop(0.2)

    await serve_until_stopped(start, stop)


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    rounds: int
    calls: int  # sequential calls per system and round (in two slices)
    warmup_calls: int  # before each latency slice
    duration: float  # throughput seconds counted per system and round (in two slices)
    warmup_seconds: float  # before each throughput slice, not counted
    messages: int  # raw stream messages per round (in two slices)
    #: links publishes per raw message: each system publishes for about as long, so that
    #: both rates are steady ones (a few thousand messages over links take ~20 ms, where
    #: the first frame and the receiver's settling weigh as much as the rate)
    publish_scale: int
    fan_calls: int  # sequential multicasts (and unicasts) per round (in two slices)
    stream_items: int  # raw stream items per round (in two streams)
    #: links stream items per raw item: each system streams for about as long, so that
    #: both rates are steady ones (the call's start weighs little)
    stream_scale: int
    bulk_mb: int  # MB per bulk upload (64 KiB chunks); each system uploads twice a round
    budget: float  # seconds of measuring: no round starts that would likely end past it
    curve: tuple[int, ...]  # the node counts of the multicast curve
    curve_rounds: int  # rounds at each of them
    curve_calls: int  # sequential multicasts per system, round and node count


FULL = Settings(
    rounds=8,
    calls=600,
    warmup_calls=30,
    duration=0.8,
    warmup_seconds=0.1,
    messages=8_000,
    publish_scale=12,
    fan_calls=300,
    stream_items=20_000,
    stream_scale=20,
    bulk_mb=100,
    budget=90.0,
    curve=CURVE_NODES,
    curve_rounds=4,
    curve_calls=160,
)
QUICK = Settings(
    rounds=2,
    calls=100,
    warmup_calls=20,
    duration=0.2,
    warmup_seconds=0.05,
    messages=1_000,
    publish_scale=6,
    fan_calls=40,
    stream_items=2_000,
    stream_scale=20,
    bulk_mb=8,
    budget=5.0,
    curve=QUICK_CURVE_NODES,
    curve_rounds=2,
    curve_calls=20,
)

LINKS, RAW = "links", "raw"
MULTICAST, UNICAST = "multicast", "unicast"
PING = "ping"  # context: raw bidi ping-pong on one stream
PING8 = "ping8"  # context: the same on eight streams at once
PING_FAN = "ping_fan"  # the one-stream ping again, measured beside PING8
GATHER = "gather_unary"  # asyncio.gather over one raw unary stub per server
STREAM_LINKS, STREAM_RAW = "stream_links", "stream_raw"  # 64 B items, items/s
BULK_LINKS, BULK_RAW = "bulk_links", "bulk_raw"  # uploads of 64 KiB chunks, MB/s


@dataclass
class Figures:
    """Per-round figures of one system."""

    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)  # calls/s, messages/s, items/s, MB/s


# ---------------------------------------------------------------------------- systems


class Publisher:
    """A node of this process that publishes to the ``Sink`` node, as fast as it can."""

    def __init__(self, node: Any, sink: Any) -> None:
        self.node = node
        self.sink = sink  # the sink's NodeInfo
        self.dropped = 0

    async def send(self, payload: bytes, count: int) -> tuple[int, float]:
        """Publish ``count`` messages; how many the sink received, and the seconds from
        the first publish to the arrival of the last one."""
        link = self.node.links.to(self.sink)
        await link.hello.wait()
        publish = self.node.caller.publish
        began = time.monotonic()
        for i in range(count):
            if not await publish(TOPIC, payload, codec="raw"):
                self.dropped += 1
            if i % PUBLISH_BURST == PUBLISH_BURST - 1:
                # let the link write; a fast publisher waits for it rather than drop (the
                # link's queue has no event below its bound: poll it, one loop turn each)
                await asyncio.sleep(0)
                while link.queued >= PUBLISH_HIGH_WATER and not link.closed:  # noqa: ASYNC110
                    await asyncio.sleep(0)
        # asked over the same link, after the messages (order is kept per link)
        received, last_at = await self.node.caller.call(
            "sink.received", count, node=self.sink.node_id
        )
        return received, max(last_at - began, 1e-9)


class RawSink:
    """A raw grpc.aio bidi stream, written one message per ``write``."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(RAW_SINK, None, None)()

    async def send(self, payload: bytes, count: int) -> tuple[int, float]:
        write = self.call.write
        began = time.monotonic()
        for _ in range(count):
            await write(payload)
        await write(b"")  # how many arrived, and when the last one did
        received, last_at = _COUNT.unpack(await self.call.read())
        return received, max(last_at - began, 1e-9)

    def close(self) -> None:
        self.call.cancel()


class LinksStream:
    """wiremesh streams: ``MeshClient.stream`` to the ``Streamer`` node."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def items(self, count: int) -> tuple[int, float]:
        """Stream ``count`` items of 64 B from the node; how many arrived, and the seconds
        from the call to the arrival of the last one."""
        n = 0
        began = time.perf_counter()
        async for _ in self.client.stream("streamer.items", count, timeout=STREAM_TIMEOUT):
            n += 1
        return n, time.perf_counter() - began

    async def bulk(self, chunks: int) -> tuple[int, float]:
        """Upload ``chunks`` chunks of 64 KiB; the bytes the node counted, and the seconds
        from the call to its answer."""
        began = time.perf_counter()
        stream = self.client.stream(
            "streamer.upload", itertools.repeat(CHUNK, chunks), timeout=STREAM_TIMEOUT
        )
        [size] = [answer async for answer in stream]
        return size, time.perf_counter() - began

    async def sample(self, count: int) -> list[bytes]:
        return [item async for item in self.client.stream("streamer.items", count)]


class RawStream:
    """Raw grpc.aio streams: unary-stream ``Items`` (one 64 B item per message) and
    stream-unary ``Bulk`` (one 64 KiB chunk per ``write``)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.items_stub: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            RAW_ITEMS, None, None
        )
        self.bulk_stub: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
            RAW_BULK, None, None
        )

    async def items(self, count: int) -> tuple[int, float]:
        n = 0
        began = time.perf_counter()
        async for _ in self.items_stub(_SIZE.pack(count)):
            n += 1
        return n, time.perf_counter() - began

    async def bulk(self, chunks: int) -> tuple[int, float]:
        began = time.perf_counter()
        call = self.bulk_stub()
        write = call.write
        for _ in range(chunks):
            await write(CHUNK)
        await call.done_writing()
        (size,) = _SIZE.unpack(await call)
        return size, time.perf_counter() - began

    async def sample(self, count: int) -> list[bytes]:
        return [item async for item in self.items_stub(_SIZE.pack(count))]


class RawPing:
    """Raw bidi ping-pong: write one message on each stream, wait for every answer."""

    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self.streams = [channel.stream_stream(RAW_PONG, None, None)() for channel in channels]

    async def _one(self, stream: Any, payload: bytes) -> bytes:
        await stream.write(payload)
        answer: bytes = await stream.read()
        return answer

    async def __call__(self, payload: bytes) -> Any:
        if len(self.streams) == 1:
            return await self._one(self.streams[0], payload)
        return await asyncio.gather(*(self._one(stream, payload) for stream in self.streams))

    def close(self) -> None:
        for stream in self.streams:
            stream.cancel()


class GatherUnary:
    """A multicast as a user writes it without wiremesh: ``asyncio.gather`` over one
    grpc.aio unary stub per server."""

    def __init__(self, channels: list[grpc.aio.Channel]) -> None:
        self.stubs: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
            channel.unary_unary(RAW_ECHO, None, None) for channel in channels
        ]

    async def __call__(self, payload: bytes) -> list[bytes]:
        return list(await asyncio.gather(*(stub(payload) for stub in self.stubs)))


class MulticastAll:
    """A multicast to every node of ``target``'s service (or to the ``nodes`` listed),
    each of the ``expected`` answers checked."""

    def __init__(
        self, client: Any, target: str, expected: int, nodes: list[str] | None = None
    ) -> None:
        self.client = client
        self.target = target
        self.expected = expected
        self.nodes = nodes

    async def __call__(self, payload: bytes) -> dict[str, Any]:
        result = await self.client.multicast(self.target, payload, mode="all", nodes=self.nodes)
        values: dict[str, Any] = result.values
        if len(values) != self.expected:
            raise RuntimeError(f"multicast: {len(values)} answers of {self.expected}: {result!r}")
        return values


async def multicast_curve(
    client: Any, channels: list[grpc.aio.Channel], wide: list[str], settings: Settings
) -> list[dict[str, float]]:
    """Multicast p50 (µs) to N nodes against a gather of N raw unary calls, for each N of
    the curve: each point the median over ``curve_rounds`` rounds (A-B-B-A slices), with
    the median of the per-round ratios."""
    points = []
    payload = os.urandom(PAYLOAD_BYTES)
    for count in settings.curve:
        calls: dict[str, Call] = {
            MULTICAST: MulticastAll(client, "wide.echo", count, wide[:count]),
            GATHER: GatherUnary(channels[:count]),
        }
        for call in calls.values():
            for _ in range(settings.warmup_calls):
                await call(payload)
        figures = {name: Figures() for name in calls}
        for round_no in range(settings.curve_rounds):
            await latency_pair(
                calls,
                [MULTICAST, GATHER],
                figures,
                payload,
                settings.curve_calls,
                settings.warmup_calls // 2,
                round_no % 2 == 1,
            )
        ours, theirs = figures[MULTICAST].p50_us, figures[GATHER].p50_us
        points.append(
            {
                "nodes": count,
                "wiremesh": round(median(ours), 1),
                "gather_unary": round(median(theirs), 1),
                "ratio": paired(ours, theirs),
            }
        )
        print(
            f"multicast curve, {count} nodes: p50 {points[-1]['wiremesh']:.0f} vs "
            f"{points[-1]['gather_unary']:.0f} µs (gather of raw unary)",
            file=sys.stderr,
            flush=True,
        )
    return points


# ---------------------------------------------------------------------------- measuring


def add_latency(figures: Figures, samples: list[int]) -> None:
    samples.sort()
    figures.p50_us.append(percentile(samples, 50, presorted=True) / 1000)
    figures.p99_us.append(percentile(samples, 99, presorted=True) / 1000)


async def latency_pair(
    calls: dict[str, Call],
    names: list[str],
    figures: dict[str, Figures],
    payload: bytes,
    count: int,
    warmup: int,
    flip: bool,
) -> None:
    samples: dict[str, list[int]] = {name: [] for name in names}
    for name in symmetric(names, flip):
        gc.collect()
        samples[name] += await latency_slice(calls[name], payload, count // 2, warmup)
    for name, values in samples.items():
        add_latency(figures[name], values)


async def one_round(
    calls: dict[str, Call],
    publishers: dict[str, Any],
    streams: dict[str, Any],
    payload: bytes,
    settings: Settings,
    round_no: int,
    figures: dict[str, Figures],
) -> None:
    flip = round_no % 2 == 1
    # calls: latency (and, for context, a raw ping-pong over one stream), then throughput
    await latency_pair(
        calls, [LINKS, RAW, PING], figures, payload, settings.calls, settings.warmup_calls, flip
    )
    counted: dict[str, tuple[int, float]] = {LINKS: (0, 0.0), RAW: (0, 0.0)}
    for name in symmetric([LINKS, RAW], flip):
        gc.collect()
        n, seconds = await throughput_slice(
            calls[name], payload, settings.duration / 2, settings.warmup_seconds
        )
        counted[name] = (counted[name][0] + n, counted[name][1] + seconds)
    for name, (n, seconds) in counted.items():
        figures[name].rate.append(n / seconds)
    # publish: messages received per second
    received: dict[str, tuple[int, float]] = {LINKS: (0, 0.0), RAW: (0, 0.0)}
    for name in symmetric([LINKS, RAW], flip):
        gc.collect()
        count = settings.messages // 2 * (settings.publish_scale if name == LINKS else 1)
        n, seconds = await publishers[name].send(payload, count)
        received[name] = (received[name][0] + n, received[name][1] + seconds)
    for name, (n, seconds) in received.items():
        figures[f"publish_{name}"].rate.append(n / seconds)
    # streams: 64 B items received per second (until the last one), bulk upload MB/s
    streamed: dict[str, tuple[int, float]] = {LINKS: (0, 0.0), RAW: (0, 0.0)}
    for name in symmetric([LINKS, RAW], flip):
        gc.collect()
        count = settings.stream_items // 2 * (settings.stream_scale if name == LINKS else 1)
        n, seconds = await streams[name].items(count)
        if n != count:
            raise RuntimeError(f"{name}: {n} of {count} streamed items arrived")
        streamed[name] = (streamed[name][0] + n, streamed[name][1] + seconds)
    for name, (n, seconds) in streamed.items():
        figures[f"stream_{name}"].rate.append(n / seconds)
    chunks = settings.bulk_mb * MB // len(CHUNK)
    moved: dict[str, tuple[int, float]] = {LINKS: (0, 0.0), RAW: (0, 0.0)}
    for name in symmetric([LINKS, RAW], flip):
        gc.collect()
        size, seconds = await streams[name].bulk(chunks)
        if size != chunks * len(CHUNK):
            raise RuntimeError(f"{name}: {size} of {chunks * len(CHUNK)} bytes uploaded")
        moved[name] = (moved[name][0] + size, moved[name][1] + seconds)
    for name, (size, seconds) in moved.items():
        figures[f"bulk_{name}"].rate.append(size / MB / seconds)
    # multicast to every fan node against one unicast call, a gather of raw unary calls
    # and eight raw pings at once; raw eight streams against one
    await latency_pair(
        calls,
        [MULTICAST, UNICAST, GATHER, PING8, PING_FAN],
        figures,
        payload,
        settings.fan_calls,
        settings.warmup_calls // 2,
        flip,
    )


async def measure(
    mesh_info: dict[str, Any], raw_info: dict[str, Any], wide: list[str], settings: Settings
) -> dict[str, Any]:
    from wiremesh.client import MeshClient
    from wiremesh.runtime.node import Node

    client = MeshClient(mesh_info["registry"])
    data_dir = Path(tempfile.mkdtemp(prefix="wiremesh-bench-pub-"))
    publisher = Node(Pub, registry_address=mesh_info["registry"], data_dir=data_dir)
    channels = [grpc.aio.insecure_channel(address) for address in raw_info["addresses"]]
    raw_sink = RawSink(channels[0])
    ping, ping8 = RawPing(channels[:1]), RawPing(channels[:FAN_NODES])
    figures = {
        name: Figures()
        for name in (
            LINKS,
            RAW,
            PING,
            "publish_links",
            "publish_raw",
            MULTICAST,
            UNICAST,
            PING8,
            PING_FAN,
            GATHER,
            STREAM_LINKS,
            STREAM_RAW,
            BULK_LINKS,
            BULK_RAW,
        )
    }
    rounds = 0
    try:
        await client.start()
        await publisher.start()

        def ready(snapshot: Any) -> bool:
            return (
                len(snapshot.serving("fan")) == FAN_NODES
                and len(snapshot.serving("wide")) == len(wide)
                and len(snapshot.serving("echo")) == 1
                and len(snapshot.serving("sink")) == 1
                and len(snapshot.serving("streamer")) == 1
            )

        await asyncio.gather(
            client.view.wait_for(ready, 30.0), publisher.view.wait_for(ready, 30.0)
        )
        sink = publisher.view.snapshot.serving("sink")[0]
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channels[0].unary_unary(
            RAW_ECHO, None, None
        )
        calls: dict[str, Call] = {
            LINKS: functools.partial(client.call, "echo.echo"),
            RAW: stub,
            PING: ping,
            MULTICAST: MulticastAll(client, "fan.echo", FAN_NODES),
            UNICAST: functools.partial(client.call, "fan.echo"),
            PING8: ping8,
            PING_FAN: ping,
            GATHER: GatherUnary(channels[:FAN_NODES]),
        }
        publishers: dict[str, Any] = {LINKS: Publisher(publisher, sink), RAW: raw_sink}
        streams: dict[str, Any] = {LINKS: LinksStream(client), RAW: RawStream(channels[0])}
        payload = os.urandom(PAYLOAD_BYTES)

        # each answers, and answers right; then warm up
        for name, call in calls.items():
            answer = await call(payload)
            answers = (
                list(answer.values())
                if isinstance(answer, dict)
                else answer
                if isinstance(answer, list)
                else [answer]
            )
            if any(a != payload for a in answers):
                raise RuntimeError(f"{name} did not echo the payload")
            for _ in range(50):
                await call(payload)
        for name, pub in publishers.items():
            n, _ = await pub.send(payload, 500)
            if n != 500:
                raise RuntimeError(f"{name}: {n} of 500 published messages arrived")
        for name, streaming in streams.items():
            if await streaming.sample(3) != [STREAM_ITEM] * 3:
                raise RuntimeError(f"{name} did not stream the items")
            n, _ = await streaming.items(2000)
            size, _ = await streaming.bulk(32)
            if n != 2000 or size != 32 * len(CHUNK):
                raise RuntimeError(f"{name}: {n} of 2000 items, {size} of 2 MB arrived")

        settle_heap()
        began = time.perf_counter()
        for round_no in range(settings.rounds):
            elapsed = time.perf_counter() - began
            if rounds >= 2 and elapsed * (rounds + 1) / rounds > settings.budget:
                print(
                    f"stopping after {rounds} rounds: the machine is slow or busy "
                    f"(budget {settings.budget:g}s)",
                    file=sys.stderr,
                    flush=True,
                )
                break
            await one_round(calls, publishers, streams, payload, settings, round_no, figures)
            rounds += 1
            f = figures
            print(
                f"round {round_no + 1}/{settings.rounds}: call p50 "
                f"{f[LINKS].p50_us[-1]:.0f} vs {f[RAW].p50_us[-1]:.0f} µs, "
                f"{f[LINKS].rate[-1]:,.0f} vs {f[RAW].rate[-1]:,.0f} calls/s; publish "
                f"{f['publish_links'].rate[-1]:,.0f} vs {f['publish_raw'].rate[-1]:,.0f} "
                f"msg/s; multicast p50 {f[MULTICAST].p50_us[-1]:.0f} vs unicast "
                f"{f[UNICAST].p50_us[-1]:.0f} µs; stream {f[STREAM_LINKS].rate[-1]:,.0f} vs "
                f"{f[STREAM_RAW].rate[-1]:,.0f} items/s; bulk {f[BULK_LINKS].rate[-1]:,.0f} vs "
                f"{f[BULK_RAW].rate[-1]:,.0f} MB/s ({time.perf_counter() - began:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
        dropped = publishers[LINKS].dropped
        curve = await multicast_curve(client, channels, wide, settings)
    finally:
        raw_sink.close()
        ping.close()
        ping8.close()
        for channel in channels:
            await channel.close(None)
        await client.close()
        await publisher.stop(0.5)
        shutil.rmtree(data_dir, ignore_errors=True)
    result = summarize(figures, settings, rounds)
    result["publish_dropped"] = dropped
    result["multicast_p50_us_by_nodes"] = [
        {k: v for k, v in point.items() if k != "ratio"} for point in curve
    ]
    result["multicast_vs_gather_unary_by_nodes"] = [
        {"nodes": point["nodes"], "ratio": point["ratio"]} for point in curve
    ]
    print_table(
        "how multicast grows: p50 to N nodes (all answers) against a gather of N raw unary calls",
        ["nodes", "multicast p50 (µs)", "gather of raw unary p50 (µs)", "ratio"],
        [[p["nodes"], p["wiremesh"], p["gather_unary"], p["ratio"]] for p in curve],
        note=f"the wide nodes in one process; medians over {settings.curve_rounds} rounds of "
        f"{settings.curve_calls} multicasts per system, A-B-B-A slices",
    )
    return result


def paired(ours: list[float], theirs: list[float]) -> float:
    return round(median(ratio(a, b) for a, b in zip(ours, theirs, strict=True)), 3)


def summarize(figures: dict[str, Figures], settings: Settings, rounds: int) -> dict[str, Any]:
    f = figures
    pub, raw_pub = f["publish_links"], f["publish_raw"]
    stream, raw_stream = f[STREAM_LINKS], f[STREAM_RAW]
    bulk, raw_bulk = f[BULK_LINKS], f[BULK_RAW]

    def mid(values: list[float]) -> float:
        return round(median(values), 1)

    result: dict[str, Any] = {
        "rounds": rounds,
        "calls": settings.calls,
        "inflight": INFLIGHT,
        "duration_s": settings.duration,
        "messages": settings.messages,
        "publish_scale": settings.publish_scale,
        "fan_calls": settings.fan_calls,
        "fan_nodes": FAN_NODES,
        "stream_items": settings.stream_items,
        "stream_scale": settings.stream_scale,
        "bulk_mb": settings.bulk_mb,
        # the targets
        "call_p50_ratio": paired(f[LINKS].p50_us, f[RAW].p50_us),
        "call_throughput_ratio": paired(f[LINKS].rate, f[RAW].rate),
        "publish_ratio": paired(pub.rate, raw_pub.rate),
        "multicast_vs_gather_unary": paired(f[MULTICAST].p50_us, f[GATHER].p50_us),
        "multicast_vs_raw_fanout": paired(f[MULTICAST].p50_us, f[PING8].p50_us),
        "multicast_p50_vs_unicast": paired(f[MULTICAST].p50_us, f[UNICAST].p50_us),
        "stream_ratio": paired(stream.rate, raw_stream.rate),
        "bulk_transfer_ratio": paired(bulk.rate, raw_bulk.rate),
        # the figures behind them
        "links_call_p50_us": mid(f[LINKS].p50_us),
        "raw_call_p50_us": mid(f[RAW].p50_us),
        "links_call_p99_us": mid(f[LINKS].p99_us),
        "raw_call_p99_us": mid(f[RAW].p99_us),
        "links_call_rps": mid(f[LINKS].rate),
        "raw_call_rps": mid(f[RAW].rate),
        "links_publish_mps": mid(pub.rate),
        "raw_publish_mps": mid(raw_pub.rate),
        "multicast_p50_us": mid(f[MULTICAST].p50_us),
        "unicast_p50_us": mid(f[UNICAST].p50_us),
        "multicast_p99_us": mid(f[MULTICAST].p99_us),
        "unicast_p99_us": mid(f[UNICAST].p99_us),
        "gather_unary_p50_us": mid(f[GATHER].p50_us),
        "gather_unary_p99_us": mid(f[GATHER].p99_us),
        "stream_items_per_s": mid(stream.rate),
        "raw_stream_items_per_s": mid(raw_stream.rate),
        "bulk_mb_per_s": mid(bulk.rate),
        "raw_bulk_mb_per_s": mid(raw_bulk.rate),
        # context: what grpc.aio itself costs over one stream, and over eight at once
        "raw_ping_p50_us": mid(f[PING].p50_us),
        "call_p50_vs_raw_ping": paired(f[LINKS].p50_us, f[PING].p50_us),
        "raw_ping8_p50_us": mid(f[PING8].p50_us),
        "raw_ping8_vs_ping": paired(f[PING8].p50_us, f[PING_FAN].p50_us),
    }
    fan = f"{FAN_NODES} nodes"
    rows: list[list[Any]] = [
        [
            "call p50 (µs)",
            "links",
            mid(f[LINKS].p50_us),
            "raw unary",
            mid(f[RAW].p50_us),
            result["call_p50_ratio"],
        ],
        [
            "call p99 (µs)",
            "links",
            mid(f[LINKS].p99_us),
            "raw unary",
            mid(f[RAW].p99_us),
            paired(f[LINKS].p99_us, f[RAW].p99_us),
        ],
        [
            f"calls/s, {INFLIGHT} in flight",
            "links",
            mid(f[LINKS].rate),
            "raw unary",
            mid(f[RAW].rate),
            result["call_throughput_ratio"],
        ],
        [
            "publish, msg/s received",
            "node → node",
            mid(pub.rate),
            "raw bidi stream",
            mid(raw_pub.rate),
            result["publish_ratio"],
        ],
        [
            f"stream, {PAYLOAD_BYTES} B items/s received",
            "server stream",
            mid(stream.rate),
            "raw, 1 per message",
            mid(raw_stream.rate),
            result["stream_ratio"],
        ],
        [
            f"upload of {settings.bulk_mb} MB, MB/s",
            "client stream",
            mid(bulk.rate),
            "raw, 64 KiB chunks",
            mid(raw_bulk.rate),
            result["bulk_transfer_ratio"],
        ],
        [
            f"multicast p50 (µs), {fan}",
            "gather all",
            mid(f[MULTICAST].p50_us),
            "one unicast",
            mid(f[UNICAST].p50_us),
            result["multicast_p50_vs_unicast"],
        ],
        [
            f"multicast p50 (µs), {fan}",
            "gather all",
            mid(f[MULTICAST].p50_us),
            "gather of raw unary",
            mid(f[GATHER].p50_us),
            result["multicast_vs_gather_unary"],
        ],
        [
            f"multicast p50 (µs), {fan}",
            "gather all",
            mid(f[MULTICAST].p50_us),
            "raw fan-out (8 pings)",
            mid(f[PING8].p50_us),
            result["multicast_vs_raw_fanout"],
        ],
        [
            f"multicast p99 (µs), {fan}",
            "gather all",
            mid(f[MULTICAST].p99_us),
            "one unicast",
            mid(f[UNICAST].p99_us),
            paired(f[MULTICAST].p99_us, f[UNICAST].p99_us),
        ],
        [
            "[context] call p50 (µs)",
            "links",
            mid(f[LINKS].p50_us),
            "raw bidi ping",
            mid(f[PING].p50_us),
            result["call_p50_vs_raw_ping"],
        ],
        [
            f"[context] raw ping p50 (µs), {FAN_NODES} streams",
            "raw",
            mid(f[PING8].p50_us),
            "raw, 1 stream",
            mid(f[PING_FAN].p50_us),
            result["raw_ping8_vs_ping"],
        ],
    ]
    print_table(
        f"wiremesh mesh links vs raw grpc.aio ({PAYLOAD_BYTES} B payloads, loopback)",
        ["figure", "wiremesh", "", "peer", "", "ratio"],
        rows,
        note=(
            f"medians over {rounds} rounds, each pair measured in A-B-B-A slices; per round "
            f"{settings.calls} sequential calls, {settings.duration:g}s of throughput, "
            f"{settings.messages} publishes, {settings.fan_calls} multicasts, "
            f"{settings.stream_items} streamed items ({settings.stream_scale}x as many over "
            f"links), two uploads of {settings.bulk_mb} MB in 64 KiB chunks; "
            "ratio = median of the per-round wiremesh/peer ratios"
        ),
    )
    return result


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 25 s)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--fan-processes",
        type=int,
        default=FAN_PROCESSES,
        choices=[n for n in range(1, FAN_NODES + 1) if FAN_NODES % n == 0],
        help=f"processes the {FAN_NODES} multicast nodes run in (default {FAN_PROCESSES})",
    )
    # internal: run as a server process
    parser.add_argument("--serve", choices=("wiremesh", "fan", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=FAN_NODES, help=argparse.SUPPRESS)
    parser.add_argument("--service", choices=tuple(SERVICES), default="fan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve == "wiremesh":
        run_on("wiremesh", serve_wiremesh())
        return 0
    if args.serve == "fan":
        run_on("wiremesh", serve_fan(args.registry, args.count, SERVICES[args.service]))
        return 0
    if args.serve == "raw":
        run_on("wiremesh", serve_raw())
        return 0

    install_signal_exit()
    settings = QUICK if args.quick else FULL
    if args.rounds:
        budget = settings.budget * args.rounds / settings.rounds
        settings = dataclasses.replace(settings, rounds=args.rounds, budget=budget)
    script = str(Path(__file__).resolve())
    servers: list[ServerProcess] = []
    try:
        mesh = ServerProcess([script, "--serve", "wiremesh"], name="wiremesh server")
        servers.append(mesh)
        mesh_info = mesh.start()
        per_process = FAN_NODES // args.fan_processes
        for i in range(args.fan_processes):
            fan_args = ["--serve", "fan", "--registry", mesh_info["registry"]]
            fan = ServerProcess(
                [script, *fan_args, "--count", str(per_process)], name=f"fan server {i + 1}"
            )
            servers.append(fan)
            fan.start()
        wide_args = ["--serve", "fan", "--service", "wide", "--registry", mesh_info["registry"]]
        wide = ServerProcess(
            [script, *wide_args, "--count", str(max(settings.curve))], name="wide server"
        )
        servers.append(wide)
        wide_nodes = wide.start()["nodes"]
        raw = ServerProcess([script, "--serve", "raw"], name="raw server")
        servers.append(raw)
        raw_info = raw.start()
        result = run_on("wiremesh", measure(mesh_info, raw_info, wide_nodes, settings))
    finally:
        for server in servers:
            server.stop()
    result["quick"] = bool(args.quick)
    result["loop"] = wiremesh_loop()
    result["fan_processes"] = args.fan_processes
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
