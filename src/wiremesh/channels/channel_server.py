"""The embedded channel engine's server: a gRPC service that the embedded registry's
server also serves (:class:`~wiremesh.registry.embedded.RegistryServer` builds a
:class:`ChannelServer` and adds its handlers), on the registry's port. Its client, what it
promises and its bounds are :mod:`wiremesh.channels.embedded`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

import grpc

from wiremesh.channels.embedded import (
    HISTORY_REPLY_BYTES,
    JOIN_KEY,
    KIND_NAMES,
    MAX_CHANNELS,
    MAX_HISTORY_SIZE,
    MAX_PENDING,
    MAX_PENDING_BYTES,
    MAX_WATCHES,
    REPLY_BYTES,
    SERVICE,
    SWEEP_EVERY,
    member_from_proto,
    member_json,
    member_to_proto,
    publication_to_proto,
)
from wiremesh.core.channels import (
    MAX_CHANNEL_LENGTH,
    ChannelLog,
    Found,
    Member,
    Position,
    Publication,
    check_channel,
)
from wiremesh.core.presence import MAX_MEMBERS, Presence
from wiremesh.errors import (
    InvalidPayload,
)
from wiremesh.proto import channels_pb2 as pb

__all__ = ["ChannelServer", "Refusals"]

log = logging.getLogger("wiremesh.channels")

#: seconds a refused Watch stream waits for its first request
_FIRST_REQUEST_WAIT = 2.0


class Refusals(Protocol):
    """What logs refused calls (the registry's: one line per interval)."""

    def add(self, peer: str, now: float) -> None: ...

    def flush(self, now: float) -> None: ...


class _Watcher:
    """One Watch stream at the server: what waits to be written to it, in order, as
    serialized ``WatchReply`` fragments (which protobuf lets us join)."""

    __slots__ = ("channels", "ended", "owner", "pending", "pending_bytes", "wake")

    def __init__(self) -> None:
        self.owner = ""
        self.channels: set[str] = set()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.wake: asyncio.Future[None] | None = None
        #: set once the stream is over; its result says how (None: it ended well)
        self.ended: asyncio.Future[tuple[grpc.StatusCode, str] | None] = (
            asyncio.get_running_loop().create_future()
        )

    def push(self, fragment: bytes, max_pending: int, max_bytes: int) -> None:
        if self.ended.done():
            return
        self.pending.append(fragment)
        self.pending_bytes += len(fragment)
        if len(self.pending) > max_pending or self.pending_bytes > max_bytes:
            # a reader that falls this far behind is dropped, not waited for
            self.end(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this watcher fell {len(self.pending)} messages ({self.pending_bytes} bytes) "
                f"behind; at most {max_pending} ({max_bytes} bytes) wait for a reader",
            )
            return
        wake = self.wake
        if wake is not None:
            self.wake = None
            if not wake.done():
                wake.set_result(None)

    def take(self) -> bytes:
        """The fragments that fit in one reply, joined (at least one)."""
        pending = self.pending
        size = count = 0
        for fragment in pending:
            if count and size + len(fragment) > REPLY_BYTES:
                break
            size += len(fragment)
            count += 1
        taken = pending[:count]
        del pending[:count]
        self.pending_bytes -= size
        return b"".join(taken)

    def end(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        if not self.ended.done():
            self.ended.set_result(None if code is None else (code, details))
        wake, self.wake = self.wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)


def _ack(request_id: int) -> bytes:
    return pb.WatchReply(acks=[request_id]).SerializeToString()


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ChannelServer:
    """The channels' logs, presence and watchers, served over gRPC (see the module
    docstring). ``admits(context)`` says whether a call may be served; ``refusals`` logs
    those it refuses."""

    def __init__(
        self,
        *,
        admits: Callable[[Any], bool] | None = None,
        refusals: Refusals | None = None,
        max_channels: int = MAX_CHANNELS,
        max_members: int = MAX_MEMBERS,
        max_pending: int = MAX_PENDING,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admits = admits or (lambda context: True)
        self.refusals = refusals
        self.max_channels = max_channels
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.clock = clock
        self.logs: dict[str, ChannelLog] = {}
        self.presence = Presence(max_members)
        #: the Watch streams of each channel
        self.watchers: dict[str, set[_Watcher]] = {}
        #: open Watch streams per owner
        self.owners: dict[str, int] = {}
        self.streams: set[_Watcher] = set()
        self._swept = -math.inf
        self._closing = False

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        def unary(method: Callable[..., Any], request: Any, reply: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                self._guarded(method),
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )

        handlers = {
            "Publish": unary(self.publish, pb.PublishRequest, pb.Position),
            "History": unary(self.history, pb.HistoryRequest, pb.HistoryReply),
            "Join": unary(self.join, pb.JoinRequest, pb.JoinReply),
            "Leave": unary(self.leave, pb.LeaveRequest, pb.Members),
            "Presence": unary(self.members, pb.ChannelRequest, pb.Members),
            "Refresh": unary(self.refresh, pb.RefreshRequest, pb.RefreshReply),
            "Sweep": unary(self.sweep_channel, pb.ChannelRequest, pb.Members),
            # sends serialized WatchReply messages, joined from fragments
            "Watch": grpc.stream_stream_rpc_method_handler(
                self._watch, request_deserializer=pb.WatchRequest.FromString
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _guarded(self, method: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        async def serve(request: Any, context: Any) -> Any:
            await self._admit(context)
            try:
                return method(request)
            except _Refused as refused:
                await context.abort(refused.code, refused.details)
            except InvalidPayload as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)

        return serve

    async def _admit(self, context: Any) -> None:
        if self._admits(context):
            return
        if self.refusals is not None:
            self.refusals.add(str(context.peer()), time.monotonic())
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"channels serve the mesh's members only: send the mesh's join secret "
            f"(mesh.json's join_secret) as '{JOIN_KEY}' metadata",
        )

    # ------------------------------------------------------------------ history

    def publish(self, request: pb.PublishRequest) -> pb.Position:
        channel = check_channel(request.channel)
        kind = KIND_NAMES.get(request.kind)
        if kind is None:
            raise InvalidPayload(f"unknown publication kind {request.kind}")
        if kind != "pub":
            # a join or leave is kept nowhere and has no offset
            self._deliver(Publication(channel, request.data, kind=kind))
            return pb.Position()
        now = self.clock()
        log = self._log(channel, request.rules, now)
        publication = log.append(request.data, now=now, channel=channel)
        self._deliver(publication)  # in the same step: every watcher sees offset order
        return pb.Position(offset=publication.offset, epoch=publication.epoch)

    def history(self, request: pb.HistoryRequest) -> pb.HistoryReply:
        channel = check_channel(request.channel)
        since = (
            Position(request.since.offset, request.since.epoch)
            if request.HasField("since")
            else None
        )
        now = self.clock()
        log = self._log(channel, request.rules, now)
        found = Found(log.position) if since is None else log.since(since, now=now)
        if sum(len(p.data) for p in found.publications) > HISTORY_REPLY_BYTES:
            found = Found(found.position, (), False, "gone")
        return pb.HistoryReply(
            position=pb.Position(offset=found.position.offset, epoch=found.position.epoch),
            publications=[publication_to_proto(p) for p in found.publications],
            recovered=found.recovered,
            reason=found.reason,
        )

    def _log(self, channel: str, rules: pb.Rules, now: float) -> ChannelLog:
        """The channel's log, a fresh one (another epoch) when it had none or it expired."""
        size, ttl = rules.history_size, rules.history_ttl
        if size > MAX_HISTORY_SIZE:
            raise InvalidPayload(f"history_size {size} is over {MAX_HISTORY_SIZE}")
        if not ttl > 0 or math.isinf(ttl):
            raise InvalidPayload(f"history_ttl must be a positive number of seconds, not {ttl}")
        log = self.logs.get(channel)
        if log is None or log.expired(now):
            if log is None and len(self.logs) >= self.max_channels:
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the engine keeps the history of {self.max_channels} channels at most",
                )
            log = self.logs[channel] = ChannelLog(secrets.token_hex(8), size, ttl, touched=now)
        log.size, log.ttl = size, ttl  # the rules are the caller's, and may have changed
        return log

    # ------------------------------------------------------------------ presence

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        channel = check_channel(request.channel)
        ttl = request.ttl
        if not ttl > 0 or math.isinf(ttl):
            raise InvalidPayload(f"ttl must be a positive number of seconds, not {ttl}")
        added = self.presence.join(channel, member_from_proto(request.member), ttl, self.clock())
        if added is None:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the engine keeps {self.presence.max_members} presence members at most",
            )
        return pb.JoinReply(added=added)

    def leave(self, request: pb.LeaveRequest) -> pb.Members:
        member = self.presence.leave(check_channel(request.channel), request.session)
        return pb.Members(members=[] if member is None else [member_to_proto(member)])

    def members(self, request: pb.ChannelRequest) -> pb.Members:
        members = self.presence.members(check_channel(request.channel), self.clock())
        return pb.Members(members=[member_to_proto(m) for m in members])

    def refresh(self, request: pb.RefreshRequest) -> pb.RefreshReply:
        ttl = request.ttl
        if not ttl > 0 or math.isinf(ttl):
            raise InvalidPayload(f"ttl must be a positive number of seconds, not {ttl}")
        now = self.clock()
        for entry in request.entries:
            # a member the engine lost (it restarted) is added again
            member = member_from_proto(entry.member)
            self.presence.join(check_channel(entry.channel), member, ttl, now)
        return pb.RefreshReply()

    def sweep_channel(self, request: pb.ChannelRequest) -> pb.Members:
        """Remove the channel's expired members; the caller announces their leave."""
        gone = self.presence.expire(check_channel(request.channel), self.clock())
        return pb.Members(members=[member_to_proto(m) for m in gone])

    def sweep(self, now: float) -> None:
        """Drop expired logs, and members whose time ran out a ttl ago (no gateway swept
        them); called often (the registry's sweep), it looks once per
        :data:`SWEEP_EVERY`. ``now`` is the server's clock (:attr:`clock`)."""
        if self.refusals is not None:
            self.refusals.flush(now)
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for channel in [c for c, log in self.logs.items() if log.expired(now)]:
            del self.logs[channel]
        self.presence.forget_stale(now)

    def _announce(self, channel: str, kind: Literal["join", "leave"], member: Member) -> None:
        self._deliver(Publication(channel, member_json(member), kind=kind))

    # ------------------------------------------------------------------ watchers

    def _deliver(self, publication: Publication) -> None:
        watchers = self.watchers.get(publication.channel)
        if not watchers:
            return
        # serialized once, for every watcher: WatchReply fragments join into one reply
        fragment = pb.WatchReply(
            publications=[publication_to_proto(publication)]
        ).SerializeToString()
        for watcher in watchers:
            watcher.push(fragment, self.max_pending, self.max_pending_bytes)

    async def _watch(self, requests: AsyncIterator[pb.WatchRequest], context: Any) -> None:
        if not self._admits(context):
            # the refusal waits for the first request: a client whose write is in flight
            # when the stream ends may be told INTERNAL instead (grpc/grpc#36066), and
            # wiremesh's client writes nothing more until that one is acknowledged
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(aiter(requests)), _FIRST_REQUEST_WAIT)
            await self._admit(context)
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the engine is stopping")
        watcher = _Watcher()
        self.streams.add(watcher)
        reader = asyncio.create_task(self._read(watcher, requests), name="wiremesh-channels-read")
        writer = asyncio.create_task(self._write(watcher, context), name="wiremesh-channels-write")
        try:
            # a write to a peer that does not read waits: push() ends the stream meanwhile
            ended = await watcher.ended
        finally:
            for task in (reader, writer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._forget(watcher)
        if ended is not None:
            await context.abort(*ended)

    async def _write(self, watcher: _Watcher, context: Any) -> None:
        """Write what waits, one reply at a time: what is queued while a write is in
        flight, or in the loop turn that woke the writer, leaves together."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not watcher.pending:
                    wake = watcher.wake = loop.create_future()
                    await wake
                    continue
                await context.write(watcher.take())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke under a write
            log.debug("channel watch stream broke: %r", exc)
            watcher.end()

    async def _read(self, watcher: _Watcher, requests: AsyncIterator[pb.WatchRequest]) -> None:
        first = True
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "watch":
                    channel = request.watch
                    if check_channel(channel) not in watcher.channels:
                        if len(watcher.channels) >= MAX_WATCHES:
                            watcher.end(
                                grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"a Watch stream watches {MAX_WATCHES} channels at most",
                            )
                            return
                        watcher.channels.add(channel)
                        self.watchers.setdefault(channel, set()).add(watcher)
                elif kind == "unwatch":
                    self._unwatch(watcher, request.unwatch)
                elif kind == "owner" and request.owner:
                    if not first or len(request.owner) > MAX_CHANNEL_LENGTH:
                        raise InvalidPayload(
                            f"owner: a process id of {MAX_CHANNEL_LENGTH} characters at most, "
                            "in the first request only"
                        )
                    watcher.owner = request.owner
                    self.owners[watcher.owner] = self.owners.get(watcher.owner, 0) + 1
                first = False
                watcher.push(_ack(request.id), self.max_pending, self.max_pending_bytes)
        except InvalidPayload as exc:
            watcher.end(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, ConnectionError) as exc:
            log.debug("channel watch stream ended: %s", exc)
        watcher.end()

    def _unwatch(self, watcher: _Watcher, channel: str) -> None:
        watcher.channels.discard(channel)
        watchers = self.watchers.get(channel)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self.watchers[channel]

    def _forget(self, watcher: _Watcher) -> None:
        """The stream ended: it watches nothing more; when it was its owner's last, the
        owner's members leave."""
        watcher.end()
        self.streams.discard(watcher)
        for channel in list(watcher.channels):
            self._unwatch(watcher, channel)
        watcher.pending.clear()
        owner = watcher.owner
        if not owner:
            return
        left = self.owners.pop(owner, 1) - 1
        if left:
            self.owners[owner] = left
            return  # a newer stream of the same owner holds its members
        for channel, member in self.presence.drop_gateway(owner):
            self._announce(channel, "leave", member)

    def close(self) -> None:
        """End every Watch stream (status OK: the clients connect again later)."""
        self._closing = True
        for watcher in list(self.streams):
            watcher.end()
