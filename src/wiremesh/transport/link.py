"""Mesh links: one long-lived gRPC stream between two wiremesh processes.

grpc.aio costs about the same per message whatever its size, so a link carries many
small frames — calls, replies, errors, cancels, publishes — in one gRPC message
(``Batch``, ``proto/wiremesh/link/v1/link.proto``). The hot path, per frame, is a list
append; per batch, one gRPC write and one gRPC read:

- **Batching.** Each link has one writer task. While it sleeps, the first frame queued
  wakes it for the next event-loop turn, and every frame queued before that turn leaves
  with it, in the same batch; while a write is in flight, frames pile up for the next
  one. So under load batches grow by themselves.
- **No latency when idle.** A call that is the only one in flight on its link (or the
  answer to such a call) does not wait for the next turn: its write starts at once, in
  the caller's own turn, and the writer task only awaits its completion.
- **Reading.** After handing a batch's frames out, the reader lets what they woke (the
  callers, the handlers, then the writer with their answers) run before it asks gRPC for
  the next message, which costs about as much as running a handler.
- **Deadlines.** One timer per link, armed for the earliest deadline of the calls in
  flight (a heap), instead of a timer per call; answered calls leave the heap lazily.
- **Liveness.** One more timer per link, ticking while calls of ours are in flight, runs
  the rules of :mod:`wiremesh.core.ejection`: every message read is a sign of life (one
  timestamp per read); a link quiet for a while sends a *probe*, a CALL frame that names
  no service, which every peer answers at once with an ERROR frame; a peer that answers
  nothing is *silent*: the calls that may go elsewhere are given up (CANCEL is sent),
  and whoever listens (:meth:`Link.on_reachability`) ejects the peer.

Both ends of a link are alike (:class:`Link`): either may call the other, and each
answers the other's calls on the same stream. The process that opened the stream is
the *opener*; the other accepted it in its ``Link/Open`` handler.

Limits: at most ``max_frames`` frames wait to be written. A call or reply waits for room
(backpressure reaches the caller); a publish never waits: when there is no room it is
dropped and counted in :attr:`Link.dropped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any, Protocol

import grpc

from wiremesh.core.ejection import Liveness, Verdict, Watch
from wiremesh.errors import (
    Cancelled,
    DeadlineExceeded,
    PayloadTooLarge,
    Unavailable,
    WiremeshError,
)
from wiremesh.proto import link_pb2 as pb
from wiremesh.transport.eager import Resume, yield_now

__all__ = ["LINK_OPEN", "Frame", "Link", "LinkHandler"]

log = logging.getLogger("wiremesh.link")

LINK_SERVICE = "wiremesh.link.v1.Link"
#: bytes of a gRPC message kept for the frames' own fields, beside their payloads
FRAME_HEADROOM = 16 * 1024
LINK_OPEN = f"/{LINK_SERVICE}/Open"
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs do not know it
Frame = _Frame = pb.Frame
#: loop turns a link's reader lets pass, at most, after a batch, before it reads again
_READ_DEFER_TURNS = 3
HELLO, CALL, REPLY, ERROR, CANCEL, PUBLISH = (
    pb.Frame.HELLO,
    pb.Frame.CALL,
    pb.Frame.REPLY,
    pb.Frame.ERROR,
    pb.Frame.CANCEL,
    pb.Frame.PUBLISH,
)


class _Stream(Protocol):
    """What both a client ``StreamStreamCall`` and a server ``ServicerContext`` offer."""

    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


class LinkHandler(Protocol):
    """The local side that serves what the remote end sends."""

    def on_call(self, link: Link, frame: pb.Frame) -> None:
        """Start serving a CALL frame; answer with ``link.reply`` or ``link.fail``."""
        ...

    def on_publish(self, link: Link, frame: pb.Frame) -> None:
        """Deliver a PUBLISH frame (never blocks)."""
        ...


class Link:
    """One end of a mesh link. Call :meth:`run` (it returns when the stream ends)."""

    def __init__(
        self,
        stream: _Stream,
        *,
        local_id: str,
        local_service: str = "",
        handler: LinkHandler | None = None,
        max_frames: int = 4096,
        max_message_bytes: int = 4 * 1024 * 1024,
        liveness: Liveness | None = None,
    ) -> None:
        self._stream = stream
        #: the largest payload one frame may carry (a batch must fit in a gRPC message)
        self.max_payload = max_message_bytes - FRAME_HEADROOM
        self._max_batch_bytes = max_message_bytes - FRAME_HEADROOM // 2
        self.local_id = local_id
        self.remote_id = ""
        self.remote_service = ""
        self._handler = handler
        self._max_frames = max_frames
        self._out: list[pb.Frame] = [pb.Frame(kind=HELLO, node_id=local_id, service=local_service)]
        self._out_bytes = 0
        #: what wakes the writer when it waits for frames (None while it writes)
        self._writer_idle: asyncio.Future[Resume | BaseException | None] | None = None
        #: the reader is handing a batch's frames out (answers to them coalesce)
        self._dispatching = False
        self._room = asyncio.Event()
        self._room.set()
        self._pending: dict[int, asyncio.Future[pb.Frame]] = {}
        #: (deadline, call id) of the calls sent, earliest first; one timer, armed for the
        #: earliest, serves them all. Answered calls leave lazily (see :meth:`_on_deadline`).
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_at = math.inf
        #: incoming calls being served, by id: a CANCEL frame cancels one
        self.serving: dict[int, asyncio.Task[None]] = {}
        self._next_id = 0
        self.closed = False
        self.hello = asyncio.Event()
        #: publishes dropped because the link's queue was full
        self.dropped = 0
        self.sent_batches = 0
        self.sent_frames = 0
        self._on_close: list[Callable[[Link], None]] = []
        self._on_hello: list[Callable[[Link], None]] = []
        self._runner: asyncio.Task[Any] | None = None
        #: when the last message from the peer was read (``loop.time()``): a sign of life
        self.heard_at = -math.inf
        self._liveness = liveness if liveness is not None else Liveness()
        self._watch = Watch(self._liveness)
        #: the watch's timer: armed while calls of ours are in flight (None: idle)
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watch_due = 0.0
        #: ids of the calls that may be given up when the peer falls silent (some may be
        #: answered already: the list is pruned lazily, like the deadline heap)
        self._abandonable: list[int] = []
        #: the probe queued and not written yet (the watch learns when it leaves)
        self._probe: pb.Frame | None = None
        self._on_reachability: list[Callable[[Link], None]] = []

    def __repr__(self) -> str:
        return f"<Link {self.local_id} ↔ {self.remote_id or '?'}>"

    def on_close(self, callback: Callable[[Link], None]) -> None:
        self._on_close.append(callback)

    def on_hello(self, callback: Callable[[Link], None]) -> None:
        """Run ``callback(link)`` when the peer's HELLO arrives, before any frame after it
        is handled (so that a call it sends next can already be answered over this link)."""
        self._on_hello.append(callback)

    def on_reachability(self, callback: Callable[[Link], None]) -> None:
        """Run ``callback(link)`` when the peer falls silent (:attr:`unreachable` turns
        true) and when, silent, it answers again (it turns false)."""
        self._on_reachability.append(callback)

    @property
    def unreachable(self) -> bool:
        """Whether the peer is judged silent: calls of ours waited for it, and it has
        answered nothing, not even a probe, for :attr:`Liveness.unreachable_after`."""
        return self._watch.silent

    @property
    def queued(self) -> int:
        return len(self._out)

    # ------------------------------------------------------------------ sending

    @property
    def full(self) -> bool:
        """Whether the queue of frames to write is at its bound (a call would wait)."""
        return not self._room.is_set()

    def _push(self, frame: pb.Frame, size: int, alone: bool = False) -> None:
        """Queue ``frame`` (whose payload is ``size`` bytes) for the writer. ``alone``: it
        is the only call in flight on this link, so nothing would join it in a batch."""
        out = self._out
        out.append(frame)
        self._out_bytes += size + 64
        if len(out) >= self._max_frames:
            self._room.clear()
        waiter = self._writer_idle
        if waiter is not None:  # the writer sleeps
            self._writer_idle = None
            if not waiter.done():
                # a lone call (or its answer) on an idle link leaves now: gRPC has it before
                # this loop turn ends. Otherwise the writer runs at the next turn, with what
                # else was queued in this one.
                lone = alone and len(out) == 1 and not self._dispatching
                waiter.set_result(self._start_write() if lone else None)

    def _start_write(self) -> Resume | BaseException | None:
        """Begin the write of what is queued: run it up to its first wait (gRPC has the
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
        except Exception as exc:  # the writer raises it, and the link ends
            return exc
        return Resume(write, first)

    async def call(self, frame: pb.Frame, at: float, *, abandonable: bool = False) -> pb.Frame:
        """Send a CALL frame (its ``id`` is set here) and wait for its REPLY or ERROR frame
        until ``at`` (``loop.time()``). Raises :class:`DeadlineExceeded` at the deadline
        and :class:`Unavailable` when the link closes first, or, for an ``abandonable``
        call (one that may go to another node), when the peer falls silent; cancelling
        the caller sends CANCEL to the remote handler. Waits for room in the queue first."""
        if len(self._out) >= self._max_frames:
            await self._wait_for_room()
        future = self.start_call(frame, at, abandonable=abandonable)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(frame.id)
            raise

    def start_call(
        self, frame: pb.Frame, at: float, *, abandonable: bool = False
    ) -> asyncio.Future[pb.Frame]:
        """Queue a CALL frame now and return the future of its REPLY or ERROR frame; it
        fails with :class:`DeadlineExceeded` at ``at`` (and CANCEL is sent) or with
        :class:`Unavailable` when the link closes, or when the peer falls silent if the
        call is ``abandonable`` (CANCEL is sent too). Never waits (multicast uses it)."""
        if self.closed:
            raise Unavailable(f"the link to {self.remote_id or 'its peer'} is closed")
        size = len(frame.payload)
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"the payload is {size} bytes; a message may carry "
                f"{self.max_payload} (mesh.max_message_bytes)"
            )
        self._next_id = call_id = self._next_id + 1
        frame.id = call_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[pb.Frame] = loop.create_future()
        pending = self._pending
        pending[call_id] = future
        # no timer per call: one per link, for the earliest deadline
        deadlines = self._deadlines
        heappush(deadlines, (at, call_id))
        if at < self._deadline_timer_at:
            self._arm_deadline_timer(at)
        elif len(deadlines) > 2 * len(pending) + 256:
            # answered calls linger in the heap until their deadline: drop them now
            self._deadlines = [entry for entry in deadlines if entry[1] in pending]
            heapify(self._deadlines)
        if abandonable:
            abandonable_ids = self._abandonable
            abandonable_ids.append(call_id)
            if len(abandonable_ids) > 2 * len(pending) + 256:
                self._abandonable = [i for i in abandonable_ids if i in pending]
        if self._watch_timer is None:  # one watch per link, not a timer per call
            self._start_watch(loop)
        self._push(frame, size, len(pending) == 1)
        return future

    def probe(self) -> None:
        """Ask the peer for a sign of life: a CALL frame that names no service, which
        every peer answers at once with an ERROR frame (no handler runs). The answer is
        not awaited: like every message read, it moves :attr:`heard_at`."""
        if not self.closed:
            self._next_id = call_id = self._next_id + 1
            self._probe = probe = pb.Frame(kind=CALL, id=call_id)
            self._push(probe, 0)

    def _start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self._watch.start(now, self.heard_at)
        self._watch_due = due = now + self._liveness.probe_after
        self._watch_timer = loop.call_at(due, self._on_watch_tick)

    def _on_watch_tick(self) -> None:
        """One tick of the liveness watch (see :mod:`wiremesh.core.ejection`)."""
        self._watch_timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        was_silent = self._watch.silent
        verdict = self._watch.tick(
            now, due=self._watch_due, heard_at=self.heard_at, outstanding=bool(self._pending)
        )
        if verdict is Verdict.IDLE:
            self._abandonable.clear()
            return
        if verdict is Verdict.PROBE:
            self.probe()
        elif verdict is Verdict.SILENT or verdict is Verdict.ABANDON:
            self._abandon(now - self._watch.quiet_since)
        if self._watch.silent != was_silent:
            for callback in self._on_reachability:
                try:
                    callback(self)
                except Exception:
                    log.exception("link reachability callback failed")
        if not self.closed:
            self._watch_due = due = now + self._liveness.probe_after
            self._watch_timer = loop.call_at(due, self._on_watch_tick)

    def _abandon(self, quiet: float) -> None:
        """Give up the abandonable calls in flight: the peer is silent, they may go to
        another node. CANCEL tells the peer, should it hear it."""
        ids, self._abandonable = self._abandonable, []
        if not ids:
            return
        peer = self.remote_id or "the peer"
        message = (
            f"no answer from {peer} for {quiet:.2g}s, not even to a probe: it is "
            "unreachable from here"
        )
        pending = self._pending
        for call_id in ids:
            future = pending.pop(call_id, None)
            if future is not None and not future.done():
                self._push(pb.Frame(kind=CANCEL, id=call_id), 0)
                future.set_exception(Unavailable(message, node=self.remote_id or None))

    def cancel(self, call_id: int) -> None:
        """Give up on call ``call_id``: forget it and tell the remote end."""
        future = self._pending.pop(call_id, None)
        if future is not None and not self.closed:
            self._push(pb.Frame(kind=CANCEL, id=call_id), 0)
        if future is not None and not future.done():
            future.cancel()

    def _arm_deadline_timer(self, at: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer_at = at
        self._deadline_timer = asyncio.get_running_loop().call_at(at, self._on_deadline)

    def _on_deadline(self) -> None:
        """Expire every call whose deadline passed; arm the timer for the next one."""
        self._deadline_timer = None
        self._deadline_timer_at = math.inf
        deadlines = self._deadlines
        pending = self._pending
        now = asyncio.get_running_loop().time()
        while deadlines:
            at, call_id = deadlines[0]
            if call_id not in pending:  # answered, cancelled or expired already
                heappop(deadlines)
            elif at <= now:
                heappop(deadlines)
                self._expire(call_id)
            else:
                self._arm_deadline_timer(at)
                return

    def _expire(self, call_id: int) -> None:
        future = self._pending.pop(call_id, None)
        if future is None or future.done():
            return
        if not self.closed:
            self._push(pb.Frame(kind=CANCEL, id=call_id), 0)
        future.set_exception(DeadlineExceeded("deadline exceeded", node=self.remote_id or None))

    async def _wait_for_room(self) -> None:
        while not self._room.is_set() and not self.closed:
            await self._room.wait()

    def reply(self, call_id: int, payload: bytes, node_id: str = "") -> None:
        if self.closed:
            return
        size = len(payload)
        if size > self.max_payload:
            from wiremesh.transport.wire import error_body

            error = PayloadTooLarge(
                f"the answer is {size} bytes; a message may carry {self.max_payload} "
                "(mesh.max_message_bytes)"
            )
            self.fail(call_id, error_body(error, node_id or self.local_id))
            return
        self._push(_Frame(kind=REPLY, id=call_id, payload=payload), size, len(self.serving) <= 1)

    def fail(self, call_id: int, error_json: str, *, not_run: bool = False) -> None:
        if not self.closed:
            frame = _Frame(kind=ERROR, id=call_id, error=error_json, not_run=not_run)
            self._push(frame, len(error_json))

    def publish(self, frame: pb.Frame, size: int | None = None) -> bool:
        """Queue a PUBLISH frame; False (and counted as dropped) when there is no room.
        ``size``: its payload's, when the caller knows it (reading it back copies it)."""
        if size is None:
            size = len(frame.payload)
        if size > self.max_payload:
            raise PayloadTooLarge(
                f"the payload is {size} bytes; a message may carry "
                f"{self.max_payload} (mesh.max_message_bytes)"
            )
        if self.closed or len(self._out) >= self._max_frames:
            self.dropped += 1
            return False
        self._push(frame, size)
        return True

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Read and write until the stream ends or fails; then fail what is pending."""
        self._runner = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop(), name=f"wiremesh-link-write-{self}")
        try:
            await self._read_loop()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as exc:
            log.debug("%r ended: %s", self, exc)
        except asyncio.CancelledError:
            if not self.closed:  # cancelled from outside, not by close()
                raise
        finally:
            self.close()  # first: whatever the writer ends with, nothing pending may hang
            writer.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._room.set()
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadline_timer_at = math.inf
        self._deadlines.clear()
        error = Unavailable(
            f"the link to {self.remote_id or 'its peer'} closed", node=self.remote_id or None
        )
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # its caller may be gone: no "never retrieved" noise
        self._pending.clear()
        for task in self.serving.values():
            task.cancel()
        cancel = getattr(self._stream, "cancel", None)  # a client-side call: end it
        if cancel is not None:
            cancel()
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
        for callback in self._on_close:
            try:
                callback(self)
            except Exception:
                log.exception("link close callback failed")

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream failed under a write: the link is over
            log.debug("%r: write failed: %r", self, exc)
            self.close()

    async def _write_batches(self) -> None:
        stream = self._stream
        loop = asyncio.get_running_loop()
        room = self._room
        batch_of = pb.Batch
        while True:
            if not self._out:
                # sleep until a frame is queued; whatever else is queued in the same loop
                # turn leaves with it, in one batch (or it was written at once: see _push)
                waiter = self._writer_idle = loop.create_future()
                started = await waiter
                if isinstance(started, BaseException):
                    raise started
                if started is not None:
                    await started
                continue
            frames = self._out
            size = self._out_bytes
            self._out = []
            self._out_bytes = 0
            if not room.is_set():
                room.set()
            self.sent_frames += len(frames)
            if size <= self._max_batch_bytes:
                self.sent_batches += 1
                await stream.write(batch_of(frames=frames))
            else:
                for batch in _split(frames, self._max_batch_bytes):  # big payloads: several
                    self.sent_batches += 1
                    await stream.write(batch_of(frames=batch))
            probe = self._probe
            if probe is not None and any(frame is probe for frame in frames):
                self._probe = None
                self._watch.probe_sent(loop.time())

    async def _read_loop(self) -> None:
        stream = self._stream
        pending = self._pending
        handler = self._handler
        clock = asyncio.get_running_loop().time
        while True:
            batch = await stream.read()
            if batch is _EOF or batch is None:
                return
            self.heard_at = clock()
            frames = batch.frames
            self._dispatching = len(frames) > 1
            for frame in frames:
                kind = frame.kind
                if kind in (REPLY, ERROR):
                    future = pending.pop(frame.id, None)
                    if future is not None and not future.done():
                        future.set_result(frame)
                elif kind == CALL:
                    if handler is None:
                        self.fail(frame.id, _no_handler(self.local_id))
                    else:
                        handler.on_call(self, frame)
                elif kind == PUBLISH:
                    if handler is not None:
                        handler.on_publish(self, frame)
                elif kind == CANCEL:
                    task = self.serving.pop(frame.id, None)
                    if task is not None:
                        task.cancel()
                elif kind == HELLO:
                    self.remote_id = frame.node_id
                    self.remote_service = frame.service
                    self.hello.set()
                    for callback in self._on_hello:
                        try:
                            callback(self)
                        except Exception:
                            log.exception("link hello callback failed")
            self._dispatching = False
            # Before asking gRPC for the next message (as costly as running a handler),
            # let what this batch woke run first (the callers and handlers), then the
            # writer with what they queued: the answers leave sooner, and nothing is lost
            # meanwhile (the next message waits in gRPC's buffers).
            for _ in range(_READ_DEFER_TURNS):
                await yield_now()
                if not self._out:
                    break


def _split(frames: list[pb.Frame], budget: int) -> list[list[pb.Frame]]:
    """``frames`` in order, in groups whose payloads fit in ``budget`` bytes each."""
    groups: list[list[pb.Frame]] = [[]]
    used = 0
    for frame in frames:
        cost = len(frame.payload) + 64
        if groups[-1] and used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(frame)
        used += cost
    return groups


def _no_handler(local_id: str) -> str:
    from wiremesh.transport.wire import error_body

    return error_body(Cancelled(f"{local_id} serves no calls"), local_id)


def error_of(frame: pb.Frame, node: str) -> WiremeshError:
    """The error an ERROR frame carries."""
    from wiremesh.transport.wire import error_from_body

    return error_from_body(frame.error, node=node)
