"""The node's end of gateway streams: it runs the service's socket handler and hooks.

Each gateway opens one ``Gateway/Connect`` stream to the node (:meth:`SocketHub.accept`
is its gRPC handler). The frames of a session are handled in order, one at a time:

- **A task per handler call**, which also takes the session's next messages in order and
  ends when the session's inbox is empty. On Python 3.12+ it starts eagerly, in the
  stream's reader: a handler that finishes without waiting (an echo, a push into a stream
  with room) is done before its task would have been scheduled. It is a real task even
  then, so what a handler asks of its task (``asyncio.timeout``, a ``TaskGroup``,
  ``asyncio.current_task()``) is its own, never the stream reader's (a handler run
  inline, as this once did, timed out or cancelled the reader instead).
- **Bounds.** A session whose handler is busy keeps at most ``inbox_limit`` messages;
  one more closes the session with 4008 (its handler cannot keep up). Other sessions on
  the same stream are never held up by it.
- **Ends.** ``on_session_close`` runs once per session, after its last message: when the
  browser or the gateway closed it, when the node closed it, or when its gateway's stream
  ended (code 1006). Draining the node closes its sessions with 1012 first.

The turns of a session's messages are :class:`~wiremesh.core.session_inbox.SessionInbox`'s
rules; this module runs the handlers and does what it answers. Each session's record
(:class:`_Pinned`: its stream, its number, its inbox) is what the :class:`Session` holds,
as a :class:`~wiremesh.session.SessionHolder`; the hub is the
:class:`~wiremesh.session.SessionHub` of ``self.sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Awaitable, Coroutine
from typing import Any

from wiremesh.core.batching import BatchLimits
from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.core.session_inbox import OVERFLOW, RUN, SessionInbox
from wiremesh.errors import STATUS_TABLE, WiremeshError
from wiremesh.gateway.codes import (
    ABNORMAL,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    SERVICE_RESTART,
    SLOW_CONSUMER,
    CloseCode,
)
from wiremesh.gateway.frame_stream import (
    CLOSE,
    DATA,
    GATEWAY_SERVICE,
    HELLO,
    OPEN,
    PUSH,
    SUBSCRIBE,
    Frame,
    FrameStream,
)
from wiremesh.middleware import around
from wiremesh.observability import tracing
from wiremesh.service import Service, ServiceSpec
from wiremesh.session import Session, Sessions
from wiremesh.transport.entrypoint import Pipeline

__all__ = ["AUTHORIZE_TIMEOUT", "CHANNELS_KEY", "SOCKET_KEY", "SocketHub"]

log = logging.getLogger("wiremesh.node")

#: registry metadata of a node with an ``@on_socket`` method: "binary" or "text"
SOCKET_KEY = "wm.socket"
#: registry metadata of a node whose service owns channels: their rules, as JSON
#: (:func:`wiremesh.core.channels.rules_to_text`)
CHANNELS_KEY = "wm.channels"
#: seconds ``on_subscribe`` has to decide
AUTHORIZE_TIMEOUT = 5.0
#: the answer to a subscription ``on_subscribe`` refused
REFUSED_SUBSCRIPTION = 4403


class _Pinned:
    """The hub's record of one session pinned to this node: the stream it came by, its
    number there and its inbox. Its :class:`Session` holds it (it is the session's
    :class:`~wiremesh.session.SessionHolder`)."""

    __slots__ = ("hub", "inbox", "number", "session", "stream")

    session: Session

    def __init__(self, hub: SocketHub, stream: FrameStream, number: int) -> None:
        self.hub = hub
        self.stream = stream
        self.number = number
        self.inbox: SessionInbox[Frame] = SessionInbox(hub.inbox_limit)

    @property
    def closed(self) -> bool:
        return self.inbox.closed

    @property
    def full(self) -> bool:
        return self.stream.full

    def wait_for_room(self) -> Awaitable[None]:
        return self.stream.wait_for_room()

    def send(self, data: bytes | str) -> None:
        inbox = self.inbox
        if inbox.closed:
            return
        hub = self.hub
        frame = hub.data_frame(self.number, data)
        # alone (written at once on an idle stream) unless more answers follow in this
        # turn: the session's next messages, or other sessions' handlers about to run
        alone = not inbox and len(hub._tasks) <= 1
        self.stream.send(frame, len(frame.payload), alone)

    def close(self, code: int, reason: str) -> None:
        self.hub._close_session(self, code, reason)


class SocketHub:
    """Every browser session pinned to this node, and the streams of the gateways."""

    def __init__(
        self,
        spec: ServiceSpec,
        service: Service,
        *,
        node_id: str,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        inbox_limit: int = 1024,
    ) -> None:
        self.spec = spec
        self.service = service
        self.node_id = node_id
        self.max_message_bytes = max_message_bytes
        #: the largest browser message a frame to a gateway may carry
        self.max_payload = BatchLimits(max_message_bytes=max_message_bytes).max_payload
        if inbox_limit < 1:
            raise ValueError(f"a session's inbox holds at least 1 message, not {inbox_limit}")
        #: how many messages of a session may wait while its handler runs
        self.inbox_limit = inbox_limit
        self._handler = (
            around(
                spec.middleware,
                "socket",
                spec.name,
                spec.socket.attribute,
                getattr(service, spec.socket.attribute),
            )
            if spec.socket
            else None
        )
        #: the entrypoint pipeline a traced frame's handler runs in (a consumer span that
        #: continues the gateway's trace; a socket handler has no Context)
        self._pipeline = Pipeline(
            spec.name,
            spec.socket.attribute if spec.socket else "socket",
            node_id=node_id,
            kind="consumer",
        )
        cls = type(service)
        self._open_hook = cls.on_session_open is not Service.on_session_open
        self._close_hook = cls.on_session_close is not Service.on_session_close
        #: the stream of each gateway connected to this node, by gateway id
        self.streams: dict[str, FrameStream] = {}
        #: the sessions pinned to this node, by id and by principal
        self.by_id: dict[str, Session] = {}
        self.by_principal: dict[str, set[Session]] = {}
        #: each gateway stream's sessions, by their number on it
        self._tables: dict[FrameStream, dict[int, _Pinned]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.sessions = Sessions(self)
        service.sessions = self.sessions

    # ------------------------------------------------------------------ streams

    async def accept(self, context: Any) -> None:
        """Serve one gateway's stream (the ``Gateway/Connect`` handler) until it ends."""
        stream = FrameStream(
            context,
            local_id=self.node_id,
            on_batch=self._on_batch,
            max_message_bytes=self.max_message_bytes,
        )
        self._tables[stream] = {}
        stream.on_close(self._stream_ended)
        await stream.run()

    def _stream_ended(self, stream: FrameStream) -> None:
        if self.streams.get(stream.remote_id) is stream:
            del self.streams[stream.remote_id]
        table = self._tables.pop(stream, {})
        for pinned in table.values():
            if not pinned.closed:
                self._ended(pinned, ABNORMAL, "the gateway stream ended")

    def _on_batch(self, stream: FrameStream, frames: Any) -> None:
        table = self._tables.get(stream)
        if table is None:
            return
        for frame in frames:
            kind = frame.kind
            if kind == DATA:
                pinned = table.get(frame.session)
                if pinned is not None:
                    # what _deliver does, written out: this is the path of every message
                    action = pinned.inbox.arrived(frame)
                    if action is RUN:
                        self._run(pinned, frame)
                    elif action is OVERFLOW:
                        self._overflowed(pinned)
            elif kind == OPEN:
                self._open(stream, table, frame)
            elif kind == CLOSE:
                pinned = table.get(frame.session)
                if pinned is not None and not pinned.closed:
                    self._ended(pinned, frame.code, frame.reason)
            elif kind == SUBSCRIBE:
                self._spawn(self._authorize(stream, frame))
            elif kind == HELLO:
                current = self.streams.get(frame.sender)
                if current is not None and current is not stream:
                    current.close()  # the gateway reconnected: the old stream is stale
                self.streams[frame.sender] = stream

    # ------------------------------------------------------------------ channels

    async def _authorize(self, stream: FrameStream, frame: Frame) -> None:
        """The gateway asks whether a session may subscribe to a channel this service
        owns: ``on_subscribe`` answers (within :data:`AUTHORIZE_TIMEOUT` seconds)."""
        from wiremesh.channels import SubscribeRequest

        try:
            claims = json.loads(frame.claims) if frame.claims else {}
        except (ValueError, RecursionError):
            claims = {}
        request = SubscribeRequest(
            channel=frame.channel,
            session_id=frame.session_id,
            principal=frame.principal,
            claims=claims if isinstance(claims, dict) else {},
        )
        code, reason = REFUSED_SUBSCRIPTION, f"{self.spec.name} does not allow it"
        try:
            async with asyncio.timeout(AUTHORIZE_TIMEOUT):
                allowed = await self.service.on_subscribe(request)
            if allowed is True:
                code, reason = 0, ""
        except WiremeshError as exc:
            reason = exc.message
        except TimeoutError:
            reason = f"{self.spec.name} did not decide within {AUTHORIZE_TIMEOUT:g} s"
        except Exception as exc:
            log.error(
                "on_subscribe raised %s for channel %r",
                type(exc).__name__,
                frame.channel,
                exc_info=exc,
            )
            reason = "internal error"
        if not stream.closed:
            await _push(
                stream,
                Frame(kind=SUBSCRIBE, session=frame.session, code=code, reason=_reason(reason)),
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ sessions

    def _open(self, stream: FrameStream, table: dict[int, _Pinned], frame: Frame) -> None:
        number = frame.session
        if self.closing or self._handler is None:
            code, reason = (
                (SERVICE_RESTART, "the node is draining")
                if self.closing
                else (INTERNAL_ERROR, "this node has no socket handler")
            )
            stream.send(Frame(kind=CLOSE, session=number, code=code, reason=reason))
            return
        try:
            claims = json.loads(frame.claims) if frame.claims else {}
        except (ValueError, RecursionError):  # what a gateway sends is checked, not trusted
            claims = {}
        replaced = table.get(number)
        if replaced is not None and not replaced.closed:
            # a gateway numbers its sessions once: a number used again ends the old session
            # (its close hook runs) rather than leave it in the tables for the node's life
            self._ended(replaced, POLICY_VIOLATION, "its number was opened again")
        pinned = _Pinned(self, stream, number)
        session = pinned.session = Session(
            pinned,
            session_id=frame.session_id,
            principal=frame.principal,
            claims=claims if isinstance(claims, dict) else {},
            service=frame.service,
            node_id=self.node_id,
            path=frame.path,
            origin=frame.origin,
            remote=frame.remote,
        )
        table[number] = pinned
        self.by_id[session.id] = session
        self.by_principal.setdefault(session.principal, set()).add(session)
        if self._open_hook:
            self._deliver(pinned, frame)

    def _close_session(self, pinned: _Pinned, code: int, reason: str) -> None:
        """The node ends a session: tell its gateway, then run the close hook."""
        pinned.stream.send(Frame(kind=CLOSE, session=pinned.number, code=code, reason=reason))
        self._ended(pinned, code, reason)

    def _ended(self, pinned: _Pinned, code: int, reason: str) -> None:
        """A session is over: forget it, and queue its close hook after its messages."""
        last = pinned.inbox.close(
            Frame(kind=CLOSE, code=code, reason=reason) if self._close_hook else None
        )
        table = self._tables.get(pinned.stream)
        if table is not None and table.get(pinned.number) is pinned:
            del table[pinned.number]
        session = pinned.session
        if self.by_id.get(session.id) is session:
            del self.by_id[session.id]
        same = self.by_principal.get(session.principal)
        if same is not None:
            same.discard(session)
            if not same:
                del self.by_principal[session.principal]
        if last is not None:
            self._run(pinned, last)

    async def push_to_session(self, session_id: str, data: bytes | str) -> bool:
        """Send one message to session ``session_id`` of another node, through the gateway
        that holds it (its id names it). False when that gateway has no stream here."""
        gateway = session_id.rpartition(".")[0]
        stream = self.streams.get(gateway)
        if stream is None or stream.closed:
            return False
        await _push(stream, self.push_frame(data, session_id=session_id))
        return True

    async def push_to_principal(self, principal: str, data: bytes | str) -> int:
        """Send one message to every gateway connected to this node, for the sessions of
        ``principal`` it holds. Returns the number of gateways reached."""
        frame = self.push_frame(data, principal=principal)
        reached = 0
        for stream in list(self.streams.values()):
            if not stream.closed:
                await _push(stream, frame)
                reached += 1
        return reached

    def data_frame(self, number: int, data: bytes | str) -> Frame:
        text = isinstance(data, str)
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self._check_size(len(payload))
        return Frame(kind=DATA, session=number, payload=payload, text=text)

    def push_frame(self, data: bytes | str, *, session_id: str = "", principal: str = "") -> Frame:
        text = isinstance(data, str)
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self._check_size(len(payload))
        return Frame(
            kind=PUSH, session_id=session_id, principal=principal, payload=payload, text=text
        )

    def _check_size(self, size: int) -> None:
        if size > self.max_payload:
            from wiremesh.errors import PayloadTooLarge

            raise PayloadTooLarge(
                f"a browser message is at most {self.max_payload} bytes here "
                f"(mesh.max_message_bytes less room for the frame), not {size}"
            )

    # ------------------------------------------------------------------ running handlers

    def _deliver(self, pinned: _Pinned, frame: Frame) -> None:
        """A message of the session arrived: run it, let it wait, or end the session."""
        action = pinned.inbox.arrived(frame)
        if action is RUN:
            self._run(pinned, frame)
        elif action is OVERFLOW:
            self._overflowed(pinned)

    def _overflowed(self, pinned: _Pinned) -> None:
        """The session's handler is ``inbox_limit`` messages behind: end the session."""
        log.warning(
            "session %s: its handler is %d messages behind; closing it",
            pinned.session.id,
            self.inbox_limit,
        )
        self._close_session(pinned, SLOW_CONSUMER, "the node cannot keep up")

    def _run(self, pinned: _Pinned, frame: Frame) -> None:
        """Run the session's work for ``frame`` in a task of its own (started at once on
        Python 3.12+), which then handles what the session's inbox gives next."""
        # the handler runs in a context of its own: what it sets (the current span, say)
        # stays its
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        work = self._finish(pinned, frame)
        if sys.version_info >= (3, 12):
            task = asyncio.Task(work, loop=loop, context=context, eager_start=True)
            if task.done():
                return
        else:
            task = loop.create_task(work, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, pinned: _Pinned, frame: Frame) -> None:
        """Handle ``frame``, then what queued for the session meanwhile, in order."""
        inbox = pinned.inbox
        try:
            waiting: Frame | None = frame
            while waiting is not None:
                try:
                    await self._work(pinned, waiting)
                except Exception as exc:
                    self._failed(pinned, waiting, exc)
                waiting = inbox.finished()
        except BaseException:
            # cancelled (the node stops): what waits is dropped, so nothing stays behind it
            while inbox.finished() is not None:
                pass
            raise

    def _work(self, pinned: _Pinned, frame: Frame) -> Coroutine[Any, Any, None]:
        """The coroutine that handles ``frame``: the socket handler or a hook."""
        session = pinned.session
        kind = frame.kind
        if kind == DATA:
            assert self._handler is not None
            payload: bytes | str = frame.payload
            if frame.text:
                try:
                    payload = frame.payload.decode()
                except UnicodeDecodeError:  # ends this session, never the whole stream
                    self._close_session(
                        pinned, CloseCode.INVALID_DATA, "a text message must be UTF-8"
                    )
                    return _nothing()
            result: Coroutine[Any, Any, None] = self._handler(session, payload)
            if frame.trace and tracing.enabled():
                return self._pipeline.run(
                    None,
                    result,
                    len(frame.payload),
                    carrier=frame.trace,
                    attributes={"wiremesh.session": session.id},
                )
            return result
        if kind == OPEN:
            return self.service.on_session_open(session)
        return self.service.on_session_close(session, frame.code, frame.reason)

    def _failed(self, pinned: _Pinned, frame: Frame, exc: Exception) -> None:
        """``frame``'s work raised ``exc``: the session ends with the error's close code
        (a close hook's error is only logged)."""
        session = pinned.session
        kind = frame.kind
        if kind == CLOSE:
            log.error("session %s: on_session_close raised %r", session.id, exc)
            return
        if isinstance(exc, WiremeshError):
            code = STATUS_TABLE[exc.status].ws_close_code
            reason = exc.message
        else:
            code, reason = INTERNAL_ERROR, "internal error"
            where = "on_session_open" if kind == OPEN else "the socket handler"
            log.error(
                "session %s: %s raised %s",
                session.id,
                where,
                type(exc).__name__,
                exc_info=exc,
            )
        if not pinned.closed:
            self._close_session(pinned, code, _reason(reason))

    # ------------------------------------------------------------------ draining

    async def close(self, grace: float) -> None:
        """Drain: close every session with 1012 (its browser reconnects to a live node),
        let the close hooks run within ``grace`` seconds, then end the streams."""
        self.closing = True
        for pinned in [p for table in self._tables.values() for p in table.values()]:
            if not pinned.closed:
                self._close_session(pinned, SERVICE_RESTART, "the node is draining")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for _ in range(50):  # let the writers take the CLOSE frames
            if not any(s.queued for s in self._tables):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        for stream in list(self._tables):
            stream.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def gateway_method_handler(hub: SocketHub) -> Any:
    """The gRPC ``Gateway`` service of a node, as a generic handler."""
    import grpc

    from wiremesh.proto import gateway_pb2 as pb

    async def connect(requests: Any, context: Any) -> None:
        await hub.accept(context)

    return grpc.method_handlers_generic_handler(
        GATEWAY_SERVICE,
        {
            "Connect": grpc.stream_stream_rpc_method_handler(
                connect,
                request_deserializer=pb.Batch.FromString,
                response_serializer=pb.Batch.SerializeToString,
            )
        },
    )


async def _push(stream: FrameStream, frame: Frame) -> None:
    """Queue ``frame`` on ``stream``, once it has room."""
    if stream.full:
        await stream.wait_for_room()
    stream.send(frame, len(frame.payload))


def _reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close reason may hold, on a character boundary."""
    data = text.encode()
    if len(data) <= 123:
        return text
    return data[:123].decode(errors="ignore")


async def _nothing() -> None:
    """The work of a message that ended its session before any handler ran."""
