"""The node's end of gateway streams: it runs the service's socket handler and hooks.

Each gateway opens one ``Gateway/Connect`` stream to the node (:meth:`SocketHub.accept`
is its gRPC handler). The frames of a session are handled in order, one at a time:

- **No task per message.** A handler call is started inline, in the stream's reader; when
  it finishes without waiting (an echo, a push into a stream with room) that is all it
  costs. Only a handler that waits gets a task, which then also takes the session's next
  messages in order, and ends when the session's inbox is empty.
- **Bounds.** A session whose handler is busy keeps at most ``inbox_limit`` messages;
  one more closes the session with 4008 (its handler cannot keep up). Other sessions on
  the same stream are never held up by it.
- **Ends.** ``on_session_close`` runs once per session, after its last message: when the
  browser or the gateway closed it, when the node closed it, or when its gateway's stream
  ended (code 1006). Draining the node closes its sessions with 1012 first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from wiremesh.core.batching import BatchLimits
from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.errors import STATUS_TABLE, WiremeshError
from wiremesh.gateway.codes import (
    ABNORMAL,
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    SERVICE_RESTART,
    SLOW_CONSUMER,
    CloseCode,
)
from wiremesh.gateway.stream import (
    CLOSE,
    DATA,
    GATEWAY_SERVICE,
    HELLO,
    OPEN,
    PUSH,
    Frame,
    FrameStream,
)
from wiremesh.observability import tracing
from wiremesh.service import Service, ServiceSpec
from wiremesh.session import Session, Sessions
from wiremesh.transport.eager import Resume

__all__ = ["SOCKET_KEY", "SocketHub"]

log = logging.getLogger("wiremesh.node")

#: registry metadata of a node with an ``@on_socket`` method: "binary" or "text"
SOCKET_KEY = "wm.socket"


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
        self.inbox_limit = inbox_limit
        self._handler = getattr(service, spec.socket.attribute) if spec.socket else None
        self._trace_name = f"{spec.name}.{spec.socket.attribute if spec.socket else 'socket'}"
        cls = type(service)
        self._open_hook = cls.on_session_open is not Service.on_session_open
        self._close_hook = cls.on_session_close is not Service.on_session_close
        #: the stream of each gateway connected to this node, by gateway id
        self.streams: dict[str, FrameStream] = {}
        self.by_id: dict[str, Session] = {}
        self.by_principal: dict[str, set[Session]] = {}
        self._tables: dict[FrameStream, dict[int, Session]] = {}
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
        for session in table.values():
            if not session.closed:
                session.closed = True
                self._ended(session, ABNORMAL, "the gateway stream ended")

    def _on_batch(self, stream: FrameStream, frames: Any) -> None:
        table = self._tables.get(stream)
        if table is None:
            return
        for frame in frames:
            kind = frame.kind
            if kind == DATA:
                session = table.get(frame.session)
                if session is not None and not session.closed:
                    self._deliver(session, frame)
            elif kind == OPEN:
                self._open(stream, table, frame)
            elif kind == CLOSE:
                session = table.get(frame.session)
                if session is not None and not session.closed:
                    session.closed = True
                    self._ended(session, frame.code, frame.reason)
            elif kind == HELLO:
                current = self.streams.get(frame.sender)
                if current is not None and current is not stream:
                    current.close()  # the gateway reconnected: the old stream is stale
                self.streams[frame.sender] = stream

    # ------------------------------------------------------------------ sessions

    def _open(self, stream: FrameStream, table: dict[int, Session], frame: Frame) -> None:
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
            replaced.closed = True
            self._ended(replaced, POLICY_VIOLATION, "its number was opened again")
        session = Session(
            self,
            stream,
            number,
            session_id=frame.session_id,
            principal=frame.principal,
            claims=claims if isinstance(claims, dict) else {},
            service=frame.service,
            node_id=self.node_id,
            path=frame.path,
            origin=frame.origin,
            remote=frame.remote,
        )
        table[number] = session
        self.by_id[session.id] = session
        self.by_principal.setdefault(session.principal, set()).add(session)
        if self._open_hook:
            self._deliver(session, frame)

    def close_session(self, session: Session, code: int, reason: str) -> None:
        """The node ends ``session``: tell its gateway, then run the close hook."""
        session.closed = True
        stream = session._stream
        stream.send(Frame(kind=CLOSE, session=session._number, code=code, reason=reason))
        self._ended(session, code, reason)

    def _ended(self, session: Session, code: int, reason: str) -> None:
        """``session`` is over: forget it, and queue its close hook after its messages."""
        table = self._tables.get(session._stream)
        if table is not None and table.get(session._number) is session:
            del table[session._number]
        if self.by_id.get(session.id) is session:
            del self.by_id[session.id]
        same = self.by_principal.get(session.principal)
        if same is not None:
            same.discard(session)
            if not same:
                del self.by_principal[session.principal]
        if self._close_hook:
            self._deliver(session, Frame(kind=CLOSE, code=code, reason=reason), force=True)
        else:
            session._inbox.clear()

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

    def _deliver(self, session: Session, frame: Frame, *, force: bool = False) -> None:
        if session._busy:
            if len(session._inbox) >= self.inbox_limit and not force:
                log.warning(
                    "session %s: its handler is %d messages behind; closing it",
                    session.id,
                    self.inbox_limit,
                )
                session._inbox.clear()
                self.close_session(session, SLOW_CONSUMER, "the node cannot keep up")
                return
            session._inbox.append(frame)
            return
        # the handler runs in a context of its own, begun here and finished (if it waits)
        # in a task of that same context: what it sets (the current span, say) stays its
        coro = self._work(session, frame)
        context = contextvars.copy_context()
        try:
            waits_on = context.run(coro.send, None)
        except StopIteration:
            return
        except Exception as exc:
            self._failed(session, frame, exc)
            return
        session._busy = True
        task = asyncio.get_running_loop().create_task(
            self._finish(session, frame, Resume(coro, waits_on)), context=context
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, session: Session, frame: Frame, started: Resume) -> None:
        """Finish a handler that had to wait, then handle what queued meanwhile."""
        try:
            try:
                await started
            except Exception as exc:
                self._failed(session, frame, exc)
            inbox = session._inbox
            while inbox:
                frame = inbox.popleft()
                try:
                    await self._work(session, frame)
                except Exception as exc:
                    self._failed(session, frame, exc)
        finally:
            session._busy = False

    def _work(self, session: Session, frame: Frame) -> Coroutine[Any, Any, None]:
        kind = frame.kind
        if kind == DATA:
            assert self._handler is not None
            payload: bytes | str = frame.payload
            if frame.text:
                try:
                    payload = frame.payload.decode()
                except UnicodeDecodeError:  # ends this session, never the whole stream
                    self.close_session(
                        session, CloseCode.INVALID_DATA, "a text message must be UTF-8"
                    )
                    return _nothing()
            result: Coroutine[Any, Any, None] = self._handler(session, payload)
            if frame.trace and tracing.enabled():
                return self._traced(result, session, len(frame.payload), frame.trace)
            return result
        if kind == OPEN:
            return self.service.on_session_open(session)
        return self.service.on_session_close(session, frame.code, frame.reason)

    async def _traced(
        self,
        handling: Coroutine[Any, Any, None],
        session: Session,
        size: int,
        carrier: Mapping[str, str],
    ) -> None:
        """``handling`` inside a span that continues the gateway's trace."""
        span = tracing.server_span(
            self._trace_name, carrier, node=self.node_id, size=size, kind="consumer"
        )
        status = "ok"
        try:
            await handling
        except WiremeshError as exc:
            status = exc.status.value
            raise
        except BaseException:
            status = "internal"
            raise
        finally:
            if span is not None:
                span.set("wiremesh.session", session.id)
                span.end(status)

    def _failed(self, session: Session, frame: Frame, exc: Exception) -> None:
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
        if not session.closed:
            self.close_session(session, code, _reason(reason))

    # ------------------------------------------------------------------ draining

    async def close(self, grace: float) -> None:
        """Drain: close every session with 1012 (its browser reconnects to a live node),
        let the close hooks run within ``grace`` seconds, then end the streams."""
        self.closing = True
        for session in list(self.by_id.values()):
            if not session.closed:
                self.close_session(session, SERVICE_RESTART, "the node is draining")
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


def _reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close reason may hold, on a character boundary."""
    data = text.encode()
    if len(data) <= 123:
        return text
    return data[:123].decode(errors="ignore")


async def _nothing() -> None:
    """The work of a message that ended its session before any handler ran."""
