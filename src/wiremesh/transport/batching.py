"""One long-lived gRPC stream carrying batches of frames both ways: the I/O shell.

Mesh links (:class:`wiremesh.transport.link.Link`) and gateway streams
(:class:`wiremesh.gateway.frame_stream.FrameStream`) are both a :class:`BatchedStream`. The
rules (what a batch holds, when the queue is full, when to linger) are those of
:mod:`wiremesh.core.batching`; this module runs them over a stream that offers
``read()`` and ``write(message)``: a grpc.aio ``StreamStreamCall`` at the end that opened
the stream, a ``ServicerContext`` at the end that accepted it, or an in-memory fake in
tests. The hot path, per frame, is a list append and an integer add; per batch, one gRPC
write and one gRPC read:

- **Batching.** One writer task per stream. While it sleeps, the first frame queued wakes
  it for the next event-loop turn, and every frame queued before that turn leaves with it;
  while a write is in flight, frames pile up for the next one. So under load batches grow
  by themselves, and the :class:`~wiremesh.core.batching.Outbox` cuts them into messages
  that fit under the message limit.
- **No latency when idle.** A frame its sender says is *alone* (nothing will join it in
  this turn), queued while the writer sleeps and outside the handing out of a received
  batch, starts its write at once, in the sender's own loop turn: gRPC has it before the
  turn ends, and the writer task only awaits the end of that write.
- **Lingering.** When the limits ask for it (gateway streams), after a write that had
  company the writer lets a few loop turns pass before the next one, so that the messages
  read meanwhile join it.
- **Reading.** Each message read is handed whole to ``on_batch`` (no task per frame);
  then the reader lets what it woke run (the callers, the handlers, then the writer with
  their answers), a few loop turns at most, before it asks gRPC for the next message.
- **Backpressure.** :attr:`BatchedStream.full` and :meth:`BatchedStream.wait_for_room`
  serve senders that can wait. A stream given ``owed`` (a collection with one entry per
  answer this end owes for what it read: a link's calls being served) stops reading
  while those and the queued frames reach the bound, until the writer makes room: a peer
  that does not read stops being read, and what it costs here stays bounded.
- **Ending.** :meth:`BatchedStream.run` returns when the stream ends or fails (a failed
  write ends it too); then :attr:`BatchedStream.closed` is true and every ``on_close``
  callback has run. A frame too large to travel alone is refused before it is queued
  (:class:`~wiremesh.errors.PayloadTooLarge`), so no write fails for its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence, Sized
from typing import Any, Generic, Protocol, TypeVar

import grpc

from wiremesh.core.batching import BatchLimits, Outbox
from wiremesh.errors import PayloadTooLarge
from wiremesh.transport.eager import Resume, yield_now

__all__ = ["READ_DEFER_TURNS", "BatchedStream", "Stream"]

F = TypeVar("F")
S = TypeVar("S", bound="BatchedStream[Any]")

#: loop turns a reader lets pass, at most, after a batch, before it reads again
READ_DEFER_TURNS = 3
#: seconds between two looks at the bound while reading is paused (what is owed may
#: shrink without a write: a handler cancelled, say)
PAUSE_RECHECK = 0.05
#: seconds between two looks at whether the frames queued are written (at a graceful end)
WRITTEN_POLL = 0.005
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs do not know it


class Stream(Protocol):
    """What both a client ``StreamStreamCall`` and a server ``ServicerContext`` offer."""

    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BatchedStream(Generic[F]):
    """Frames of type ``F`` in batches (``batch(frames=...)``) over one stream. Call
    :meth:`run`; it returns when the stream ends or fails."""

    log = logging.getLogger("wiremesh.stream")

    def __init__(
        self,
        stream: Stream,
        *,
        batch: Callable[..., Any],
        measure: Callable[[F], int],
        hello: F,
        on_batch: Callable[[Sequence[F]], None],
        limits: BatchLimits,
        owed: Sized | None = None,
        kind: str = "stream",
    ) -> None:
        self._stream = stream
        self._batch = batch
        self._measure = measure
        self._on_batch = on_batch
        self._owed = owed
        self._kind = kind
        self.limits = limits
        #: the most bytes one frame's payload may hold
        self.max_payload = limits.max_payload
        self._outbox: Outbox[F] = Outbox(limits)
        self._push = self._outbox.push
        self._push(hello, 0)
        self._lingers = limits.linger_turns > 0
        #: what wakes the writer when it waits for frames (None while it writes)
        self._wake: asyncio.Future[Resume | BaseException | None] | None = None
        #: what wakes those waiting for room (None: nobody waits)
        self._room: asyncio.Future[None] | None = None
        #: called with the frames of each message written (gRPC took it), while set
        self.on_written: Callable[[list[F]], None] | None = None
        #: the lone frame written at once (see :meth:`send`), until the writer saw it end
        self._writing: list[F] = []
        #: the reader is handing a batch's frames out (what they queue leaves together)
        self.dispatching = False
        #: the reader waits for room before it reads again (the peer is not being read)
        self.reading_paused = False
        self.closed = False
        self.sent_batches = 0
        self.sent_frames = 0
        self._on_close: list[Callable[[Any], None]] = []
        self._runner: asyncio.Task[Any] | None = None
        #: the event loop's clock, once the stream runs
        self.clock: Callable[[], float] = time.monotonic

    def on_close(self: S, callback: Callable[[S], None]) -> None:
        """Run ``callback(stream)`` when the stream closes (at once if it has)."""
        if self.closed:
            callback(self)
        else:
            self._on_close.append(callback)

    @property
    def max_frames(self) -> int:
        """Frames that may wait to be written before the queue is full."""
        return self.limits.max_frames

    @property
    def queued(self) -> int:
        """Frames waiting to be written."""
        return len(self._outbox.frames)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written, as the outbox counts them."""
        return self._outbox.queued_bytes

    @property
    def full(self) -> bool:
        """Whether the queue is at its bound: a sender that can wait should."""
        return self._outbox.full

    # ------------------------------------------------------------------ sending

    def send(self, frame: F, size: int | None = None, alone: bool = True) -> None:
        """Queue ``frame`` for the next batch: ``size`` is how many bytes its payload holds
        (the caller usually knows; when it does not say, the whole frame is measured).
        Never waits (senders that must respect the bound check :attr:`full` first); a
        closed stream takes nothing. ``alone``: nothing else will be queued in this loop
        turn, so the frame may leave at once; ``False`` says more frames follow (the
        writer then waits for them). Raises :class:`PayloadTooLarge`, queuing nothing,
        when the frame could not travel even alone."""
        if size is None:
            size = self._measure(frame)
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"a frame of {size} bytes does not fit in a message of this stream: it "
                f"carries {self.max_payload} at most (mesh.max_message_bytes)"
            )
        if self.closed:
            return
        self._push(frame, size)
        wake = self._wake
        if wake is not None:  # the writer sleeps
            self._wake = None
            if not wake.done():
                # a lone frame on an idle stream leaves now: gRPC has it before this loop
                # turn ends. Otherwise the writer runs at the next turn, with what else
                # was queued in this one.
                lone = alone and len(self._outbox.frames) == 1 and not self.dispatching
                wake.set_result(self._start_write() if lone else None)

    def _start_write(self) -> Resume | BaseException | None:
        """Begin the write of the one frame queued: run it up to its first wait (gRPC has
        the message then); the writer awaits the rest."""
        frames = self._outbox.take()
        if self._room is not None:
            self._made_room()
        self.sent_frames += len(frames)
        self.sent_batches += 1
        self._writing = frames
        write = self._stream.write(self._batch(frames=frames))
        try:
            first = write.send(None)
        except StopIteration:
            return None
        except Exception as exc:  # the writer raises it, and the stream ends
            return exc
        return Resume(write, first)

    async def wait_for_room(self) -> None:
        """Wait until the queue is below its bound (or the stream closed)."""
        while self._outbox.full and not self.closed:
            await asyncio.shield(self._room_future())

    def _room_future(self) -> asyncio.Future[None]:
        room = self._room
        if room is None or room.done():
            room = self._room = asyncio.get_running_loop().create_future()
        return room

    def _made_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            _resolve(room)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Read and write until the stream ends or fails; then close."""
        self._runner = asyncio.current_task()
        self.clock = asyncio.get_running_loop().time
        writer = asyncio.create_task(self._write_loop(), name=f"wiremesh-{self._kind}-write")
        try:
            await self._read_loop()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as exc:
            self.log.debug("%r ended: %s", self, exc)
        except asyncio.CancelledError:
            if not self.closed:  # cancelled from outside, not by close()
                raise
        finally:
            self.close()  # first: whatever the writer ends with, nothing may hang
            writer.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer

    async def written(self, timeout: float) -> bool:
        """Wait, ``timeout`` seconds at most, until every frame queued so far is written
        (gRPC has it); True when it is. A graceful end awaits this before :meth:`close`,
        which drops what still waits."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not self.closed and (self._outbox.frames or self._writing):
            if loop.time() >= until:
                return False
            await asyncio.sleep(WRITTEN_POLL)
        return not (self._outbox.frames or self._writing)

    def close(self) -> None:
        """End the stream: drop what waits to be written, wake whoever waits, cancel the
        gRPC call (at the end that opened it), then run the ``on_close`` callbacks."""
        if self.closed:
            return
        self.closed = True
        self._closing()
        self._outbox.clear()
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)
        self._made_room()
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            cancel()
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
        for callback in self._on_close:
            try:
                callback(self)
            except Exception:
                self.log.exception("%s close callback failed", self._kind)

    def _closing(self) -> None:
        """A hook: the stream is closing (``closed`` is already true)."""

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream failed under a write: it is over
            self.log.debug("%r: write failed: %r", self, exc)
            self.close()

    async def _write_batches(self) -> None:
        stream = self._stream
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        batch_of = self._batch
        while not self.closed:
            if not outbox.frames:
                # sleep until a frame is queued; whatever else is queued in the same loop
                # turn leaves with it, in one batch (or it was written at once: see send)
                wake = self._wake = loop.create_future()
                started = await wake
                if isinstance(started, BaseException):
                    raise started
                if started is not None:
                    await started
                if self._writing:  # a lone frame was written at once
                    if self.on_written is not None:
                        self.on_written(self._writing)
                    self._writing = []
                    if outbox.frames and self._lingers:
                        await self._linger()
                continue
            frames = outbox.take()  # one message's worth; the rest waits its turn
            if self._room is not None:
                self._made_room()
            self.sent_frames += len(frames)
            self.sent_batches += 1
            self._writing = frames
            await stream.write(batch_of(frames=frames))
            self._writing = []
            if self.on_written is not None:
                self.on_written(frames)
            if outbox.frames and self._lingers:
                await self._linger()

    async def _linger(self) -> None:
        """Let a few loop turns pass while frames keep coming: what is read in those turns
        leaves in the same gRPC message, which costs about what one frame alone would.
        Only ever after a busy write: an idle stream writes at once."""
        outbox = self._outbox
        turns = 0
        while outbox.lingers(turns) and not self.closed:
            await yield_now()
            turns += 1

    async def _read_loop(self) -> None:
        stream = self._stream
        outbox = self._outbox
        on_batch = self._on_batch
        owed = self._owed
        while True:
            if owed is not None and outbox.stops_reading(len(owed)):
                await self._pause_reading(owed)
                if self.closed:
                    return
            message = await stream.read()
            if message is _EOF or message is None:
                return
            frames = message.frames
            self.dispatching = len(frames) > 1
            try:
                on_batch(frames)
            finally:
                self.dispatching = False
            # Before asking gRPC for the next message (as costly as running a handler),
            # let what this batch woke run first, then the writer with what they queued:
            # the answers leave sooner, and nothing is lost meanwhile (the next message
            # waits in gRPC's buffers).
            for _ in range(READ_DEFER_TURNS):
                await yield_now()
                if not outbox.frames:
                    break

    async def _pause_reading(self, owed: Sized) -> None:
        """Read nothing more from the peer until the writer has made room: the peer's
        messages wait in gRPC's buffers, and then in its own (HTTP/2 flow control)."""
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        self.reading_paused = True
        try:
            while not self.closed and outbox.stops_reading(len(owed)):
                room = self._room_future()
                timer = loop.call_later(PAUSE_RECHECK, _resolve, room)
                try:
                    await asyncio.shield(room)
                finally:
                    timer.cancel()
        finally:
            self.reading_paused = False
