"""Mesh links: one long-lived gRPC stream between two wiremesh processes.

grpc.aio costs about the same per message whatever its size, so a link carries many
small frames — calls, replies, errors, cancels, publishes — in one gRPC message
(``Batch``, ``proto/wiremesh/link/v1/link.proto``). A link is a
:class:`~wiremesh.transport.batching.BatchedStream`: batching, no latency when idle,
reading and the bounds are that module's (and :mod:`wiremesh.core.batching`'s rules).
What a link adds, the rules being those of :mod:`wiremesh.core.calls` (numbers,
answers, deadlines, a silent peer, the peer's CANCEL), which :attr:`Link.calls` holds;
this module runs its two timers, sends its frames and resolves its futures:

- **Calls.** Each call has a number and a future; the REPLY or ERROR frame with that
  number resolves it. A call that is the only one in flight on its link (or the answer
  to such a call) is *alone*: its write starts at once, in the caller's own turn.
- **Deadlines.** One timer per link, armed for the earliest deadline of the calls in
  flight, instead of a timer per call.
- **Liveness.** One more timer per link, ticking while calls of ours are in flight, runs
  the rules of :mod:`wiremesh.core.ejection`: every message read is a sign of life (one
  timestamp per read); a link quiet for a while sends a *probe*, a CALL frame that names
  no service, which every peer answers at once with an ERROR frame; a peer that answers
  nothing is *silent*: the calls that may go elsewhere are given up (CANCEL is sent),
  and whoever listens (:meth:`Link.on_reachability`) ejects the peer. While the link
  itself does not read (see below), the peer's silence is not counted against it.

Both ends of a link are alike (:class:`Link`): either may call the other, and each
answers the other's calls on the same stream. The process that opened the stream is
the *opener*; the other accepted it in its ``Link/Open`` handler.

Limits: a frame carries at most ``max_message_bytes`` less 16 KiB of payload, and every
batch fits in ``max_message_bytes``. At most ``max_frames`` frames (by default
:data:`~wiremesh.core.batching.QUEUED_FRAMES`) and four messages' worth of bytes wait
to be written. A call waits for room (backpressure reaches the caller); a publish
never waits: when there is no room it is dropped and counted in :attr:`Link.dropped`;
an answer is always queued, but a link stops reading from its peer while the frames
queued and the calls it is serving reach ``max_frames`` (or the bytes their bound),
until the writer has made room: a peer that sends calls and never reads their answers
stops being read.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from wiremesh.core.batching import QUEUED_FRAMES, BatchLimits
from wiremesh.core.calls import LinkCalls
from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.core.ejection import Liveness
from wiremesh.errors import (
    Cancelled,
    DeadlineExceeded,
    PayloadTooLarge,
    Unavailable,
    WiremeshError,
)
from wiremesh.proto import link_pb2 as pb
from wiremesh.transport.batching import BatchedStream, Stream

__all__ = ["LINK_OPEN", "Frame", "Link", "LinkHandler"]

log = logging.getLogger("wiremesh.link")

LINK_SERVICE = "wiremesh.link.v1.Link"
LINK_OPEN = f"/{LINK_SERVICE}/Open"
Frame = _Frame = pb.Frame
HELLO, CALL, REPLY, ERROR, CANCEL, PUBLISH = (
    pb.Frame.HELLO,
    pb.Frame.CALL,
    pb.Frame.REPLY,
    pb.Frame.ERROR,
    pb.Frame.CANCEL,
    pb.Frame.PUBLISH,
)


class LinkHandler(Protocol):
    """The local side that serves what the remote end sends."""

    def on_call(self, link: Link, frame: pb.Frame) -> None:
        """Start serving a CALL frame; answer with ``link.reply`` or ``link.fail``."""
        ...

    def on_publish(self, link: Link, frame: pb.Frame) -> None:
        """Deliver a PUBLISH frame (never blocks)."""
        ...


class Link(BatchedStream[pb.Frame]):
    """One end of a mesh link. Call :meth:`run` (it returns when the stream ends)."""

    log = log  # what the batched stream logs goes to this module's logger

    def __init__(
        self,
        stream: Stream,
        *,
        local_id: str,
        local_service: str = "",
        handler: LinkHandler | None = None,
        max_frames: int = QUEUED_FRAMES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        liveness: Liveness | None = None,
    ) -> None:
        #: the calls on this link, both ways: the rules (numbers, answers, deadlines, a
        #: silent peer, the peer's CANCEL) are :mod:`wiremesh.core.calls`'; this class
        #: runs its timers, sends its frames and resolves its futures
        self.calls: LinkCalls[asyncio.Future[pb.Frame], asyncio.Task[None]] = LinkCalls(liveness)
        #: incoming calls being served, by id: a CANCEL frame cancels one (each owes the
        #: peer an answer: while they and the frames queued reach the bound, the link
        #: reads nothing more from its peer)
        self.serving = self.calls.serving
        super().__init__(
            stream,
            batch=pb.Batch,
            measure=pb.Frame.ByteSize,
            hello=pb.Frame(kind=HELLO, node_id=local_id, service=local_service),
            on_batch=self._received,
            limits=BatchLimits(max_message_bytes=max_message_bytes, max_frames=max_frames),
            owed=self.serving,
            kind="link",
        )
        self.local_id = local_id
        self.remote_id = ""
        self.remote_service = ""
        self._handler = handler
        #: the deadline timer, set for ``calls.wake_at`` (None, and inf: not set)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_at = math.inf
        self.hello = asyncio.Event()
        #: publishes dropped because the link's queue was full
        self.dropped = 0
        self._on_hello: list[Callable[[Link], None]] = []
        #: when the last message from the peer was read (``loop.time()``): a sign of life
        self.heard_at = -math.inf
        #: the watch's timer: set while calls of ours are in flight (``calls.watching``)
        self._watch_timer: asyncio.TimerHandle | None = None
        #: the probe queued and not written yet (the watch learns when it leaves)
        self._probe: pb.Frame | None = None
        self._on_reachability: list[Callable[[Link], None]] = []

    def __repr__(self) -> str:
        return f"<Link {self.local_id} ↔ {self.remote_id or '?'}>"

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
        return self.calls.silent

    @property
    def pending(self) -> int:
        """How many calls of ours wait for their answers on this link."""
        return len(self.calls.pending)

    # ------------------------------------------------------------------ sending

    async def call(self, frame: pb.Frame, at: float, *, abandonable: bool = False) -> pb.Frame:
        """Send a CALL frame (its ``id`` is set here) and wait for its REPLY or ERROR frame
        until ``at`` (``loop.time()``). Raises :class:`DeadlineExceeded` at the deadline
        and :class:`Unavailable` when the link closes first, or, for an ``abandonable``
        call (one that may go to another node), when the peer falls silent; cancelling
        the caller sends CANCEL to the remote handler. Waits for room in the queue first."""
        if self._outbox.full:
            await self.wait_for_room()
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
        calls = self.calls
        future: asyncio.Future[pb.Frame] = asyncio.get_running_loop().create_future()
        frame.id = calls.start(future, at, abandonable)
        # no timer per call: one per link, for the earliest deadline, and one watch
        if calls.wake_at < self._deadline_timer_at:
            self._arm_deadline_timer(calls.wake_at)
        if not calls.watching:
            self._start_watch()
        self.send(frame, size, len(calls.pending) == 1)
        return future

    def probe(self) -> None:
        """Ask the peer for a sign of life: a CALL frame that names no service, which
        every peer answers at once with an ERROR frame (no handler runs). The answer is
        not awaited: like every message read, it moves :attr:`heard_at`."""
        if not self.closed:
            self._probe = probe = pb.Frame(kind=CALL, id=self.calls.probe_number())
            self.on_written = self._probe_written
            self.send(probe, 0, False)

    def _start_watch(self) -> None:
        loop = asyncio.get_running_loop()
        due = self.calls.start_watch(loop.time(), self.heard_at)
        self._watch_timer = loop.call_at(due, self._on_watch_tick)

    def _on_watch_tick(self) -> None:
        """One tick of the liveness watch (see :mod:`wiremesh.core.calls`)."""
        self._watch_timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        tick = self.calls.tick(loop.time(), self.heard_at, reading=not self.reading_paused)
        if tick.probe:
            self.probe()
        if tick.abandoned:
            self._abandon(tick.abandoned, tick.quiet)
        if tick.reachability_changed:
            for callback in self._on_reachability:
                try:
                    callback(self)
                except Exception:
                    log.exception("link reachability callback failed")
        if tick.next_tick is not None and not self.closed:
            self._watch_timer = loop.call_at(tick.next_tick, self._on_watch_tick)

    def _abandon(
        self, calls: tuple[tuple[int, asyncio.Future[pb.Frame]], ...], quiet: float
    ) -> None:
        """Give up ``calls``: the peer is silent, they may go to another node. CANCEL
        tells the peer, should it hear it."""
        peer = self.remote_id or "the peer"
        message = (
            f"no answer from {peer} for {quiet:.2g}s, not even to a probe: it is "
            "unreachable from here"
        )
        for call_id, future in calls:
            if not future.done():
                self.send(pb.Frame(kind=CANCEL, id=call_id), 0, False)
                future.set_exception(Unavailable(message, node=self.remote_id or None))

    def cancel(self, call_id: int) -> None:
        """Give up on call ``call_id``: forget it and tell the remote end."""
        future = self.calls.cancel(call_id)
        if future is not None:
            if not self.closed:
                self.send(pb.Frame(kind=CANCEL, id=call_id), 0, False)
            if not future.done():
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
        calls = self.calls
        for call_id, future in calls.expire(asyncio.get_running_loop().time()):
            if future.done():
                continue
            if not self.closed:
                self.send(pb.Frame(kind=CANCEL, id=call_id), 0, False)
            future.set_exception(DeadlineExceeded("deadline exceeded", node=self.remote_id or None))
        if calls.wake_at != math.inf:
            self._arm_deadline_timer(calls.wake_at)

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
        self.send(_Frame(kind=REPLY, id=call_id, payload=payload), size, len(self.serving) <= 1)

    def fail(self, call_id: int, error_json: str, *, not_run: bool = False) -> None:
        if not self.closed:
            frame = _Frame(kind=ERROR, id=call_id, error=error_json, not_run=not_run)
            self.send(frame, len(error_json), False)

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
        if self.closed or self._outbox.full:
            self.dropped += 1
            return False
        self.send(frame, size, False)
        return True

    # ------------------------------------------------------------------ running

    def _closing(self) -> None:
        """The link closes: its timers stop, its calls fail ``Unavailable``, the handlers
        serving its peer's calls are cancelled."""
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadline_timer_at = math.inf
        waiters, serving = self.calls.close()
        error = Unavailable(
            f"the link to {self.remote_id or 'its peer'} closed", node=self.remote_id or None
        )
        for future in waiters:
            if not future.done():
                future.set_exception(error)
                future.exception()  # its caller may be gone: no "never retrieved" noise
        for task in serving:
            task.cancel()

    def _probe_written(self, frames: list[pb.Frame]) -> None:
        """Watch the messages written while a probe waits: the watch learns when it left."""
        probe = self._probe
        if probe is not None and any(frame is probe for frame in frames):
            self._probe = None
            self.on_written = None
            self.calls.probe_sent(self.clock())

    def _received(self, frames: Sequence[pb.Frame]) -> None:
        """Hand out the frames of one message from the peer, in order."""
        self.heard_at = self.clock()
        calls = self.calls
        handler = self._handler
        for frame in frames:
            kind = frame.kind
            if kind in (REPLY, ERROR):
                future = calls.answered(frame.id)
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
                task = calls.peer_cancelled(frame.id)
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


def _no_handler(local_id: str) -> str:
    from wiremesh.transport.wire import error_body

    return error_body(Cancelled(f"{local_id} serves no calls"), local_id)


def error_of(frame: pb.Frame, node: str) -> WiremeshError:
    """The error an ERROR frame carries."""
    from wiremesh.transport.wire import error_from_body

    return error_from_body(frame.error, node=node)
