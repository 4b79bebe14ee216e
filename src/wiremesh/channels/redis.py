"""The Redis channel engine: channels of a mesh whose registry is Redis.

Every process talks to the registry's Redis directly (the same URL, the same TLS files);
there is no channel process. The keys of a channel ``<name>`` share the mesh's prefix
``wm:{<mesh>}:`` (one Redis Cluster slot, see :mod:`wiremesh.registry.redis`):

========================  ======  ========================================================
key                       type    holds
========================  ======  ========================================================
``channel:<name>``        hash    ``offset``: the last publication's offset; ``epoch``:
                                  the random text this log started with
``history:<name>``        stream  the kept publications: entry id ``<offset>-0``, fields
                                  ``t`` (Redis's ``TIME`` in ms when it was published) and
                                  ``d`` (the data); at most ``history_size`` entries
``presence:<name>``       zset    session id → when its presence ends (Redis's ms)
``members:<name>``        hash    session id → the member as JSON (``session``,
                                  ``principal``, ``gateway``)
========================  ======  ========================================================

**Publishing** is one Lua script, atomic: it takes the channel's epoch (or starts one with
the random candidate the caller sends), increments the offset, appends the publication to
the stream (exact ``MAXLEN``) when the rules keep history, sets both keys to expire
``history_ttl`` after it, and ``PUBLISH``-es it on the pub/sub channel named like the log
key, ``wm:{<mesh>}:channel:<name>``. Scripts run one at a time, so every watcher receives
a channel's publications in offset order. A message is one line of text then the data::

    <kind> <offset> <epoch> <data>        kind: p (pub), j (join), l (leave)

``p 7 3f9a0c2b1d4e5f60 {"x":1}``; a join or leave (:meth:`RedisChannelEngine.announce`) is
``j 0  <member JSON>``: no offset, no epoch, kept nowhere.

**Expiry.** A channel's log is forgotten ``history_ttl`` after its last publication (or
after it was first read, for a channel never published to): its next publication or read
starts a new epoch at offset 1 (0), and a client's position in the old one is answered
``"epoch"``. A kept publication older than ``history_ttl`` (by Redis's clock) is never
recovered. A presence entry ends ``ttl`` after its join or last refresh; the presence keys
expire ``ttl + max(ttl, PRESENCE_GRACE)`` after the last join or refresh (the longest of
their members'), so that a sweep has the time to find members whose gateway died.

**Watching** holds one pub/sub connection per engine; a reader task hands every message of
a watched channel to the callback. When the connection drops, the reader connects again
with a jittered backoff and subscribes to every watched channel again, logging one line
per outage (logger ``wiremesh.channels``). Publications made while it was away are not
delivered: a client sees the gap in the offsets and recovers from the history.

Every Redis error leaves the engine as :class:`~wiremesh.errors.Unavailable`, whose
message names the URL without its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from wiremesh.channels.base import OnPublication
from wiremesh.core.channels import ChannelRules, Found, Member, Position, Publication, recovery
from wiremesh.core.names import redact_url
from wiremesh.errors import ConfigError, Unavailable
from wiremesh.registry.redis import (
    COMMAND_TIMEOUT,
    REDIS_ERRORS,
    error_text,
    mesh_prefix,
    split_mesh,
    tls_options,
)
from wiremesh.transport.tls import TlsFiles

__all__ = ["RedisChannelEngine"]

log = logging.getLogger("wiremesh.channels")

T = TypeVar("T")

#: seconds :meth:`RedisChannelEngine.watch` waits for Redis to confirm a subscription
WATCH_TIMEOUT = 5.0
#: seconds of silence on the pub/sub connection before the reader pings Redis; twice
#: this without an answer and it connects again
PING_INTERVAL = 5.0
#: the reader's backoff between two connection attempts: first and longest, in seconds
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 2.0
#: most connections an engine opens to Redis (the pub/sub one included); more commands at
#: once wait up to POOL_WAIT seconds for one
MAX_CONNECTIONS = 32
POOL_WAIT = 5.0
#: most channels one engine watches
MAX_WATCHED = 100_000
#: channels per SUBSCRIBE when the reader subscribes again
SUBSCRIBE_BATCH = 500
#: most members :meth:`RedisChannelEngine.presence` returns
MAX_PRESENCE = 10_000
#: most members one :meth:`RedisChannelEngine.sweep` removes (the next sweep takes more)
SWEEP_LIMIT = 1_000
#: presence entries refreshed per pipeline
REFRESH_BATCH = 1_000
#: seconds the presence keys outlive their last member's time at least, for a sweep to
#: find it (and its gateway to announce its leave)
PRESENCE_GRACE = 60.0

_KINDS: dict[bytes, Literal["pub", "join", "leave"]] = {
    b"p": "pub",
    b"j": "join",
    b"l": "leave",
}
_PING = b"wiremesh-channels"

# Redis's clock in ms, in every script that needs it.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: log, history. ARGV: candidate epoch, data, history size, ttl (ms), pub/sub channel.
# The history goes when the rules keep none, so that it only ever holds one epoch's
# offsets, in order (an XADD below the stream's top would fail half-way).
_PUBLISH = (
    _NOW
    + """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local ttl = tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 't', now, 'd', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[5], 'p ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[2])
return {offset, epoch}
"""
)

# KEYS: log, history. ARGV: candidate epoch, ttl (ms), the offset asked after (-1: none),
# its epoch, most entries. Answers {offset, epoch, now, entries after the offset}.
_HISTORY = (
    _NOW
    + """
local s = redis.call('HMGET', KEYS[1], 'offset', 'epoch')
if not s[2] then
  redis.call('HSET', KEYS[1], 'offset', 0, 'epoch', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  redis.call('DEL', KEYS[2])
  return {0, ARGV[1], now, {}}
end
local offset = tonumber(s[1] or '0')
local since = tonumber(ARGV[3])
local entries = {}
if since >= 0 and since < offset and ARGV[4] == s[2] then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[5]))
end
return {offset, s[2], now, entries}
"""
)

# KEYS: presence, members. ARGV: session, member JSON, ttl (ms), the keys' ttl (ms).
# Answers 1 when the session was not present (or its time had run out), else 0.
_JOIN = (
    _NOW
    + """
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local keep = tonumber(ARGV[4])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
end
if old and tonumber(old) > now then return 0 end
return 1
"""
)

# KEYS: presence, members. ARGV: session. Answers the member's JSON, or nil.
_LEAVE = """
local member = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and member then return member end
return false
"""

# KEYS: presence, members. ARGV: most members. Answers the JSON of those present.
_PRESENCE = (
    _NOW
    + """
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0,
                                tonumber(ARGV[1]))) do
  local member = redis.call('HGET', KEYS[2], id)
  if member then table.insert(found, member) end
end
return found
"""
)

# KEYS: presence, members. ARGV: most members. Removes those whose time ran out, answers
# their JSON: a member is removed, and so answered, once.
_SWEEP = (
    _NOW
    + """
local gone = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0,
                                tonumber(ARGV[1]))) do
  redis.call('ZREM', KEYS[1], id)
  local member = redis.call('HGET', KEYS[2], id)
  if member then
    redis.call('HDEL', KEYS[2], id)
    table.insert(gone, member)
  end
end
return gone
"""
)


class RedisChannelEngine:
    """A :class:`~wiremesh.channels.base.ChannelEngine` on Redis (see the module
    docstring). ``url`` is the registry's (a ``#<mesh>`` fragment names the mesh)."""

    def __init__(self, url: str, *, mesh: str, tls: TlsFiles | None = None) -> None:
        url, fragment = split_mesh(url)
        mesh = fragment or mesh
        if not mesh:
            raise ConfigError("a Redis channel engine needs the mesh's name (mesh.name)")
        self.url = url
        #: the URL without its password: for logs, errors and displays
        self.address = redact_url(url)
        self.mesh = mesh
        self._prefix = mesh_prefix(mesh)
        self._topics = (self._prefix + "channel:").encode()
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            # a failed command fails its caller: the caller decides whether to try again
            retry=Retry(NoBackoff(), 0),
            **tls_options(url, tls),
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        register = self.redis.register_script
        self._publish = register(_PUBLISH)
        self._history = register(_HISTORY)
        self._join = register(_JOIN)
        self._leave = register(_LEAVE)
        self._presence = register(_PRESENCE)
        self._sweep = register(_SWEEP)
        self._callback: OnPublication = _ignore
        #: the channels watched here
        self._watched: set[str] = set()
        #: watch() calls waiting for Redis to confirm their channel's subscription
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        #: the reader's connection once every watched channel is subscribed on it; None
        #: while it connects
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        #: why the reader cannot reach Redis (empty: it can)
        self._outage = ""
        self._callback_errors = 0
        self._closed = False

    # ------------------------------------------------------------------ publications

    async def publish(self, channel: str, data: bytes, rules: ChannelRules) -> Position:
        args = (
            secrets.token_hex(8),
            data,
            max(0, rules.history_size),
            _ms(rules.history_ttl),
            self._topic(channel),
        )
        reply = await self._do(lambda: self._publish(keys=self._log_keys(channel), args=args))
        return Position(int(reply[0]), reply[1].decode())

    async def announce(self, channel: str, kind: Literal["join", "leave"], member: Member) -> None:
        message = (b"j 0  " if kind == "join" else b"l 0  ") + _member_json(member)
        await self._do(lambda: self.redis.publish(self._topic(channel), message))

    async def history(self, channel: str, since: Position | None, rules: ChannelRules) -> Found:
        asked = since is not None and rules.history
        args = (
            secrets.token_hex(8),
            _ms(rules.history_ttl),
            since.offset if since is not None and asked else -1,
            since.epoch if since is not None and asked else "",
            max(1, rules.history_size),
        )
        reply = await self._do(lambda: self._history(keys=self._log_keys(channel), args=args))
        top = Position(int(reply[0]), reply[1].decode())
        if since is None:
            return Found(top)
        # the kept entries that are young enough, and of those the unbroken run that ends
        # at the top (a run with a hole, or cut short by COUNT, cannot be told whole)
        fresh_after = int(reply[2]) - _ms(rules.history_ttl)
        kept = [p for t, p in _entries(channel, top.epoch, reply[3]) if t > fresh_after]
        start = len(kept)
        while start > 0 and kept[start - 1].offset == top.offset - (len(kept) - start):
            start -= 1
        run = kept[start:]
        oldest = run[0].offset if run else top.offset + 1
        return recovery(since, top, oldest, run, history=rules.history)

    # ------------------------------------------------------------------ watching

    def on_publication(self, callback: OnPublication) -> None:
        self._callback = callback

    async def watch(self, channel: str) -> None:
        self._check_open()
        if self._outage:
            raise self._unreachable(self._outage)
        added = channel not in self._watched
        if added and len(self._watched) >= MAX_WATCHED:
            raise Unavailable(
                f"this process watches {MAX_WATCHED} channels of {self.address} already"
            )
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="wiremesh-channels-reader")
        self._watched.add(channel)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(channel, [])
        waiting.append(future)
        try:
            async with asyncio.timeout(WATCH_TIMEOUT):
                pubsub = self._pubsub
                if pubsub is not None:  # else the reader subscribes it when it connects
                    await pubsub.subscribe(self._topic(channel))
                await future
        except (*REDIS_ERRORS, Unavailable) as exc:
            if added:
                self._watched.discard(channel)
            if isinstance(exc, Unavailable):
                raise
            raise self._unreachable(error_text(exc)) from None
        finally:
            with contextlib.suppress(ValueError):
                waiting.remove(future)
            if not waiting and self._waiting.get(channel) is waiting:
                del self._waiting[channel]

    async def unwatch(self, channel: str) -> None:
        if channel not in self._watched:
            return
        self._watched.discard(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reader connects without it
        # a failure here is the connection's: the reader connects again without it, and
        # what still arrives for the channel meanwhile is dropped
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await pubsub.unsubscribe(self._topic(channel))

    async def _read(self) -> None:
        """Connect, subscribe to every watched channel, deliver; again after a drop."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_INITIAL
        while True:
            pubsub = self.redis.pubsub()
            started = loop.time()
            try:
                await pubsub.ping(_PING)  # connects; the answer arrives as a message
                await self._subscribe_all(pubsub)
                self._outage = ""
                await self._deliver_from(pubsub)
            except Exception as exc:  # never die: what went wrong is one line per outage
                self._pubsub = None
                why = error_text(exc)
                if not self._outage:
                    level = logging.WARNING if isinstance(exc, REDIS_ERRORS) else logging.ERROR
                    log.log(
                        level,
                        "the channel engine at %s is unreachable (%s): watched channels "
                        "deliver again once it is back",
                        self.address,
                        why,
                        exc_info=not isinstance(exc, REDIS_ERRORS),
                    )
                self._outage = why
                self._fail_waiting(self._unreachable(why))
            finally:
                if self._pubsub is pubsub:
                    self._pubsub = None
                with contextlib.suppress(*REDIS_ERRORS, RuntimeError):
                    await pubsub.aclose()
            if loop.time() - started > BACKOFF_MAX:
                backoff = BACKOFF_INITIAL  # the connection had lasted: a new outage
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        done: set[str] = set()
        while missing := [c for c in self._watched if c not in done]:
            for i in range(0, len(missing), SUBSCRIBE_BATCH):
                part = missing[i : i + SUBSCRIBE_BATCH]
                await pubsub.subscribe(*(self._topic(c) for c in part))
                done.update(part)
        self._pubsub = pubsub  # from here watch() and unwatch() use it themselves
        if stale := [self._topic(c) for c in done if c not in self._watched]:
            await pubsub.unsubscribe(*stale)

    async def _deliver_from(self, pubsub: PubSub) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=PING_INTERVAL)
            if task.cancelling():
                # redis-py's get_message can swallow a cancellation that arrives while it
                # reads; it must still end the reader
                raise asyncio.CancelledError
            now = loop.time()
            if message is None:
                if now - heard >= 2 * PING_INTERVAL:
                    raise RedisConnectionError(f"no answer for {2 * PING_INTERVAL:g}s")
                if now - heard >= PING_INTERVAL:
                    await pubsub.ping(_PING)
                continue
            heard = now
            self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        topic = message["channel"]
        if not isinstance(topic, bytes) or not topic.startswith(self._topics):
            return  # a pong
        channel = topic[len(self._topics) :].decode(errors="replace")
        if kind == "message":
            if channel in self._watched:
                publication = _decode(channel, message["data"])
                if publication is not None:
                    self._deliver(publication)
        elif kind == "subscribe":
            for future in self._waiting.pop(channel, ()):
                if not future.done():
                    future.set_result(None)

    def _deliver(self, publication: Publication) -> None:
        try:
            self._callback(publication)
        except Exception:
            self._callback_errors += 1
            if self._callback_errors % 1000 == 1:  # the first, then one in a thousand
                log.exception(
                    "the channel callback failed on %s (%d failures so far)",
                    publication.channel,
                    self._callback_errors,
                )

    def _fail_waiting(self, error: Unavailable) -> None:
        for futures in self._waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._waiting.clear()

    # ------------------------------------------------------------------ presence

    async def join(self, channel: str, member: Member, ttl: float) -> bool:
        args = _join_args(member, ttl)
        reply = await self._do(lambda: self._join(keys=self._presence_keys(channel), args=args))
        return int(reply) == 1

    async def leave(self, channel: str, session: str) -> Member | None:
        keys = self._presence_keys(channel)
        reply = await self._do(lambda: self._leave(keys=keys, args=(session,)))
        return _member(reply) if reply is not None else None

    async def presence(self, channel: str) -> list[Member]:
        keys = self._presence_keys(channel)
        reply = await self._do(lambda: self._presence(keys=keys, args=(MAX_PRESENCE,)))
        return [m for m in map(_member, reply) if m is not None]

    async def refresh(self, members: Iterable[tuple[str, Member]], ttl: float) -> None:
        """Also puts back a member Redis lost (it restarted empty, or swept the member
        while its gateway was cut off)."""
        batch: list[tuple[str, Member]] = []
        for entry in members:
            batch.append(entry)
            if len(batch) >= REFRESH_BATCH:
                await self._refresh(batch, ttl)
                batch = []
        if batch:
            await self._refresh(batch, ttl)

    async def _refresh(self, batch: list[tuple[str, Member]], ttl: float) -> None:
        async def send() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, member in batch:
                    keys = self._presence_keys(channel)
                    await self._join(keys=keys, args=_join_args(member, ttl), client=pipe)
                await pipe.execute()

        await self._do(send)

    async def sweep(self, channel: str) -> list[Member]:
        keys = self._presence_keys(channel)
        reply = await self._do(lambda: self._sweep(keys=keys, args=(SWEEP_LIMIT,)))
        return [m for m in map(_member, reply) if m is not None]

    # ------------------------------------------------------------------ plumbing

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_waiting(Unavailable(f"the channel engine at {self.address} is closed"))
        self._watched.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.aclose()

    async def _do(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, with Redis's errors as :class:`Unavailable`."""
        self._check_open()
        try:
            return await call()
        except REDIS_ERRORS as exc:
            raise self._unreachable(error_text(exc)) from None

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"the channel engine at {self.address} is closed")

    def _unreachable(self, why: str) -> Unavailable:
        return Unavailable(f"the channel engine at {self.address} is unreachable: {why}")

    def _topic(self, channel: str) -> str:
        return f"{self._prefix}channel:{channel}"

    def _log_keys(self, channel: str) -> list[str]:
        return [f"{self._prefix}channel:{channel}", f"{self._prefix}history:{channel}"]

    def _presence_keys(self, channel: str) -> list[str]:
        return [f"{self._prefix}presence:{channel}", f"{self._prefix}members:{channel}"]


def _ignore(publication: Publication) -> None:
    pass


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _join_args(member: Member, ttl: float) -> tuple[str, bytes, int, int]:
    return member.session, _member_json(member), _ms(ttl), _ms(ttl + max(ttl, PRESENCE_GRACE))


def _member_json(member: Member) -> bytes:
    return json.dumps(member.as_json(), separators=(",", ":")).encode()


def _member(raw: Any) -> Member | None:
    """The member a JSON text stored in Redis holds, or None when it is unreadable."""
    try:
        fields = json.loads(raw)
        return Member(str(fields["session"]), str(fields["principal"]), str(fields["gateway"]))
    except (ValueError, KeyError, TypeError):
        return None


def _decode(channel: str, data: Any) -> Publication | None:
    """A pub/sub message as a publication; None when it is not one (another program's)."""
    try:
        kind, offset, epoch, body = bytes(data).split(b" ", 3)
        return Publication(channel, body, int(offset), epoch.decode(), _KINDS[kind])
    except (ValueError, KeyError, TypeError):  # UnicodeDecodeError too
        return None


def _entries(channel: str, epoch: str, raw: list[Any]) -> list[tuple[int, Publication]]:
    """The stream entries of a history reply: (when, in Redis's ms; the publication)."""
    entries = []
    for entry_id, fields in raw:
        try:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            offset = int(entry_id.split(b"-", 1)[0])
            entries.append((int(values[b"t"]), Publication(channel, values[b"d"], offset, epoch)))
        except (ValueError, KeyError, TypeError):
            continue
    return entries
