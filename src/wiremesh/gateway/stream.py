"""One end of a gateway stream: ``wiremesh.gateway.v1.Gateway/Connect``.

The same class serves both ends (the gateway opens the stream, the node accepts it).
As on mesh links (:mod:`wiremesh.transport.link`), grpc.aio costs about the same per
message whatever its size, so frames are coalesced:

- **Batching.** Queuing a frame is a list append. While a write is in flight, frames pile
  up for the next one, so under load batches grow by themselves.
- **Lingering under load.** When frames were queued during a write, the writer lets a
  few loop turns pass before the next one, so that the messages read meanwhile join it
  (``benchmarks/gateway.py`` measures the pipelined throughput this is for).
- **No latency when idle.** A frame queued while the writer sleeps, outside the handing
  out of a received batch, is written at once, in the sender's own loop turn (the writer
  task only awaits the end of that write). Frames queued while a received batch is handed
  out (the answers to its messages) wake the writer for the next turn and leave together.
- **Reading.** Each batch read is handed over whole to ``on_batch`` (no task per frame);
  then the reader lets what the batch woke run before it reads again, so that the answers
  leave in one batch.
- **Bounds.** At most ``max_frames`` frames wait to be written: :meth:`FrameStream.full`
  says so, and :meth:`FrameStream.wait_for_room` waits for the writer to take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from wiremesh.proto import gateway_pb2 as pb
from wiremesh.transport.eager import Resume, yield_now

__all__ = [
    "CLOSE",
    "CONNECT",
    "DATA",
    "GATEWAY_NODES",
    "GATEWAY_SERVICE",
    "GATEWAY_URL_KEY",
    "HELLO",
    "OPEN",
    "PUSH",
    "Frame",
    "FrameStream",
]

log = logging.getLogger("wiremesh.gateway")

GATEWAY_SERVICE = "wiremesh.gateway.v1.Gateway"
CONNECT = f"/{GATEWAY_SERVICE}/Connect"
#: the service name gateways register under in the registry, and their metadata key
#: holding their URL
GATEWAY_NODES = "wm-gateway"
GATEWAY_URL_KEY = "wm.gateway"
Frame = pb.Frame
HELLO, OPEN, DATA, CLOSE, PUSH = (
    pb.Frame.HELLO,
    pb.Frame.OPEN,
    pb.Frame.DATA,
    pb.Frame.CLOSE,
    pb.Frame.PUSH,
)
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs do not know it
#: bytes of a gRPC message kept for the frames' own fields, beside their payloads
_HEADROOM = 16 * 1024
_READ_DEFER_TURNS = 3
#: under load (frames queued while a write was in flight), loop turns the writer lets
#: pass before its next write, so that more frames join it ...
_LINGER_TURNS = 6
#: ... unless this many already wait
_LINGER_FRAMES = 128


class _Stream(Protocol):
    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


class FrameStream:
    """Batched frames over one gRPC stream. Call :meth:`run`; it returns when the stream
    ends or fails, after which :attr:`closed` is true and ``on_close`` has been called."""

    def __init__(
        self,
        stream: _Stream,
        *,
        local_id: str,
        on_batch: Callable[[FrameStream, Any], None],
        max_frames: int = 8192,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._stream = stream
        self.local_id = local_id
        self.remote_id = ""
        self._on_batch = on_batch
        self.max_frames = max_frames
        self._max_batch_bytes = max_message_bytes - _HEADROOM
        self._out: list[pb.Frame] = [pb.Frame(kind=HELLO, sender=local_id)]
        self._out_bytes = 0
        self._wake: asyncio.Future[Resume | BaseException | None] | None = None
        #: the reader is handing a batch out (what it queues leaves in one batch)
        self.dispatching = False
        self._room: asyncio.Future[None] | None = None
        self.closed = False
        self.hello = asyncio.Event()
        self._on_close: list[Callable[[FrameStream], None]] = []
        self._runner: asyncio.Task[None] | None = None
        self.sent_batches = 0
        self.sent_frames = 0

    def __repr__(self) -> str:
        return f"<FrameStream {self.local_id} -> {self.remote_id or '?'}>"

    def on_close(self, callback: Callable[[FrameStream], None]) -> None:
        if self.closed:
            callback(self)
        else:
            self._on_close.append(callback)

    @property
    def full(self) -> bool:
        return len(self._out) >= self.max_frames

    @property
    def queued(self) -> int:
        return len(self._out)

    def send(self, frame: pb.Frame, size: int = 0, *, alone: bool = True) -> None:
        """Queue ``frame`` (``size``: its payload's bytes) for the next batch. Never waits;
        callers that must respect the bound check :attr:`full` first. ``alone=False``
        says more frames follow in this loop turn (the writer then waits for them)."""
        if self.closed:
            return
        out = self._out
        out.append(frame)
        self._out_bytes += size
        wake = self._wake
        if wake is not None:  # the writer sleeps
            self._wake = None
            if not wake.done():
                now = alone and len(out) == 1 and not self.dispatching
                wake.set_result(self._start_write() if now else None)

    def _start_write(self) -> Resume | BaseException | None:
        """Begin writing what is queued, up to the write's first wait (gRPC has the
        message then); the writer awaits the rest."""
        frames = self._out
        self._out = []
        self._out_bytes = 0
        self.sent_frames += len(frames)
        self.sent_batches += 1
        write = self._stream.write(pb.Batch(frames=frames))
        try:
            first = write.send(None)
        except StopIteration:
            return None
        except Exception as exc:  # the writer raises it, and the stream ends
            return exc
        return Resume(write, first)

    async def wait_for_room(self) -> None:
        """Wait until fewer than ``max_frames`` frames wait to be written (or it closed)."""
        while self.full and not self.closed:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop(), name=f"wiremesh-gateway-write-{self}")
        try:
            await self._read_loop()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as exc:
            log.debug("%r ended: %s", self, exc)
        except asyncio.CancelledError:
            if not self.closed:
                raise
        finally:
            self.close()
            writer.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._out = []
        for future in (self._wake, self._room):
            if future is not None and not future.done():
                future.set_result(None)
        cancel = getattr(self._stream, "cancel", None)  # the client side: end the call
        if cancel is not None:
            cancel()
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
        for callback in self._on_close:
            try:
                callback(self)
            except Exception:
                log.exception("gateway stream close callback failed")

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream failed under a write: it is over
            log.debug("%r: write failed: %r", self, exc)
            self.close()

    async def _write_batches(self) -> None:
        stream = self._stream
        loop = asyncio.get_running_loop()
        batch_of = pb.Batch
        while not self.closed:
            if not self._out:
                wake = self._wake = loop.create_future()
                started = await wake
                if isinstance(started, BaseException):
                    raise started
                if started is not None:
                    await started
                    if self._out:
                        await self._linger()
                continue
            frames, size = self._out, self._out_bytes
            self._out, self._out_bytes = [], 0
            room = self._room
            if room is not None and not room.done():
                room.set_result(None)
            self.sent_frames += len(frames)
            if size <= self._max_batch_bytes:
                self.sent_batches += 1
                await stream.write(batch_of(frames=frames))
                if self._out:
                    await self._linger()
                continue
            for group in _split(frames, self._max_batch_bytes):
                self.sent_batches += 1
                await stream.write(batch_of(frames=group))

    async def _linger(self) -> None:
        """Let a few loop turns pass while frames keep coming: the browsers' messages read
        in those turns leave in the same gRPC message, which costs about what one frame
        alone would. Only ever after a busy write: an idle stream writes at once."""
        for _ in range(_LINGER_TURNS):
            if len(self._out) >= _LINGER_FRAMES or self.closed:
                return
            await yield_now()

    async def _read_loop(self) -> None:
        stream = self._stream
        on_batch = self._on_batch
        while True:
            batch = await stream.read()
            if batch is _EOF or batch is None:
                return
            frames = batch.frames
            if frames and frames[0].kind == HELLO and not self.hello.is_set():
                self.remote_id = frames[0].sender
                self.hello.set()
            self.dispatching = len(frames) > 1
            try:
                on_batch(self, frames)
            finally:
                self.dispatching = False
            for _ in range(_READ_DEFER_TURNS):
                await yield_now()
                if not self._out:
                    break


def _split(frames: list[pb.Frame], budget: int) -> list[list[pb.Frame]]:
    groups: list[list[pb.Frame]] = [[]]
    used = 0
    for frame in frames:
        cost = len(frame.payload) + len(frame.claims) + 64
        if groups[-1] and used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(frame)
        used += cost
    return groups
