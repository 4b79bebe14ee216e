"""The embedded channel engine: a gRPC service in the embedded registry's server, and its
client.

No server to install: :class:`~wiremesh.registry.embedded.RegistryServer` builds a
:class:`ChannelServer` and serves its handlers on its own port, and every process talks
to it with :class:`EmbeddedChannelEngine`. The wire contract is
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
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc

from wiremesh.channels.base import OnPublication
from wiremesh.core.channels import (
    MAX_CHANNEL_LENGTH,
    ChannelLog,
    ChannelRules,
    Found,
    Member,
    Position,
    Publication,
    check_channel,
)
from wiremesh.errors import (
    InvalidPayload,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    WiremeshError,
)
from wiremesh.proto import channels_pb2 as pb
from wiremesh.transport.grpc_core import OWN_SUBCHANNELS
from wiremesh.transport.tls import open_channel

__all__ = [
    "JOIN_KEY",
    "MAX_CHANNELS",
    "MAX_DATA_BYTES",
    "MAX_HISTORY_SIZE",
    "MAX_MEMBERS",
    "MAX_PENDING",
    "MAX_PENDING_BYTES",
    "MAX_PRESENCE",
    "MAX_WATCHES",
    "SERVICE",
    "ChannelServer",
    "EmbeddedChannelEngine",
    "Presence",
]

log = logging.getLogger("wiremesh.channels")

SERVICE = "wiremesh.channels.v1.Channels"
#: the metadata key of the join secret: the registry's (its module cannot be imported
#: here: it imports this one)
JOIN_KEY = "wm-join"
#: channels that keep a log at once
MAX_CHANNELS = 100_000
#: the most publications one channel keeps
MAX_HISTORY_SIZE = 10_000
#: presence members in all channels together
MAX_MEMBERS = 1_000_000
#: the most members a Presence or Sweep call answers (a Sweep removes no more: the next
#: one takes the rest)
MAX_PRESENCE = 10_000
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
#: seconds a refused Watch stream waits for its first request
_FIRST_REQUEST_WAIT = 2.0
_RECONNECT_MIN = 0.2
_RECONNECT_MAX = 2.0

_KINDS: dict[str, pb.Publication.Kind] = {
    "pub": pb.Publication.PUB,
    "join": pb.Publication.JOIN,
    "leave": pb.Publication.LEAVE,
}
_KIND_NAMES: dict[int, Literal["pub", "join", "leave"]] = {
    pb.Publication.PUB: "pub",
    pb.Publication.JOIN: "join",
    pb.Publication.LEAVE: "leave",
}


def member_json(member: Member) -> bytes:
    """The data of a join or leave: the member as a JSON object."""
    return json.dumps(member.as_json(), separators=(",", ":")).encode()


def _publication_to_proto(p: Publication) -> pb.Publication:
    return pb.Publication(
        channel=p.channel, data=p.data, offset=p.offset, epoch=p.epoch, kind=_KINDS[p.kind]
    )


def _publication_from_proto(msg: pb.Publication) -> Publication:
    kind = _KIND_NAMES.get(msg.kind, "pub")
    return Publication(msg.channel, msg.data, msg.offset, msg.epoch, kind)


def _member_to_proto(m: Member) -> pb.Member:
    return pb.Member(session=m.session, principal=m.principal, gateway=m.gateway)


def _member_from_proto(msg: pb.Member) -> Member:
    return Member(msg.session, msg.principal, msg.gateway)


def _rules_to_proto(rules: ChannelRules) -> pb.Rules:
    return pb.Rules(history_size=rules.history_size, history_ttl=rules.history_ttl)


# ---------------------------------------------------------------------------- presence


@dataclass(slots=True)
class _Entry:
    member: Member
    until: float
    ttl: float


class Presence:
    """Who is subscribed to each channel, until when, and by gateway. No I/O: the caller
    passes the time in."""

    def __init__(self, max_members: int = MAX_MEMBERS) -> None:
        self.max_members = max_members
        #: channel -> session -> entry
        self.channels: dict[str, dict[str, _Entry]] = {}
        #: gateway -> the (channel, session) of its members
        self.of_gateway: dict[str, set[tuple[str, str]]] = {}
        self.count = 0

    def join(self, channel: str, member: Member, ttl: float, now: float) -> bool | None:
        """Add or replace the session's entry for ``ttl`` seconds; True when it was not
        there (or its time had run out), None when the bound refuses it."""
        members = self.channels.get(channel)
        entry = members.get(member.session) if members is not None else None
        if entry is not None:
            was_there = entry.until > now
            self._unindex(channel, entry.member)
            entry.member, entry.until, entry.ttl = member, now + ttl, ttl
            self._index(channel, member)
            return not was_there
        if self.count >= self.max_members:
            return None
        if members is None:
            members = self.channels[channel] = {}
        members[member.session] = _Entry(member, now + ttl, ttl)
        self.count += 1
        self._index(channel, member)
        return True

    def leave(self, channel: str, session: str) -> Member | None:
        members = self.channels.get(channel)
        entry = members.pop(session, None) if members is not None else None
        if members is None or entry is None:
            return None
        self.count -= 1
        if not members:
            del self.channels[channel]
        self._unindex(channel, entry.member)
        return entry.member

    def members(self, channel: str, now: float, limit: int = MAX_PRESENCE) -> list[Member]:
        """The channel's members whose time has not run out (``limit`` at most)."""
        members = self.channels.get(channel, {})
        live = (e.member for e in members.values() if e.until > now)
        return list(itertools.islice(live, limit))

    def expire(self, channel: str, now: float, limit: int = MAX_PRESENCE) -> list[Member]:
        """Remove the channel's members whose time ran out (``limit`` at most: the next
        call takes more); those removed."""
        members = self.channels.get(channel, {})
        ended = itertools.islice((s for s, e in members.items() if e.until <= now), limit)
        return [m for s in list(ended) if (m := self.leave(channel, s)) is not None]

    def forget_stale(self, now: float) -> int:
        """Remove, without a word, the members whose time ran out a ttl ago or more: no
        gateway swept them (all of the channel's died); how many."""
        stale = [
            (c, s)
            for c, members in self.channels.items()
            for s, e in members.items()
            if e.until + e.ttl <= now
        ]
        for channel, session in stale:
            self.leave(channel, session)
        return len(stale)

    def drop_gateway(self, gateway: str) -> list[tuple[str, Member]]:
        """Remove every member of ``gateway``; those removed, with their channel."""
        held = self.of_gateway.get(gateway, set())
        gone = [(c, self.leave(c, s)) for c, s in list(held)]
        return [(c, m) for c, m in gone if m is not None]

    def _index(self, channel: str, member: Member) -> None:
        self.of_gateway.setdefault(member.gateway, set()).add((channel, member.session))

    def _unindex(self, channel: str, member: Member) -> None:
        held = self.of_gateway.get(member.gateway)
        if held is not None:
            held.discard((channel, member.session))
            if not held:
                del self.of_gateway[member.gateway]


# ---------------------------------------------------------------------------- the server


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
        kind = _KIND_NAMES.get(request.kind)
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
            publications=[_publication_to_proto(p) for p in found.publications],
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
        added = self.presence.join(channel, _member_from_proto(request.member), ttl, self.clock())
        if added is None:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the engine keeps {self.presence.max_members} presence members at most",
            )
        return pb.JoinReply(added=added)

    def leave(self, request: pb.LeaveRequest) -> pb.Members:
        member = self.presence.leave(check_channel(request.channel), request.session)
        return pb.Members(members=[] if member is None else [_member_to_proto(member)])

    def members(self, request: pb.ChannelRequest) -> pb.Members:
        members = self.presence.members(check_channel(request.channel), self.clock())
        return pb.Members(members=[_member_to_proto(m) for m in members])

    def refresh(self, request: pb.RefreshRequest) -> pb.RefreshReply:
        ttl = request.ttl
        if not ttl > 0 or math.isinf(ttl):
            raise InvalidPayload(f"ttl must be a positive number of seconds, not {ttl}")
        now = self.clock()
        for entry in request.entries:
            # a member the engine lost (it restarted) is added again
            member = _member_from_proto(entry.member)
            self.presence.join(check_channel(entry.channel), member, ttl, now)
        return pb.RefreshReply()

    def sweep_channel(self, request: pb.ChannelRequest) -> pb.Members:
        """Remove the channel's expired members; the caller announces their leave."""
        gone = self.presence.expire(check_channel(request.channel), self.clock())
        return pb.Members(members=[_member_to_proto(m) for m in gone])

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
            publications=[_publication_to_proto(publication)]
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


# ---------------------------------------------------------------------------- the client


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
        options = [
            ("grpc.enable_retries", 0),
            # an engine that restarts must be found again within about a second
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", 2 * HISTORY_REPLY_BYTES),
            OWN_SUBCHANNELS,
        ]
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
            channel=channel, data=data, rules=_rules_to_proto(rules), kind=_KINDS[kind]
        )
        reply = await self._call(self._publish, request)
        return Position(reply.offset, reply.epoch)

    async def history(self, channel: str, since: Position | None, rules: ChannelRules) -> Found:
        request = pb.HistoryRequest(channel=check_channel(channel), rules=_rules_to_proto(rules))
        if since is not None:
            request.since.offset, request.since.epoch = since.offset, since.epoch
        reply = await self._call(self._history, request)
        return Found(
            Position(reply.position.offset, reply.position.epoch),
            tuple(_publication_from_proto(p) for p in reply.publications),
            reply.recovered,
            reply.reason,
        )

    async def join(self, channel: str, member: Member, ttl: float) -> bool:
        self._start()  # the stream that ties this process's members to its life
        request = pb.JoinRequest(
            channel=check_channel(channel), member=_member_to_proto(member), ttl=ttl
        )
        reply = await self._call(self._join, request)
        return bool(reply.added)

    async def leave(self, channel: str, session: str) -> Member | None:
        request = pb.LeaveRequest(channel=check_channel(channel), session=session)
        reply = await self._call(self._leave, request)
        return _member_from_proto(reply.members[0]) if reply.members else None

    async def presence(self, channel: str) -> list[Member]:
        reply = await self._call(self._presence, pb.ChannelRequest(channel=check_channel(channel)))
        return [_member_from_proto(m) for m in reply.members]

    async def refresh(self, members: Iterable[tuple[str, Member]], ttl: float) -> None:
        request = pb.RefreshRequest(ttl=ttl)
        size = 0
        for channel, member in members:
            entry = pb.RefreshRequest.Entry(
                channel=check_channel(channel), member=_member_to_proto(member)
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
        return [_member_from_proto(m) for m in reply.members]

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
                    callback(_publication_from_proto(msg))
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
