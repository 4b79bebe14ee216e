"""Streaming calls over gRPC: the node's end (:class:`StreamMethod`) and the caller's
(:class:`Stream`).

A streaming ``@rpc`` method (:mod:`wiremesh.core.streams`) is a real gRPC streaming
method at ``/<service>/<method>``: server-streaming, client-streaming or bidirectional.
Every stream is an HTTP/2 stream of its own on the connection to the node, so it has its
own flow control: a reader that stops reading stops the writer at the other end once the
window is full (``await`` on the write), and neither end holds more than a window and a
batch or two. The call's deadline covers the whole stream; either end may cancel it (a
caller that stops iterating or closes its :class:`Stream`, a handler that raises), and an
error raised by the handler mid-stream reaches the caller, after the items sent before
it, as the typed error a unary call would give.

Items are batched between wiremesh peers (``wm-batch``): a writer hands each encoded item
to a :class:`Batcher`, which sends at once when nothing is on its way, and otherwise
gathers items until the write in flight ends, so that a fast writer sends few large
messages and an idle one sends each item without delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from wiremesh.context import Context, MeshCaller
from wiremesh.core.codec import CODECS, CodecName, decode
from wiremesh.core.deadline import Deadline
from wiremesh.core.drain import Drain, began_at, enter_work, leave_work
from wiremesh.core.shape import Shape
from wiremesh.core.streams import BATCH_BYTES, StreamShapes, add_item, split_encode, unframe
from wiremesh.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidPayload,
    WiremeshError,
)
from wiremesh.middleware import Invocation, Middleware, chain_of
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.service import MethodSpec, Service
from wiremesh.transport.dispatch import within
from wiremesh.transport.entrypoint import Pipeline
from wiremesh.transport.wire import (
    error_from_rpc_error,
    exception_type_name,
)

__all__ = ["Batcher", "Opened", "Stream", "StreamMethod", "check_items", "stream_handler"]

log = logging.getLogger("wiremesh.node")

Write = Callable[[bytes], Awaitable[None]]


class Batcher:
    """Writes encoded items through ``write``: each in a message of its own, or, with
    ``batch``, gathered into batch messages (:func:`~wiremesh.core.streams.frame`) while
    a write is on its way. :meth:`put` waits while a full batch waits behind the write in
    flight: at most two batches are held."""

    __slots__ = ("_error", "_flusher", "_parts", "_room", "_size", "batch", "limit", "write")

    def __init__(self, write: Write, *, batch: bool, limit: int = BATCH_BYTES) -> None:
        self.write = write
        self.batch = batch
        self.limit = limit
        #: the batch being gathered, as the parts :func:`add_item` makes
        self._parts: list[bytes] = []
        self._size = 0
        self._flusher: asyncio.Task[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    async def put(self, head: bytes, body: bytes) -> None:
        """Send one encoded item: ``head`` then ``body`` (see
        :func:`~wiremesh.core.streams.split_encode`)."""
        if not self.batch:
            await self.write(head + body if head else body)
            return
        if self._error is not None:
            raise self._error
        self._size += add_item(self._parts, head, body)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        elif self._size >= self.limit:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    async def _flush(self) -> None:
        try:
            while self._parts:
                parts, self._parts, self._size = self._parts, [], 0
                room, self._room = self._room, None
                if room is not None and not room.done():
                    room.set_result(None)
                await self.write(b"".join(parts))
        except BaseException as exc:
            # the writer learns of it from put() or close(), not from this task
            self._error = exc
            if self._room is not None and not self._room.done():
                self._room.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flusher = None

    async def close(self) -> None:
        """Send what is left; raises what a write raised."""
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(flusher)
        if self._error is not None:
            raise self._error
        if self._parts:
            parts, self._parts, self._size = self._parts, [], 0
            await self.write(b"".join(parts))

    def cancel(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()


def _items_in(
    messages: AsyncIterable[bytes],
    context: grpc.aio.ServicerContext[bytes, bytes],
    codec: str,
    batch: bool,
    shape: Shape,
) -> AsyncIterator[Any]:
    """The typed items of a stream of messages (batches, or one item each). A call that
    ends without its caller's half-close (cancelled, its connection gone: grpc may then
    end the messages as if all had come) raises :class:`asyncio.CancelledError`, so that
    a handler never takes a cut stream for a whole one. A wiremesh caller ends its items
    with an empty batch, so that its half-close cannot be mistaken either."""

    async def items() -> AsyncIterator[Any]:
        ended = False
        async for message in messages:
            if batch and not message:
                ended = True  # a wiremesh caller's end of its items (an empty batch)
                continue
            for raw in unframe(message) if batch else (message,):
                yield shape.validate(bytes(raw) if shape.is_protobuf else decode(raw, codec))  # type: ignore[arg-type]
        if context.cancelled() or (batch and not ended):
            raise asyncio.CancelledError("the caller's stream was cut")

    return items()


async def _opened(result: Any) -> AsyncIterator[Any]:
    """What a streaming handler returned, as an async iterator (an ``async def`` that
    returns one is awaited first)."""
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, AsyncIterable):
        raise TypeError(
            f"a streaming method returned {type(result).__name__}, not an async iterator"
        )
    return aiter(result)


class StreamMethod:
    """One streaming method of one service instance: its gRPC handler, per call."""

    def __init__(
        self,
        spec: MethodSpec,
        service: Service,
        service_name: str,
        node_id: str,
        caller: MeshCaller,
        metrics: MeshMetrics | None = None,
        drain: Drain | None = None,
        middleware: tuple[Middleware, ...] = (),
    ) -> None:
        assert spec.stream is not None
        self.name = spec.name
        self.service = service_name
        self.node_id = node_id
        self.stream: StreamShapes = spec.stream
        self.kind = spec.stream.kind
        self._shapes = spec.shapes
        self._func: Callable[..., Any] = getattr(service, spec.attribute)
        self._chain = chain_of(middleware)
        self._drain = drain
        self._pipeline = Pipeline(
            service_name,
            spec.name,
            node_id=node_id,
            mesh=caller,
            metrics=metrics.handled(service_name, spec.name) if metrics is not None else None,
        )

    def handler(
        self,
        codec: str,
        caller: str | None,
        work: str | None,
        extra: Mapping[str, str | bytes] | None,
        batch: bool,
        default_timeout: float,
        abort: Callable[[grpc.aio.ServicerContext[bytes, bytes], WiremeshError], Awaitable[None]],
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        """The gRPC handler of one call with this request metadata."""

        def begin(context: grpc.aio.ServicerContext[bytes, bytes]) -> Context:
            remaining = context.time_remaining()
            deadline = Deadline(
                time.monotonic() + (default_timeout if remaining is None else remaining)
            )
            return self._pipeline.context(
                deadline, metadata=extra, caller=caller, peer=context.peer()
            )

        async def guarded(
            context: grpc.aio.ServicerContext[bytes, bytes],
            ctx: Context,
            args: tuple[Any, ...],
            body: Callable[[], Awaitable[Any]],
            size: int,
        ) -> Any:
            running = self._run(ctx, args, work, body)
            if context.time_remaining() is None:  # no deadline from the caller: the node's
                running = within(default_timeout, running)
            try:
                return await self._pipeline.run(ctx, running, size)
            except WiremeshError as exc:
                await abort(context, exc)

        if codec not in CODECS:

            async def refuse(request: Any, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
                await abort(
                    context,
                    InvalidPayload(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}"),
                )

            return stream_handler(self.kind, refuse)
        name: CodecName = codec
        stream = self.stream
        gives = stream.gives
        reply_codec: CodecName = (
            "proto"
            if gives is not None and gives.is_protobuf
            else "msgpack"
            if name == "proto"
            else name
        )

        async def send_all(
            context: grpc.aio.ServicerContext[bytes, bytes], items: AsyncIterator[Any]
        ) -> None:
            batcher = Batcher(context.write, batch=batch)
            try:
                try:
                    async for item in items:
                        await batcher.put(*self._encode(item, reply_codec))
                except Exception:
                    # the items made before the handler's error reach the caller first
                    with contextlib.suppress(Exception):
                        await batcher.close()
                    raise
                await batcher.close()
            finally:
                batcher.cancel()
                closing = getattr(items, "aclose", None)
                if closing is not None:
                    await closing()

        if self.kind == "server":

            async def server(
                request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
            ) -> None:
                ctx = begin(context)

                async def body() -> None:
                    payload = request if self._shapes.takes_protobuf else decode(request, name)
                    a, k = self._shapes.arguments(payload)
                    await send_all(context, await _opened(self._func(ctx, *a, **k)))

                await guarded(context, ctx, (), body, len(request))

            return stream_handler("server", server)

        assert stream.takes is not None
        takes = stream.takes

        if self.kind == "client":

            async def client(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
            ) -> bytes:
                ctx = begin(context)
                items = _items_in(requests, context, name, batch, takes)

                async def body() -> bytes:
                    return b"".join(self._encode(await self._func(ctx, items), reply_codec))

                answer: bytes = await guarded(context, ctx, (items,), body, 0)
                return answer

            return stream_handler("client", client)

        async def bidi(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> None:
            ctx = begin(context)
            items = _items_in(requests, context, name, batch, takes)

            async def body() -> None:
                await send_all(context, await _opened(self._func(ctx, items)))

            await guarded(context, ctx, (items,), body, 0)

        return stream_handler("bidi", bidi)

    def _encode(self, value: Any, codec: CodecName) -> tuple[bytes, bytes]:
        try:
            return split_encode(value, codec)
        except InvalidPayload as exc:  # the handler made it: not the caller's fault
            raise InternalError(
                f"{self.service}.{self.name} gave what cannot travel: {exc.message}"
            ) from None

    async def _run(
        self,
        ctx: Context,
        args: tuple[Any, ...],
        age: str | None,
        body: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Run ``body`` (the whole stream) as part of its work, inside the middleware;
        a handler's own exception becomes :class:`InternalError`."""
        now = time.monotonic()
        drain = self._drain
        if drain is not None:
            drain.running += 1
            if ctx.caller is not None and age is not None:
                drain.called_by(ctx.caller, ctx.deadline.at, now)
        work = enter_work(now if age is None else began_at(age, now))
        try:
            if self._chain is None:
                return await body()
            run = Invocation("stream", self.service, self.name, ctx, args)
            return await self._chain.run(run, body)
        except WiremeshError:
            raise
        except Exception as exc:
            log.exception("%s.%s raised %s", self.service, self.name, type(exc).__name__)
            raise InternalError(str(exc), remote_type=exception_type_name(exc)) from None
        finally:
            leave_work(work)
            if drain is not None:
                drain.running -= 1


def stream_handler(kind: str, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler[bytes, bytes]:
    if kind == "server":
        return grpc.unary_stream_rpc_method_handler(behaviour)
    if kind == "client":
        return grpc.stream_unary_rpc_method_handler(behaviour)
    return grpc.stream_stream_rpc_method_handler(behaviour)


# ------------------------------------------------------------------ the caller's end


@dataclass(frozen=True, slots=True)
class Opened:
    """A streaming call as its caller (:meth:`~.client.Caller.stream`) started it."""

    #: the grpc.aio call
    call: Any
    #: ``server``, ``client`` or ``bidi``
    kind: str
    reply_codec: CodecName
    node_id: str
    #: called once when the call ends (the balancer counts it out)
    finish: Callable[[], None]


def check_items(target: str, payload: Any) -> None:
    """``payload`` is what a client-streaming or bidirectional call sends: an iterable or
    async iterable of items (not a string, bytes or a mapping), else InvalidPayload."""
    if isinstance(payload, str | bytes | dict) or not isinstance(payload, AsyncIterable | Iterable):
        raise InvalidPayload(
            f"{target} takes a stream: give an iterable or async iterable of items, not "
            f"{type(payload).__name__}"
        )


class Stream:
    """A streaming call, as its caller iterates it: ``async for item in stream``.

    Made by ``ctx.stream(...)`` (or a client's ``stream``); the call starts at the first
    iteration. A server-streaming method takes ``payload`` as a unary call does; a
    client-streaming or bidirectional one takes an iterable or async iterable of items,
    which a task of the stream sends while the caller reads. A client-streaming method's
    stream yields one item: its result. Leaving the ``async for`` early (the stream is
    dropped with it; one kept in a variable is closed by :meth:`aclose` or ``async
    with``) cancels the call at both ends. Errors are the typed errors of a unary
    call, raised by the iteration after the items that came before them.
    """

    def __init__(
        self,
        opener: Callable[[], Opened],
        decode: Callable[[bytes | memoryview, CodecName, Any], Any],
        target: str,
        payload: Any,
        *,
        at: float,
        returns: Any,
        codec: CodecName,
    ) -> None:
        self._opener = opener
        self._decoder = decode
        self._target = target
        self._payload = payload
        self._at = at
        self._returns = returns
        self._codec = codec
        self._call: Any = None
        self._kind = ""
        self._reply_codec: CodecName = codec
        self._node_id = ""
        self._ready: deque[Any] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._done = False
        self._finish: Callable[[], None] | None = None

    def __aiter__(self) -> Stream:
        return self

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> Any:
        if self._ready:
            if time.monotonic() >= self._at:  # (items that came before it are dropped)
                await self.aclose()
                raise DeadlineExceeded(f"the deadline of the stream of {self._target} passed")
            return self._ready.popleft()
        if self._done:
            raise StopAsyncIteration
        if self._call is None:
            self._open()
        try:
            if self._kind == "client":
                self._done = True
                response = await self._call
                await self._writer_done()
                self._end()
                return self._decode(response)
            while not self._ready:  # (an empty batch holds no item: read on)
                message = await self._call.read()
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                    self._done = True
                    await self._writer_done()
                    self._end()
                    raise StopAsyncIteration
                for raw in unframe(message):
                    self._ready.append(self._decode(raw))
            return self._ready.popleft()
        except grpc.aio.AioRpcError as exc:
            self._done = True
            await self._writer_done(quiet=True)
            self._end()
            raise error_from_rpc_error(exc, node=self._node_id) from None
        except asyncio.CancelledError:
            failure = self._writer_failure()
            await self.aclose()
            if failure is None:
                raise
            raise failure from None  # the caller's own items failed: the call was cancelled
        except BaseException:
            await self.aclose()
            raise

    def _writer_failure(self) -> BaseException | None:
        """What ended the task sending the caller's items, when it failed by itself."""
        writer = self._writer
        if writer is None or not writer.done() or writer.cancelled():
            return None
        failure = writer.exception()
        if isinstance(failure, grpc.aio.AioRpcError | grpc.aio.UsageError):
            return None
        return failure

    def _decode(self, raw: bytes | memoryview) -> Any:
        return self._decoder(raw, self._reply_codec, self._returns)

    def _open(self) -> None:
        opened = self._opener()
        self._call = opened.call
        self._kind = opened.kind
        self._reply_codec = opened.reply_codec
        self._node_id = opened.node_id
        self._finish = opened.finish
        if opened.kind != "server":
            self._writer = asyncio.get_running_loop().create_task(self._send(opened.call))

    async def _send(self, call: Any) -> None:
        """Send the caller's items, then half-close; an error of theirs cancels the call."""
        codec = self._codec
        items = self._payload
        batcher = Batcher(call.write, batch=True)
        try:
            if isinstance(items, AsyncIterable):
                async for item in items:
                    await batcher.put(*split_encode(item, codec))
            else:
                for item in items:
                    await batcher.put(*split_encode(item, codec))
            await batcher.close()
            await call.write(b"")  # the end of the items: a stream cut short has none
            await call.done_writing()
        except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError):
            batcher.cancel()
            raise
        except BaseException:
            batcher.cancel()
            call.cancel()
            raise

    async def _writer_done(self, *, quiet: bool = False) -> None:
        """Raise what sending the caller's items raised (an error of its own iterator)."""
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        if not writer.done():
            writer.cancel()
        try:
            await writer
        except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError):
            pass
        except BaseException:
            if not quiet:
                raise

    def _end(self) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()

    def __del__(self) -> None:
        # a loop left early drops the stream: its call ends with it, at both ends
        call = self._call
        if call is not None and not self._done:
            with contextlib.suppress(Exception):
                call.cancel()
                if self._writer is not None:
                    self._writer.cancel()
                self._end()

    async def aclose(self) -> None:
        """Cancel the call (at both ends) if it still runs."""
        self._done = True
        self._ready.clear()
        if self._call is not None and not self._call.done():
            self._call.cancel()
        await self._writer_done(quiet=True)
        self._end()
