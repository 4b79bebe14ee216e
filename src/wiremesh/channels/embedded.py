"""The embedded channel engine: a gRPC service in the embedded registry's server, and its
client.

No server to install: :class:`~wiremesh.registry.embedded.RegistryServer` builds a
:class:`~wiremesh.channels.channel_server.ChannelServer` and serves its handlers on its
own port, and every process talks to it with :class:`EmbeddedChannelEngine`. The wire contract is
``proto/wiremesh/channels/v1/channels.proto`` (``docs/protocol.md`` §8.4); the history
rules are :class:`wiremesh.core.channels.ChannelLog`'s.

Who may call. Every call needs what the registry's Lease needs (the join secret as
``wm-join`` metadata, or the client certificate with TLS): unlike the mesh's membership,
a channel's publications and presence may be private. The registry hands its own check
in; refused calls are logged one line per interval, not one per call.

Order. A publication is appended to its channel's log and queued on every Watch stream
that watches the channel in one synchronous step, so every watcher gets a channel's
publications in offset order; what is queued in one event-loop turn leaves as one
``WatchReply``.

Presence. Each member names the gateway that holds its session; a Watch stream names its
owner (a gateway id). When the last stream of an owner ends (the process closed or died),
its members leave and a ``leave`` goes to the channel's watchers. A member whose time ran
out is removed by the first gateway that calls :meth:`~EmbeddedChannelEngine.sweep`, which
announces its leave; one that no gateway swept is forgotten a ttl later, without a word
(as the Redis engine's keys expire).

Bounds. At most :data:`MAX_CHANNELS` channels keep a log (a publish that needs another is
refused ``RESOURCE_EXHAUSTED``), at most :data:`MAX_HISTORY_SIZE` publications each, and a
log is dropped once it expired; at most :data:`MAX_MEMBERS` members in all; a Watch stream
watches at most :data:`MAX_WATCHES` channels; a stream whose reader falls
:data:`MAX_PENDING` messages (or :data:`MAX_PENDING_BYTES`) behind is ended
``RESOURCE_EXHAUSTED``, so a watcher that does not read costs a bounded amount. A message
to the server is at most the registry's 256 KiB, so ``data`` at most
:data:`MAX_DATA_BYTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import grpc

from wiremesh.channels.base import OnPublication
from wiremesh.core.channels import (
    ChannelRules,
    Found,
    Member,
    Position,
    Publication,
    check_channel,
)
from wiremesh.core.presence import MAX_MEMBERS, MAX_PRESENCE
from wiremesh.errors import (
    InvalidPayload,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    WiremeshError,
)
from wiremesh.proto import channels_pb2 as pb
from wiremesh.transport.grpc_core import QUICK_RECONNECT
from wiremesh.transport.tls import open_channel

__all__ = [
    "HISTORY_REPLY_BYTES",
    "JOIN_KEY",
    "KINDS",
    "KIND_NAMES",
    "MAX_CHANNELS",
    "MAX_DATA_BYTES",
    "MAX_HISTORY_SIZE",
    "MAX_MEMBERS",
    "MAX_PENDING",
    "MAX_PENDING_BYTES",
    "MAX_PRESENCE",
    "MAX_WATCHES",
    "REPLY_BYTES",
    "SERVICE",
    "SWEEP_EVERY",
    "EmbeddedChannelEngine",
    "member_from_proto",
    "member_json",
    "member_to_proto",
    "publication_from_proto",
    "publication_to_proto",
    "rules_to_proto",
]

log = logging.getLogger("wiremesh.channels")

SERVICE = "wiremesh.channels.v1.Channels"
#: the metadata key of the join secret: the registry's (its module cannot be imported
#: here: it imports the server, which imports this one)
JOIN_KEY = "wm-join"
#: channels that keep a log at once
MAX_CHANNELS = 100_000
#: the most publications one channel keeps
MAX_HISTORY_SIZE = 10_000
#: channels one Watch stream watches at once
MAX_WATCHES = 100_000
#: messages (publications and acknowledgements) queued for one Watch stream, at most
MAX_PENDING = 10_000
#: ... and their bytes
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: the most bytes of a publication's data (a request to the server is at most 256 KiB)
MAX_DATA_BYTES = 256 * 1024 - 4096
#: a WatchReply carries about this many bytes at most (one publication more)
REPLY_BYTES = 1024 * 1024
#: a History reply carries at most this many bytes of publications; more is "gone"
HISTORY_REPLY_BYTES = 16 * 1024 * 1024
#: seconds between two looks for expired logs and members
SWEEP_EVERY = 1.0
#: seconds a call may take
CALL_TIMEOUT = 5.0
#: a Refresh request carries members of about this many bytes
_REFRESH_BYTES = 128 * 1024
_RECONNECT_MIN = 0.2
_RECONNECT_MAX = 2.0

KINDS: dict[str, pb.Publication.Kind] = {
    "pub": pb.Publication.PUB,
    "join": pb.Publication.JOIN,
    "leave": pb.Publication.LEAVE,
}
KIND_NAMES: dict[int, Literal["pub", "join", "leave"]] = {
    pb.Publication.PUB: "pub",
    pb.Publication.JOIN: "join",
    pb.Publication.LEAVE: "leave",
}


def member_json(member: Member) -> bytes:
    """The data of a join or leave: the member as a JSON object."""
    return json.dumps(member.as_json(), separators=(",", ":")).encode()


def publication_to_proto(p: Publication) -> pb.Publication:
    return pb.Publication(
        channel=p.channel, data=p.data, offset=p.offset, epoch=p.epoch, kind=KINDS[p.kind]
    )


def publication_from_proto(msg: pb.Publication) -> Publication:
    kind = KIND_NAMES.get(msg.kind, "pub")
    return Publication(msg.channel, msg.data, msg.offset, msg.epoch, kind)


def member_to_proto(m: Member) -> pb.Member:
    return pb.Member(session=m.session, principal=m.principal, gateway=m.gateway)


def member_from_proto(msg: pb.Member) -> Member:
    return Member(msg.session, msg.principal, msg.gateway)


def rules_to_proto(rules: ChannelRules) -> pb.Rules:
    return pb.Rules(history_size=rules.history_size, history_ttl=rules.history_ttl)


class EmbeddedChannelEngine:
    """A :class:`~wiremesh.channels.base.ChannelEngine` talking to the :class:`ChannelServer`
    at ``address`` (the embedded registry's).

    ``owner``: this process's id (a gateway id): the members it joins with that gateway
    leave when its Watch stream ends. The Watch stream opens with the first
    :meth:`watch` or :meth:`join`, and opens again (with every watch) when it breaks:
    what was published meanwhile is not delivered, and the publications that follow show
    the gap (their offsets) or the engine's restart (their epoch)."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        join_secret: str | None = None,
        owner: str = "",
    ) -> None:
        self.address = address
        self.owner = owner
        #: seconds a call (and a watch) may take
        self.timeout = CALL_TIMEOUT
        self._metadata: tuple[tuple[str, str], ...] | None = (
            ((JOIN_KEY, join_secret),) if join_secret else None
        )
        options = [*QUICK_RECONNECT, ("grpc.max_receive_message_length", 2 * HISTORY_REPLY_BYTES)]
        self.channel = open_channel(address, credentials, options)

        def unary(name: str, request: Any, reply: Any) -> Any:
            return self.channel.unary_unary(
                f"/{SERVICE}/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=reply.FromString,
            )

        self._publish = unary("Publish", pb.PublishRequest, pb.Position)
        self._history = unary("History", pb.HistoryRequest, pb.HistoryReply)
        self._join = unary("Join", pb.JoinRequest, pb.JoinReply)
        self._leave = unary("Leave", pb.LeaveRequest, pb.Members)
        self._presence = unary("Presence", pb.ChannelRequest, pb.Members)
        self._refresh = unary("Refresh", pb.RefreshRequest, pb.RefreshReply)
        self._sweep = unary("Sweep", pb.ChannelRequest, pb.Members)
        self._watch_call = self.channel.stream_stream(
            f"/{SERVICE}/Watch",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchReply.FromString,
        )
        self._callback: OnPublication | None = None
        self._ids = itertools.count(1)
        #: channels watched or being watched: delivered, and watched again on a new stream
        self._wanted: set[str] = set()
        #: channels whose watch() returned (and no unwatch since)
        self._confirmed: set[str] = set()
        #: channels the current stream's server acknowledged
        self._active: set[str] = set()
        #: the watch() calls waiting for their channel's acknowledgement
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        #: the current stream's requests not acknowledged yet: id -> (channel, watch?)
        self._sent: dict[int, tuple[str, bool]] = {}
        #: the channels of the watch requests among them
        self._in_flight: set[str] = set()
        self._unwatching: dict[int, asyncio.Future[None]] = {}
        #: the current stream's requests to send (None: no stream is open)
        self._queue: asyncio.Queue[pb.WatchRequest] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: whether the engine answered the current stream
        self.reachable = False
        self._outage_told = False

    # ------------------------------------------------------------------ calls

    async def _call(self, method: Any, request: Any) -> Any:
        if self._closed:
            raise Unavailable(f"the channel engine client of {self.address} is closed")
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.aio.AioRpcError) -> WiremeshError:
        """The one translation of the engine's gRPC failures."""
        problem = f"channel engine at {self.address}: {exc.details() or exc.code().name}"
        code = exc.code()
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return Unauthenticated(problem)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidPayload(problem)
        return Unavailable(problem)

    async def publish(self, channel: str, data: bytes, rules: ChannelRules) -> Position:
        return await self._send(channel, data, "pub", rules)

    async def announce(self, channel: str, kind: Literal["join", "leave"], member: Member) -> None:
        await self._send(channel, member_json(member), kind, ChannelRules())

    async def _send(
        self, channel: str, data: bytes, kind: Literal["pub", "join", "leave"], rules: ChannelRules
    ) -> Position:
        check_channel(channel)
        if len(data) > MAX_DATA_BYTES:
            raise PayloadTooLarge(
                f"a publication of {len(data)} bytes to {channel!r}: the embedded channel "
                f"engine takes {MAX_DATA_BYTES} at most"
            )
        request = pb.PublishRequest(
            channel=channel, data=data, rules=rules_to_proto(rules), kind=KINDS[kind]
        )
        reply = await self._call(self._publish, request)
        return Position(reply.offset, reply.epoch)

    async def history(self, channel: str, since: Position | None, rules: ChannelRules) -> Found:
        request = pb.HistoryRequest(channel=check_channel(channel), rules=rules_to_proto(rules))
        if since is not None:
            request.since.offset, request.since.epoch = since.offset, since.epoch
        reply = await self._call(self._history, request)
        return Found(
            Position(reply.position.offset, reply.position.epoch),
            tuple(publication_from_proto(p) for p in reply.publications),
            reply.recovered,
            reply.reason,
        )

    async def join(self, channel: str, member: Member, ttl: float) -> bool:
        self._start()  # the stream that ties this process's members to its life
        request = pb.JoinRequest(
            channel=check_channel(channel), member=member_to_proto(member), ttl=ttl
        )
        reply = await self._call(self._join, request)
        return bool(reply.added)

    async def leave(self, channel: str, session: str) -> Member | None:
        request = pb.LeaveRequest(channel=check_channel(channel), session=session)
        reply = await self._call(self._leave, request)
        return member_from_proto(reply.members[0]) if reply.members else None

    async def presence(self, channel: str) -> list[Member]:
        reply = await self._call(self._presence, pb.ChannelRequest(channel=check_channel(channel)))
        return [member_from_proto(m) for m in reply.members]

    async def refresh(self, members: Iterable[tuple[str, Member]], ttl: float) -> None:
        request = pb.RefreshRequest(ttl=ttl)
        size = 0
        for channel, member in members:
            entry = pb.RefreshRequest.Entry(
                channel=check_channel(channel), member=member_to_proto(member)
            )
            request.entries.append(entry)
            size += entry.ByteSize() + 8
            if size >= _REFRESH_BYTES:  # requests far below the server's 256 KiB
                await self._call(self._refresh, request)
                request, size = pb.RefreshRequest(ttl=ttl), 0
        if request.entries:
            await self._call(self._refresh, request)

    async def sweep(self, channel: str) -> list[Member]:
        reply = await self._call(self._sweep, pb.ChannelRequest(channel=check_channel(channel)))
        return [member_from_proto(m) for m in reply.members]

    # ------------------------------------------------------------------ watching

    def on_publication(self, callback: OnPublication) -> None:
        self._callback = callback

    async def watch(self, channel: str) -> None:
        """Return once the engine delivers ``channel`` here; :class:`Unavailable` when it
        cannot be reached (within :attr:`timeout`), :class:`Unauthenticated` when it
        refuses this process."""
        check_channel(channel)
        if self._closed:
            raise Unavailable(f"the channel engine client of {self.address} is closed")
        if channel not in self._wanted and len(self._wanted) >= MAX_WATCHES:
            raise Unavailable(
                f"this process watches {MAX_WATCHES} channels of {self.address} already"
            )
        self._wanted.add(channel)
        if channel in self._active:
            self._confirmed.add(channel)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, []).append(waiter)
        self._start()
        self._request(channel, watch=True)
        try:
            await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            self._no_wait(channel, waiter, failed=True)
            raise Unavailable(
                f"channel engine at {self.address}: watching {channel!r} was not acknowledged "
                f"within {self.timeout:g}s"
            ) from None
        except BaseException:  # the stream failed (Unavailable, Unauthenticated), or cancelled
            self._no_wait(channel, waiter, failed=True)
            raise
        self._no_wait(channel, waiter, failed=False)
        self._confirmed.add(channel)

    def _no_wait(self, channel: str, waiter: asyncio.Future[None], *, failed: bool) -> None:
        """``waiter``'s watch() returns; when it failed (and none before it returned, nor
        another waits), the channel is wanted no more."""
        waiting = self._waiting.get(channel, [])
        with contextlib.suppress(ValueError):
            waiting.remove(waiter)
        if waiting:
            return
        self._waiting.pop(channel, None)
        if failed and channel not in self._confirmed:
            self._wanted.discard(channel)
            self._active.discard(channel)
            self._request(channel, watch=False)  # frees the server's side, if it watches

    async def unwatch(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._confirmed.discard(channel)
        self._active.discard(channel)
        done = self._request(channel, watch=False)
        if done is not None:
            # nothing more is delivered here at once (the wanted channels only are); the
            # acknowledgement frees the server's side, or the stream ended and did
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, self.timeout)

    def _request(self, channel: str, *, watch: bool) -> asyncio.Future[None] | None:
        """Send a watch (unless one is in flight) or an unwatch on the current stream; an
        unwatch's future is done when it is acknowledged (None: there is no stream)."""
        queue = self._queue
        if queue is None:
            return None  # the next stream watches what is wanted then
        if watch and channel in self._in_flight:
            return None
        request_id = next(self._ids)
        self._sent[request_id] = (channel, watch)
        if watch:
            self._in_flight.add(channel)
            queue.put_nowait(pb.WatchRequest(id=request_id, watch=channel))
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unwatching[request_id] = done
        queue.put_nowait(pb.WatchRequest(id=request_id, unwatch=channel))
        return done

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._hold(), name="wiremesh-channels-watch")

    async def _hold(self) -> None:
        """Keep one Watch stream open, opening it again (with every wanted channel) after
        a growing pause when it breaks; one log line per outage."""
        delay = _RECONNECT_MIN
        while not self._closed:
            queue = self._queue = asyncio.Queue()
            hello = next(self._ids)
            greeted = asyncio.Event()
            for channel in self._wanted:
                self._request(channel, watch=True)
            requests = _requests(pb.WatchRequest(id=hello, owner=self.owner), greeted, queue)
            call = self._watch_call(requests, metadata=self._metadata)
            failure: WiremeshError = Unavailable(
                f"channel engine at {self.address}: the watch stream ended"
            )
            try:
                async for reply in call:
                    if reply.acks:
                        if hello in reply.acks and not self.reachable:
                            greeted.set()
                            self.reachable = True
                            delay = _RECONNECT_MIN
                            if self._outage_told:
                                log.debug("channel engine at %s reachable again", self.address)
                                self._outage_told = False
                        self._acknowledged(reply.acks)
                    if reply.publications:
                        self._received(reply.publications)
            except grpc.aio.AioRpcError as exc:
                failure = self._error(exc)
            finally:
                call.cancel()
                self._queue = None
                self._ended(failure)
            if self._closed:
                return
            if not self._outage_told:
                self._outage_told = True
                log.warning(
                    "%s; watching again every %gs at most until it answers", failure, _RECONNECT_MAX
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _RECONNECT_MAX)

    def _acknowledged(self, acks: Iterable[int]) -> None:
        for request_id in acks:
            sent = self._sent.pop(request_id, None)
            if sent is None:
                continue
            channel, watch = sent
            if watch:
                self._in_flight.discard(channel)
            else:
                done = self._unwatching.pop(request_id, None)
                if done is not None and not done.done():
                    done.set_result(None)
                continue
            if channel in self._wanted:
                self._active.add(channel)
            for waiter in self._waiting.get(channel, ()):
                if not waiter.done():
                    waiter.set_result(None)

    def _received(self, publications: Iterable[pb.Publication]) -> None:
        callback = self._callback
        if callback is None:
            return
        wanted = self._wanted
        for msg in publications:
            if msg.channel in wanted:
                try:
                    callback(publication_from_proto(msg))
                except Exception:
                    log.exception("the channel publication callback failed")

    def _ended(self, failure: WiremeshError) -> None:
        """The stream is over: nothing is in effect, and the calls waiting on it fail
        (unwatches are done: a stream that ended delivers nothing)."""
        self.reachable = False
        self._active.clear()
        self._sent.clear()
        self._in_flight.clear()
        for done in self._unwatching.values():
            if not done.done():
                done.set_result(None)
        self._unwatching.clear()
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)

    async def close(self) -> None:
        """End the Watch stream (this process's members leave) and the connection."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ended(Unavailable(f"the channel engine client of {self.address} is closed"))
        await self.channel.close(None)


async def _requests(
    hello: pb.WatchRequest, greeted: asyncio.Event, queue: asyncio.Queue[pb.WatchRequest]
) -> AsyncIterator[pb.WatchRequest]:
    """A Watch stream's requests: the first, then, once the server acknowledged it (the
    stream is admitted: see ChannelServer._watch), the others as they come."""
    yield hello
    await greeted.wait()
    while True:
        yield await queue.get()
