"""Mesh links: one long-lived gRPC stream between two wiremesh processes.

grpc.aio costs about the same per message whatever its size, so a link carries many
small frames — calls, replies, errors, cancels, publishes — in one gRPC message: frames
queued in the same event-loop turn leave together as one ``Batch``
(``proto/wiremesh/link/v1/link.proto``). When the link is idle a frame leaves at the
next turn, so batching adds no latency; under load batches grow by themselves while the
previous write is in flight.

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
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from wiremesh.errors import (
    Cancelled,
    DeadlineExceeded,
    PayloadTooLarge,
    Unavailable,
    WiremeshError,
)
from wiremesh.proto import link_pb2 as pb

__all__ = ["LINK_OPEN", "Frame", "Link", "LinkHandler"]

log = logging.getLogger("wiremesh.link")

LINK_SERVICE = "wiremesh.link.v1.Link"
#: bytes of a gRPC message kept for the frames' own fields, beside their payloads
FRAME_HEADROOM = 16 * 1024
LINK_OPEN = f"/{LINK_SERVICE}/Open"
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs do not know it
Frame = pb.Frame
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
        self._wake = asyncio.Event()
        self._wake.set()
        self._room = asyncio.Event()
        self._room.set()
        self._pending: dict[int, asyncio.Future[pb.Frame]] = {}
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
        self._runner: asyncio.Task[Any] | None = None

    def __repr__(self) -> str:
        return f"<Link {self.local_id} ↔ {self.remote_id or '?'}>"

    def on_close(self, callback: Callable[[Link], None]) -> None:
        self._on_close.append(callback)

    @property
    def queued(self) -> int:
        return len(self._out)

    # ------------------------------------------------------------------ sending

    def _push(self, frame: pb.Frame) -> None:
        out = self._out
        out.append(frame)
        self._out_bytes += len(frame.payload) + 64
        if len(out) == 1:
            self._wake.set()
        if len(out) >= self._max_frames:
            self._room.clear()

    async def call(self, frame: pb.Frame, at: float) -> pb.Frame:
        """Send a CALL frame (its ``id`` is set here) and wait for its REPLY or ERROR frame
        until ``at`` (``loop.time()``). Raises :class:`DeadlineExceeded` at the deadline
        and :class:`Unavailable` when the link closes first; cancelling the caller sends
        CANCEL to the remote handler. Waits for room in the queue first."""
        if not self._room.is_set():
            await self._wait_for_room()
        future = self.start_call(frame, at)
        try:
            return await future
        except asyncio.CancelledError:
            self.cancel(frame.id)
            raise

    def start_call(self, frame: pb.Frame, at: float) -> asyncio.Future[pb.Frame]:
        """Queue a CALL frame now and return the future of its REPLY or ERROR frame; it
        fails with :class:`DeadlineExceeded` at ``at`` (and CANCEL is sent) or with
        :class:`Unavailable` when the link closes. Never waits (multicast uses it)."""
        if self.closed:
            raise Unavailable(f"the link to {self.remote_id or 'its peer'} is closed")
        if len(frame.payload) > self.max_payload:
            raise PayloadTooLarge(
                f"the payload is {len(frame.payload)} bytes; a message may carry "
                f"{self.max_payload} (mesh.max_message_bytes)"
            )
        loop = asyncio.get_running_loop()
        self._next_id += 1
        call_id = frame.id = self._next_id
        future: asyncio.Future[pb.Frame] = loop.create_future()
        self._pending[call_id] = future
        timer = loop.call_at(at, self._expire, call_id)
        future.add_done_callback(lambda _: timer.cancel())
        self._push(frame)
        return future

    def cancel(self, call_id: int) -> None:
        """Give up on call ``call_id``: forget it and tell the remote end."""
        future = self._pending.pop(call_id, None)
        if future is not None and not self.closed:
            self._push(pb.Frame(kind=CANCEL, id=call_id))
        if future is not None and not future.done():
            future.cancel()

    def _expire(self, call_id: int) -> None:
        future = self._pending.pop(call_id, None)
        if future is None or future.done():
            return
        if not self.closed:
            self._push(pb.Frame(kind=CANCEL, id=call_id))
        future.set_exception(DeadlineExceeded("deadline exceeded", node=self.remote_id or None))

    async def _wait_for_room(self) -> None:
        while not self._room.is_set() and not self.closed:
            await self._room.wait()

    def reply(self, call_id: int, payload: bytes, node_id: str = "") -> None:
        if self.closed:
            return
        if len(payload) > self.max_payload:
            from wiremesh.transport.wire import error_body

            error = PayloadTooLarge(
                f"the answer is {len(payload)} bytes; a message may carry {self.max_payload} "
                "(mesh.max_message_bytes)"
            )
            self.fail(call_id, error_body(error, node_id or self.local_id))
            return
        self._push(pb.Frame(kind=REPLY, id=call_id, payload=payload))

    def fail(self, call_id: int, error_json: str, *, not_run: bool = False) -> None:
        if not self.closed:
            self._push(pb.Frame(kind=ERROR, id=call_id, error=error_json, not_run=not_run))

    def publish(self, frame: pb.Frame) -> bool:
        """Queue a PUBLISH frame; False (and counted as dropped) when there is no room."""
        if len(frame.payload) > self.max_payload:
            raise PayloadTooLarge(
                f"the payload is {len(frame.payload)} bytes; a message may carry "
                f"{self.max_payload} (mesh.max_message_bytes)"
            )
        if self.closed or len(self._out) >= self._max_frames:
            self.dropped += 1
            return False
        self._push(frame)
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
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            frames, self._out = self._out, []
            size, self._out_bytes = self._out_bytes, 0
            if not frames:
                continue
            self._room.set()
            self.sent_frames += len(frames)
            if size <= self._max_batch_bytes:
                self.sent_batches += 1
                await stream.write(pb.Batch(frames=frames))
                continue
            for batch in _split(frames, self._max_batch_bytes):  # big payloads: several
                self.sent_batches += 1
                await stream.write(pb.Batch(frames=batch))

    async def _read_loop(self) -> None:
        stream = self._stream
        pending = self._pending
        while True:
            batch = await stream.read()
            if batch is _EOF or batch is None:
                return
            for frame in batch.frames:
                kind = frame.kind
                if kind in (REPLY, ERROR):
                    future = pending.pop(frame.id, None)
                    if future is not None and not future.done():
                        future.set_result(frame)
                elif kind == CALL:
                    if self._handler is None:
                        self.fail(frame.id, _no_handler(self.local_id))
                    else:
                        self._handler.on_call(self, frame)
                elif kind == PUBLISH:
                    if self._handler is not None:
                        self._handler.on_publish(self, frame)
                elif kind == CANCEL:
                    task = self.serving.pop(frame.id, None)
                    if task is not None:
                        task.cancel()
                elif kind == HELLO:
                    self.remote_id = frame.node_id
                    self.remote_service = frame.service
                    self.hello.set()


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
