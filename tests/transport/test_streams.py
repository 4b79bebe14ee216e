"""Streaming calls between real nodes and from a plain grpcio client: each kind, typed
items, flow control with bounded memory, a reader that stops, a writer killed mid-stream,
deadlines, cancellation both ways, typed errors mid-stream, middleware, and the rules."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import pytest

from tests.fixtures.meshes import (
    PYTHON,
    WIREMESH,
    RunningMesh,
    eventually,
    mesh_client,
    serving,
    write_mesh,
)
from tests.fixtures.svc_streams import CHUNK, Item, Streams
from wiremesh import (
    ConfigError,
    Context,
    DeadlineExceeded,
    InvalidPayload,
    Invocation,
    MethodNotFound,
    Middleware,
    NotFound,
    PayloadTooLarge,
    Service,
    Unavailable,
    rpc,
)
from wiremesh.core.streams import frame, split_encode, stream_shapes, unframe
from wiremesh.service import ServiceSpec
from wiremesh.testing import TestMesh


def streams(mesh: TestMesh) -> Streams:
    instance: Streams = mesh.instance("streams")
    return instance


# ------------------------------------------------------------------ the three kinds


async def test_each_kind_streams_typed_items_between_nodes() -> None:
    async with TestMesh(Streams, Relay) as mesh:
        got = [item async for item in mesh.client.stream("streams.count", 5, returns=Item)]
        assert got == [Item(n=i) for i in range(5)]
        (total,) = [t async for t in mesh.client.stream("streams.sink", [b"ab", b"cde"] * 1000)]
        assert total == 5000

        async def lines() -> AsyncIterator[str]:
            for word in ("one", "two", "three"):
                yield word

        assert [x async for x in mesh.client.stream("streams.upper", lines())] == [
            "ONE",
            "TWO",
            "THREE",
        ]
        # node to node: a handler streams from another service with ctx.stream
        assert await mesh.call("relay.evens", 10) == [0, 2, 4, 6, 8]


class Relay(Service):
    name = "relay"

    @rpc
    async def evens(self, ctx: Context, upto: int) -> list[int]:
        return [i.n async for i in ctx.stream("streams.count", upto, returns=Item) if i.n % 2 == 0]


async def test_a_plain_grpcio_client_calls_each_kind_one_item_per_message() -> None:
    async with TestMesh(Streams) as mesh:
        (node,) = mesh.nodes
        async with grpc.aio.insecure_channel(node.address) as channel:
            count = channel.unary_stream("/streams/count")
            items = [msgpack.unpackb(m) async for m in count(msgpack.packb(3), timeout=5)]
            assert items == [{"n": 0}, {"n": 1}, {"n": 2}]

            sink = channel.stream_unary("/streams/sink")
            chunks = iter([msgpack.packb(b"x" * 10)] * 7)
            assert msgpack.unpackb(await sink(chunks, timeout=5)) == 70

            upper = channel.stream_stream("/streams/upper")
            call = upper(iter([msgpack.packb("a"), msgpack.packb("b")]), timeout=5)
            assert [msgpack.unpackb(m) async for m in call] == ["A", "B"]

            # an error after the items: its status and wiremesh's error trailer
            failing = channel.unary_stream("/streams/fail_after")(msgpack.packb(2), timeout=5)
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for message in failing:
                    received.append(msgpack.unpackb(message))
            assert received == [0, 1]
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            trailers = dict(caught.value.trailing_metadata() or ())
            assert "wm-error" in trailers


async def test_a_plain_client_without_a_deadline_gets_the_nodes_default() -> None:
    async with TestMesh(Streams, default_timeout=0.5) as mesh:
        (node,) = mesh.nodes
        async with grpc.aio.insecure_channel(node.address) as channel:
            endless = channel.unary_stream("/streams/count")(msgpack.packb(0))
            received = 0
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in endless:
                    received += 1
            assert received > 0
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ------------------------------------------------------------------ errors and ends


async def test_a_typed_error_mid_stream_follows_the_items_sent_before_it() -> None:
    async with TestMesh(Streams) as mesh:
        received: list[int] = []
        with pytest.raises(NotFound, match="nothing after 3"):
            async for item in mesh.client.stream("streams.fail_after", 3):
                received.append(item)
        assert received == [0, 1, 2]


async def test_a_bad_item_is_invalid_payload_and_the_kinds_are_not_mixed_up() -> None:
    async with TestMesh(Streams) as mesh:
        with pytest.raises(InvalidPayload, match="item"):
            async for _ in mesh.client.stream("streams.sink", ["not bytes", 3]):
                pass
        with pytest.raises(MethodNotFound, match="streaming method"):
            await mesh.call("streams.count", 3)
        with pytest.raises(MethodNotFound, match="not a streaming method"):
            async for _ in mesh.client.stream("streams.state"):
                pass
        with pytest.raises(InvalidPayload, match="takes a stream"):
            async for _ in mesh.client.stream("streams.sink", 5):
                pass


async def test_an_item_over_the_message_limit_is_payload_too_large() -> None:
    async with TestMesh(Streams) as mesh:
        with pytest.raises(PayloadTooLarge):
            async for _ in mesh.client.stream("streams.sink", [b"x" * (5 * 2**20)]):
                pass
        (total,) = [t async for t in mesh.client.stream("streams.sink", [b"x" * 2**20])]
        assert total == 2**20  # a large item under the limit travels (alone in its batch)


async def test_the_deadline_covers_the_whole_stream() -> None:
    async with TestMesh(Streams) as mesh:
        started = time.monotonic()
        received = 0
        with pytest.raises(DeadlineExceeded):
            async for _ in mesh.client.stream("streams.count", 0, timeout=0.5):
                received += 1
                await asyncio.sleep(0.001)
        took = time.monotonic() - started
        assert received > 0 and 0.4 < took < 10, (received, took)
        await eventually(
            lambda: streams(mesh).ended == "cancelled",
            5,
            f"the handler to stop (it ended: {streams(mesh).ended!r})",
        )


async def test_a_caller_that_leaves_the_loop_cancels_the_handler() -> None:
    async with TestMesh(Streams) as mesh:
        async for item in mesh.client.stream("streams.count", 0):
            if item["n"] == 100:
                break
        await eventually(lambda: streams(mesh).ended == "cancelled", 5, "the handler to stop")
        # and the node goes on serving
        assert [i async for i in mesh.client.stream("streams.count", 2)] == [{"n": 0}, {"n": 1}]


# ------------------------------------------------------------------ flow control


async def test_a_reader_that_stops_stops_the_writer() -> None:
    async with TestMesh(Streams) as mesh:
        stream = mesh.client.stream("streams.count", 0, timeout=30)
        first = await anext(stream)
        assert first == {"n": 0}
        # the caller reads no more: the handler runs until the flow-control windows and
        # the batches are full, then waits
        held = -1
        for _ in range(80):
            await asyncio.sleep(0.25)
            if streams(mesh).produced == held:
                break
            held = streams(mesh).produced
        await asyncio.sleep(0.75)
        assert streams(mesh).produced == held  # it waits; nothing piles up
        print(f"a writer whose reader stopped made {held} items (about {held * 9 / 2**20:.1f} MB)")
        assert held * 9 < 32 * 2**20
        await stream.aclose()
        await eventually(lambda: streams(mesh).ended == "cancelled", 5, "the handler to stop")


def rss() -> int:
    """This process's resident memory now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_100_mb_each_way_with_bounded_memory_at_both_ends() -> None:
    size = 100 * 1024 * 1024
    async with TestMesh(Streams, default_timeout=60) as mesh:
        peak = baseline = rss()
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss())
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            down = 0
            async for chunk in mesh.client.stream("streams.blob", size):
                down += len(chunk)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(size // len(CHUNK)):
                    yield CHUNK

            (up,) = [t async for t in mesh.client.stream("streams.sink", chunks())]
        finally:
            sampling = False
            await sampler
    assert down == size and up == size
    grown = peak - baseline
    print(f"200 MB through streams; resident memory grew by {grown / 2**20:.1f} MB at most")
    assert grown < 48 * 1024 * 1024  # both ends live in this process: far less than 100 MB


# ------------------------------------------------------------------ a writer killed


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WIREMESH, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


async def test_wiremesh_call_prints_items_as_they_come_then_a_killed_node_fails_the_stream(
    tmp_path: Path,
) -> None:
    write_mesh(tmp_path, {"streams": "svc_streams:Streams"}, name="streams-kill")
    with RunningMesh(tmp_path):
        client = await mesh_client(tmp_path)
        try:
            await eventually(lambda: serving(client, "streams"), 15, "the node to serve")
            (node,) = serving(client, "streams")
            # the command line: one JSON line per item; an error after the items, exit 1
            done = await asyncio.to_thread(cli, "call", "streams.upper", '["a", "b"]', cwd=tmp_path)
            assert done.stdout.splitlines() == ['"A"', '"B"'], done.stderr
            done = await asyncio.to_thread(cli, "call", "streams.fail_after", "2", cwd=tmp_path)
            assert (done.returncode, done.stdout.splitlines()) == (1, ["0", "1"])
            assert "NotFound" in done.stderr and "nothing after 2" in done.stderr
            # items are printed as they come: the first line of an endless stream
            endless = subprocess.Popen(  # noqa: ASYNC220 (read below in a thread)
                [WIREMESH, "call", "streams.count", "0", "--timeout", "20"],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            try:
                assert endless.stdout is not None
                first = await asyncio.to_thread(endless.stdout.readline)
                assert first == '{"n":0}\n'
            finally:
                endless.kill()
                endless.wait(5)
            # a node killed mid-stream: its caller's stream fails, after what came
            received = 0
            with pytest.raises(Unavailable):
                async for _ in client.stream("streams.count", 0, timeout=20):
                    received += 1
                    if received == 1000:
                        os.kill(node.pid, signal.SIGKILL)
            assert received >= 1000
        finally:
            await client.close()


UPLOADER = """
import asyncio, sys
import wiremesh
from wiremesh.client import MeshClient

async def main():
    client = MeshClient(sys.argv[1], default_timeout=60)
    await client.start()
    async def chunks():
        while True:
            yield b"u" * 65536
    async for _ in client.stream("streams.sink", chunks()):
        pass

asyncio.run(main())
"""


async def test_a_client_killed_mid_upload_ends_the_handler_and_the_node_serves_on() -> None:
    async with TestMesh(Streams) as mesh:
        uploader = subprocess.Popen(  # noqa: ASYNC220 (started once, not waited on)
            [PYTHON, "-c", UPLOADER, mesh.registry.address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await eventually(lambda: streams(mesh).taken > 1_000_000, 20, "the upload to flow")
            uploader.kill()
            await eventually(
                lambda: streams(mesh).ended == "cancelled",
                10,
                f"the handler to end ({streams(mesh).__dict__})",
            )
        finally:
            uploader.kill()
            uploader.wait(5)
        (total,) = [t async for t in mesh.client.stream("streams.sink", [b"ok"])]
        assert total == 2


# ------------------------------------------------------------------ middleware


RUNS: list[tuple[str, str, Any]] = []


class Seen(Middleware):
    async def before(self, run: Invocation) -> None:
        RUNS.append(("before", run.kind, run.handler))

    async def after(self, run: Invocation, result: object) -> None:
        RUNS.append(("after", run.kind, run.handler))

    async def on_error(self, run: Invocation, error: Exception) -> None:
        RUNS.append(("error", run.kind, type(error).__name__))


class Watched(Streams):
    middleware = (Seen(),)


async def test_middleware_runs_around_the_whole_stream() -> None:
    RUNS.clear()
    async with TestMesh(Watched) as mesh:
        assert len([i async for i in mesh.client.stream("streams.count", 3)]) == 3
        with pytest.raises(NotFound):
            async for _ in mesh.client.stream("streams.fail_after", 1):
                pass
    assert RUNS == [
        ("before", "stream", "count"),
        ("after", "stream", "count"),
        ("before", "stream", "fail_after"),
        ("error", "stream", "NotFound"),
    ]


# ------------------------------------------------------------------ the rules


def test_a_methods_kind_is_read_from_its_annotations() -> None:
    spec = ServiceSpec.of(Streams)
    kinds = {name: m.stream.kind if m.stream else "" for name, m in spec.methods.items()}
    assert kinds == {
        "count": "server",
        "sink": "client",
        "upper": "bidi",
        "blob": "server",
        "fail_after": "server",
        "state": "",
    }
    assert spec.methods["count"].info.streaming == "server"
    assert spec.methods["count"].shapes.returns is Item

    class Untyped(Service):
        name = "untyped"

        @rpc
        async def gen(self, ctx: Context):  # type: ignore[no-untyped-def]
            yield 1

    assert stream_shapes(Untyped.gen, skip=2) is not None


def test_a_stream_that_is_not_the_only_parameter_or_has_a_bulkhead_is_refused() -> None:
    class Mixed(Service):
        name = "mixed"

        @rpc
        async def m(self, ctx: Context, a: int, items: AsyncIterator[int]) -> int:
            return a

    with pytest.raises(ConfigError, match="takes nothing else"):
        ServiceSpec.of(Mixed)

    class Limited(Service):
        name = "limited"

        @rpc(max_concurrency=2)
        async def m(self, ctx: Context) -> AsyncIterator[int]:
            yield 1

    with pytest.raises(ConfigError, match="no bulkhead"):
        ServiceSpec.of(Limited)


@pytest.mark.parametrize("sizes", [[], [0], [1, 127, 128, 300], [70_000, 5, 2**21]])
def test_a_batch_frames_and_unframes_its_items(sizes: list[int]) -> None:
    items = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    assert unframe(frame(items)) == items


@pytest.mark.parametrize("value", [b"", b"x" * 255, b"x" * 256, b"x" * 65536, "text", {"n": 1}])
def test_an_item_split_for_its_batch_encodes_as_msgpack_does(value: object) -> None:
    head, body = split_encode(value, "msgpack")
    assert head + body == msgpack.packb(value)
    if isinstance(value, bytes):
        assert body is value  # not copied before its batch


@pytest.mark.parametrize("broken", [b"\x05abc", b"\x80", b"\xff\xff\xff\xff\xff\xff\x01"])
def test_a_broken_batch_is_invalid_payload(broken: bytes) -> None:
    with pytest.raises(InvalidPayload, match="broken stream batch"):
        unframe(broken)
