"""The batched stream of links and gateway streams over an in-memory stream: no socket,
no gRPC server. The fake is the other end as grpc.aio shows it: what it sends is read,
what is written to it is kept, a message over its limit ends the stream (as a real peer
refuses it), and a peer that does not read takes a few messages, then no more (HTTP/2
flow control).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from wiremesh.core.batching import BatchLimits
from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.core.ejection import Liveness
from wiremesh.errors import PayloadTooLarge, Unavailable
from wiremesh.gateway.frame_stream import DATA, FrameStream
from wiremesh.proto import gateway_pb2, link_pb2
from wiremesh.transport.batching import BatchedStream
from wiremesh.transport.link import CALL, REPLY, Link

KIB = 1024
#: generous bound on any wait, so that a broken stream fails the test instead of hanging
WAIT = 5.0


class FakeStream:
    """One end of an in-memory gRPC stream, as the peer would make it look.

    :meth:`feed` queues messages the peer sends (``None``: it ends the stream). A message
    written over ``limit`` bytes fails the write, as the peer's gRPC refuses it (the
    stream is over). With ``window``, the peer takes that many messages, then reads
    nothing until :meth:`start_reading`: a write waits meanwhile.
    """

    def __init__(self, *, limit: int = MAX_MESSAGE_BYTES, window: int | None = None) -> None:
        self.limit = limit
        self.window = window
        self.incoming: asyncio.Queue[Any] = asyncio.Queue()
        #: messages handed to write(), at once (gRPC has them from then on)
        self.started: list[Any] = []
        #: messages the peer took
        self.written: list[Any] = []
        #: how many times the stream's owner asked for a message
        self.reads = 0
        self.cancelled = False
        self._readable = asyncio.Event()

    def feed(self, *messages: Any) -> None:
        for message in messages:
            self.incoming.put_nowait(message)

    def start_reading(self) -> None:
        self.window = None
        self._readable.set()

    async def read(self) -> Any:
        self.reads += 1
        return await self.incoming.get()

    async def write(self, message: Any) -> None:
        self.started.append(message)
        size = message.ByteSize()
        if size > self.limit:
            raise ConnectionError(f"the peer refused a message of {size} bytes")
        await asyncio.sleep(0)  # grpc.aio: the message goes out in a later turn
        while self.window is not None and len(self.written) >= self.window:
            await self._readable.wait()
        self.written.append(message)

    def cancel(self) -> None:
        self.cancelled = True

    def frames(self) -> list[Any]:
        return [frame for message in self.written for frame in message.frames]


async def eventually(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {WAIT:g}s: {what}")
        await asyncio.sleep(0.005)


async def settled() -> None:
    """Let the loop run until what is runnable has run (a few dozen turns)."""
    for _ in range(50):
        await asyncio.sleep(0)


# ------------------------------------------------------------------ the gateway's stream


def gateway_stream(fake: FakeStream) -> tuple[FrameStream, list[Any]]:
    received: list[Any] = []
    stream = FrameStream(
        fake, local_id="gw-1", on_batch=lambda _stream, frames: received.extend(frames)
    )
    return stream, received


@pytest.mark.parametrize("alone", [False, True], ids=["in-one-turn", "one-by-one"])
async def test_66_messages_of_64_kib_at_once_travel_in_batches_that_fit_and_close_nothing(
    alone: bool,
) -> None:
    fake = FakeStream()
    stream, _ = gateway_stream(fake)
    runner = asyncio.create_task(stream.run())
    await eventually(lambda: fake.written, "the HELLO is written")
    # 66 browsers' messages read in the same loop turn, queued as the gateway's
    # connections queue them: without a size (the stream measures them)
    for number in range(1, 67):
        frame = gateway_pb2.Frame(kind=DATA, session=number, payload=bytes(64 * KIB))
        stream.send(frame, alone=alone)
    await eventually(lambda: len(fake.frames()) == 67 or stream.closed, "every frame leaves")
    assert not stream.closed
    assert all(message.ByteSize() <= MAX_MESSAGE_BYTES for message in fake.written)
    assert len(fake.written) >= 3  # the HELLO, then at least two batches
    sessions = [frame.session for frame in fake.frames() if frame.kind == DATA]
    assert sessions == list(range(1, 67))  # each once, in order
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


async def test_a_frame_too_large_to_travel_alone_is_refused_and_the_stream_goes_on() -> None:
    fake = FakeStream()
    stream, _ = gateway_stream(fake)
    runner = asyncio.create_task(stream.run())
    too_large = gateway_pb2.Frame(kind=DATA, session=1, payload=bytes(MAX_MESSAGE_BYTES))
    with pytest.raises(PayloadTooLarge):
        stream.send(too_large)
    with pytest.raises(PayloadTooLarge):
        stream.send(too_large, len(too_large.payload))
    assert stream.queued <= 1  # at most the HELLO
    stream.send(gateway_pb2.Frame(kind=DATA, session=2, payload=b"after"))
    await eventually(lambda: any(f.session == 2 for f in fake.frames()), "the next frame")
    assert not stream.closed
    assert all(message.ByteSize() <= MAX_MESSAGE_BYTES for message in fake.written)
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


async def test_a_lone_frame_on_an_idle_stream_is_handed_to_grpc_in_the_senders_turn() -> None:
    fake = FakeStream()
    stream, _ = gateway_stream(fake)
    runner = asyncio.create_task(stream.run())
    await eventually(lambda: fake.written, "the HELLO is written")
    await settled()
    started = len(fake.started)
    stream.send(gateway_pb2.Frame(kind=DATA, session=1, payload=b"now"))
    assert len(fake.started) == started + 1  # no loop turn passed
    # frames queued in one turn, when their senders say more follow, leave together
    for number in (2, 3, 4):
        stream.send(gateway_pb2.Frame(kind=DATA, session=number), alone=False)
    await eventually(lambda: len(fake.frames()) == 5, "every frame leaves")
    assert [len(message.frames) for message in fake.written] == [1, 1, 3]
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


async def test_the_gateway_stream_hands_each_batch_whole_and_learns_its_peer() -> None:
    fake = FakeStream()
    stream, received = gateway_stream(fake)
    runner = asyncio.create_task(stream.run())
    hello = gateway_pb2.Frame(kind=gateway_pb2.Frame.HELLO, sender="chat-1")
    data = [gateway_pb2.Frame(kind=DATA, session=n) for n in (1, 2)]
    fake.feed(gateway_pb2.Batch(frames=[hello, *data]), None)
    await asyncio.wait_for(runner, WAIT)
    assert stream.remote_id == "chat-1" and stream.hello.is_set()
    assert [frame.kind for frame in received] == [gateway_pb2.Frame.HELLO, DATA, DATA]
    assert stream.closed and fake.cancelled


async def test_closing_releases_whoever_waits_for_room_and_runs_the_close_callbacks() -> None:
    fake = FakeStream(window=1)
    stream, _ = gateway_stream(fake)
    ended: list[FrameStream] = []
    stream.on_close(ended.append)
    runner = asyncio.create_task(stream.run())
    full = FrameStream(fake, local_id="gw-2", on_batch=lambda s, f: None, max_frames=2)
    full.send(gateway_pb2.Frame(kind=DATA, session=1), alone=False)
    assert full.full
    waiting = asyncio.create_task(full.wait_for_room())
    await settled()
    assert not waiting.done()
    full.close()
    await asyncio.wait_for(waiting, WAIT)
    stream.close()
    await asyncio.wait_for(runner, WAIT)
    assert ended == [stream]
    late: list[FrameStream] = []
    stream.on_close(late.append)  # on a closed stream: at once
    assert late == [stream]


async def test_a_graceful_end_waits_until_what_was_queued_is_written() -> None:
    fake = FakeStream(window=1)  # the peer takes one message, then reads nothing for now
    stream, _ = gateway_stream(fake)
    runner = asyncio.create_task(stream.run())
    for session in (1, 2, 3):
        stream.send(gateway_pb2.Frame(kind=DATA, session=session), alone=False)
        await settled()  # each its own message: the second and third wait for the peer
    assert not await stream.written(0.05)  # the peer does not read: not written in time
    fake.start_reading()
    assert await stream.written(WAIT)
    assert [frame.session for frame in fake.frames() if frame.kind == DATA] == [1, 2, 3]
    stream.close()
    await asyncio.wait_for(runner, WAIT)
    assert await stream.written(0.0)  # nothing waits on a closed stream


# ------------------------------------------------------------------ a link's peer


class Answering:
    """A node's side of a link that answers every call at once with ``size`` bytes."""

    def __init__(self, size: int = 1 * KIB) -> None:
        self.payload = bytes(size)
        self.calls = 0

    def on_call(self, link: Link, frame: link_pb2.Frame) -> None:
        self.calls += 1
        link.reply(frame.id, self.payload)

    def on_publish(self, link: Link, frame: link_pb2.Frame) -> None:
        pass


class Holding:
    """A node's side of a link whose handlers wait for :attr:`release`, then answer."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    def on_call(self, link: Link, frame: link_pb2.Frame) -> None:
        self.calls += 1
        link.serving[frame.id] = asyncio.get_running_loop().create_task(self._serve(link, frame))

    async def _serve(self, link: Link, frame: link_pb2.Frame) -> None:
        try:
            await self.release.wait()
            link.reply(frame.id, b"done")
        finally:
            link.serving.pop(frame.id, None)

    def on_publish(self, link: Link, frame: link_pb2.Frame) -> None:
        pass


_ids = itertools.count(1)


def calls(count: int, payload: bytes = b"") -> link_pb2.Batch:
    """One message of ``count`` CALL frames, as a peer sends them."""
    return link_pb2.Batch(
        frames=[
            link_pb2.Frame(kind=CALL, id=next(_ids), service="echo", method="echo", payload=payload)
            for _ in range(count)
        ]
    )


def hello() -> link_pb2.Batch:
    frame = link_pb2.Frame(kind=link_pb2.Frame.HELLO, node_id="peer-1", service="peer")
    return link_pb2.Batch(frames=[frame])


def answers(fake: FakeStream) -> list[int]:
    return [frame.id for frame in fake.frames() if frame.kind in (REPLY, link_pb2.Frame.ERROR)]


async def test_a_peer_that_sends_calls_and_never_reads_stops_being_read() -> None:
    fake = FakeStream(window=1)  # the peer takes our HELLO, then reads nothing
    handler = Answering()
    link = Link(fake, local_id="echo-1", local_service="echo", handler=handler, max_frames=256)
    runner = asyncio.create_task(link.run())
    fake.feed(hello(), *(calls(100) for _ in range(200)))  # 20,000 calls, as fast as it may
    await eventually(lambda: fake.reads > 1, "the link reads")
    await settled()
    await asyncio.sleep(0.2)  # time enough to read everything, were it reading
    # the link stopped reading: it holds the answers in the write that waits for the
    # peer, and queued at most the bound's worth of answers and one message's more
    assert link.queued <= 256 + 100
    assert fake.reads <= 8
    in_flight = len(fake.started[-1].frames)
    assert in_flight <= 100
    assert handler.calls == in_flight + link.queued
    assert link.queued_bytes <= (256 + 100) * (1 * KIB + 128)
    assert link.reading_paused
    # the peer reads at last: the link reads again, and every call is answered, in order
    fake.start_reading()
    await eventually(lambda: len(answers(fake)) == 20_000, "every call is answered")
    assert answers(fake) == sorted(answers(fake))
    assert all(message.ByteSize() <= MAX_MESSAGE_BYTES for message in fake.written)
    assert not link.closed
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


async def test_large_answers_stop_the_reader_at_the_byte_bound() -> None:
    fake = FakeStream(window=1, limit=256 * KIB)
    handler = Answering(size=64 * KIB)
    link = Link(
        fake,
        local_id="echo-1",
        local_service="echo",
        handler=handler,
        max_message_bytes=256 * KIB,
    )
    bound = BatchLimits(max_message_bytes=256 * KIB).queued_bytes  # 1 MiB
    runner = asyncio.create_task(link.run())
    fake.feed(hello(), *(calls(4) for _ in range(500)))  # 2,000 answers of 64 KiB: 125 MiB
    await eventually(lambda: fake.reads > 1, "the link reads")
    await settled()
    await asyncio.sleep(0.2)
    assert link.queued < 4096  # far below the frame bound: the bytes stopped it
    assert link.queued * 64 * KIB <= bound + 4 * 64 * KIB
    assert link.queued_bytes <= bound + 4 * (64 * KIB + 128)
    assert link.reading_paused
    fake.start_reading()
    await eventually(lambda: len(answers(fake)) == 2000, "every call is answered")
    assert all(message.ByteSize() <= 256 * KIB for message in fake.written)
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


async def test_calls_being_served_count_against_the_bound_of_their_answers() -> None:
    fake = FakeStream()  # a peer that reads: only the handlers are slow
    handler = Holding()
    link = Link(fake, local_id="echo-1", local_service="echo", handler=handler, max_frames=64)
    runner = asyncio.create_task(link.run())
    fake.feed(hello(), *(calls(10) for _ in range(100)))
    await eventually(lambda: handler.calls >= 64, "the link serves calls")
    await settled()
    await asyncio.sleep(0.1)
    assert handler.calls <= 64 + 10  # it stopped reading: no more calls taken
    assert link.reading_paused
    assert len(link.serving) == handler.calls
    handler.release.set()
    await eventually(lambda: len(answers(fake)) == 1000, "every call is answered")
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


async def test_a_link_that_does_not_read_does_not_judge_its_peer_silent() -> None:
    # the peer reads and would answer; this end serves so many calls that it stops reading
    fake = FakeStream()
    handler = Holding()
    liveness = Liveness(probe_after=0.02, unreachable_after=0.1)
    link = Link(
        fake,
        local_id="echo-1",
        local_service="echo",
        handler=handler,
        max_frames=16,
        liveness=liveness,
    )
    runner = asyncio.create_task(link.run())
    fake.feed(hello(), *(calls(16) for _ in range(4)))
    await eventually(lambda: link.reading_paused, "the link stops reading")
    loop = asyncio.get_running_loop()
    ours = link.start_call(
        link_pb2.Frame(kind=CALL, service="peer", method="m"), loop.time() + WAIT, abandonable=True
    )
    await asyncio.sleep(10 * liveness.unreachable_after)
    assert not ours.done()  # not given up, though no answer was read for a while
    assert not link.unreachable
    handler.release.set()
    await eventually(lambda: not link.reading_paused, "the link reads again")
    reply = link_pb2.Frame(kind=REPLY, id=ours_id(fake), payload=b"ok")
    fake.feed(link_pb2.Batch(frames=[reply]))
    assert (await asyncio.wait_for(ours, WAIT)).payload == b"ok"
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)


def ours_id(fake: FakeStream) -> int:
    """The id of the one call this end sent its peer."""
    (call_id,) = {frame.id for frame in fake.frames() if frame.kind == CALL and frame.service}
    return call_id


async def test_the_end_of_the_stream_fails_the_calls_in_flight_and_cancels_the_handlers() -> None:
    fake = FakeStream()
    handler = Holding()
    link = Link(fake, local_id="echo-1", local_service="echo", handler=handler)
    runner = asyncio.create_task(link.run())
    fake.feed(hello(), calls(3))
    await eventually(lambda: len(link.serving) == 3, "the calls are served")
    loop = asyncio.get_running_loop()
    ours = link.start_call(link_pb2.Frame(kind=CALL, service="peer", method="m"), loop.time() + 5)
    tasks = list(link.serving.values())
    fake.feed(None)
    await asyncio.wait_for(runner, WAIT)
    assert link.closed and fake.cancelled
    with pytest.raises(Unavailable):
        await ours
    await settled()
    assert all(task.cancelled() for task in tasks)


# ------------------------------------------------------------------ the class itself


async def test_any_frames_and_batches_can_be_carried() -> None:
    """The batched stream knows nothing of links or gateways: frames are any values."""

    class Batch:
        def __init__(self, frames: Sequence[str]) -> None:
            self.frames = list(frames)

        def ByteSize(self) -> int:
            return sum(map(len, self.frames))

    fake = FakeStream()
    received: list[str] = []
    stream: BatchedStream[str] = BatchedStream(
        fake,
        batch=Batch,
        measure=len,
        hello="hello",
        on_batch=received.extend,
        limits=BatchLimits(),
    )
    runner = asyncio.create_task(stream.run())
    await eventually(lambda: fake.written, "the hello is written")
    stream.send("one")
    stream.send("two", alone=False)
    stream.send("three", alone=False)
    await eventually(lambda: len(fake.frames()) == 4, "every frame leaves")
    assert [message.frames for message in fake.written] == [["hello"], ["one"], ["two", "three"]]
    fake.feed(Batch(["a", "b"]), None)
    await asyncio.wait_for(runner, WAIT)
    assert received == ["a", "b"]
    assert stream.closed
