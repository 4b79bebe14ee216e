"""The Redis registry: who is alive in a mesh that spans machines.

``[registry] backend = "redis"`` with ``url = "redis://host:6379/0"`` (or ``rediss://``
with TLS). Every node, gateway and client talks to Redis directly, through redis-py's
asyncio client; there is no registry process and no cluster protocol of wiremesh's own.

The keys of one mesh share the prefix ``wm:{<mesh>}:`` (the braces are a Redis Cluster
hash tag: every key of a mesh lives in one slot, so each script below may touch them all):

==============  ======  =====================================================
key             type    holds
==============  ======  =====================================================
``nodes``       hash    node id → the node's record, a serialized
                        ``wiremesh.registry.v1.Node`` (``proto/…/registry.proto``)
``deadlines``   zset    node id → when its lease ends, in Redis's own milliseconds
``stats``       hash    node id → its counters, a serialized ``Heartbeat``
``services``    set     every service that has had a node
``state``       hash    ``version``: bumped by every change of ``nodes``;
                        ``epoch``: this keyspace's life, new after Redis lost the
                        mesh; ``seen``: when any member last reached Redis (Redis's
                        clock, ms); ``away``: ms that Redis was away, charged to no
                        lease; ``quiet``: the longest pause between members' visits
                        that still counts as the mesh's time (half the latest ttl)
==============  ======  =====================================================

Every change is one Lua script, atomic, which also publishes the change on the channel
``wm:{<mesh>}:changes`` as ``<epoch> <version> put|del <node id> <record>``.

Liveness: a lease's deadline is Redis's ``TIME`` plus the node's ttl, renewed by each
heartbeat, so the hosts' clocks never matter. Any member's script sweeps the leases whose
deadline has passed (keyspace notifications are no liveness signal: Redis fires them
when it gets round to deleting a key, not when it expires). When no member at all
reached Redis for longer than half the ttl (Redis was away, or paused), the rest of
that pause is not charged to the leases: the lease clock stops while Redis is away, so
an outage of Redis is never taken for the death of the nodes. A watcher's version check
also learns when the next lease ends and, when that comes before its next check, checks
then: a dead node leaves the views about one ttl after its last heartbeat, however few
members the mesh has.

Watchers subscribe to the channel, then read the whole mesh; a change applies when its
version follows the last one, anything else (a gap, another epoch) reads the mesh again,
as does every reconnect and a periodic version check that catches a lost message.
While Redis is unreachable a watcher yields nothing, so every view keeps its last
snapshot; :attr:`RedisRegistry.reachable` says it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from wiremesh.core.defaults import HEARTBEAT_INTERVAL, START_TIMEOUT, TTL
from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState
from wiremesh.core.names import is_redis_url, redact_url, split_mesh
from wiremesh.errors import ConfigError, Unavailable
from wiremesh.proto import registry_pb2 as pb
from wiremesh.registry.embedded import node_from_proto, node_to_proto
from wiremesh.transport.tls import TlsFiles

__all__ = ["MESHES_KEY", "RedisRegistry", "find_mesh", "is_redis_url", "mesh_prefix", "split_mesh"]

log = logging.getLogger("wiremesh.registry")

#: a set of the mesh names in a Redis database (so that a CLI given only a URL finds one)
MESHES_KEY = "wiremesh:meshes"
#: seconds before a failed heartbeat or watch is tried again
RETRY_DELAY = 0.1
#: how long a single Redis command may take before the registry counts as unreachable
COMMAND_TIMEOUT = 1.0
#: most changes a watcher applies before it shows a snapshot
_BATCH = 1000
#: seconds after a lease's end that a watcher checks, so that Redis's clock has passed it
_LATE = 0.005

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_KEYS = ("nodes", "deadlines", "stats", "services", "state")

# Every script starts here. KEYS are _KEYS in order; ARGV[1] is an epoch to use when the
# keyspace has none (a fresh or emptied Redis), ARGV[2] the change channel, ARGV[3] the
# longest pause in ms between two members' visits that counts as the mesh's time (a longer
# one means Redis was away: the rest of it is not charged to the leases) when the mesh has
# not said it yet (a lease's put says it: watchers alone do not know the mesh's ttl),
# ARGV[4] the ttl in ms. Defines now (Redis's clock less the time it was away), epoch,
# version, change() and drop(), and sweeps the leases that ended. The state hash holds
# seen, away, quiet, epoch and version: one read and one write per script.
_PROLOGUE = """
local t = redis.call('TIME')
local wall = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[5], 'seen', 'away', 'quiet', 'epoch', 'version')
local seen = tonumber(s[1] or '0')
local away = tonumber(s[2] or '0')
local quiet = tonumber(s[3] or ARGV[3])
local epoch = s[4] or ARGV[1]
local version = tonumber(s[5] or '0')
if seen > 0 and wall - seen > quiet then
  away = away + (wall - seen - quiet)
end
redis.call('HSET', KEYS[5], 'seen', wall, 'away', away, 'epoch', epoch)
local now = wall - away
local ttl = tonumber(ARGV[4])
local function change(op, id, record)
  version = redis.call('HINCRBY', KEYS[5], 'version', 1)
  redis.call('PUBLISH', ARGV[2], epoch .. ' ' .. version .. ' ' .. op .. ' ' .. id .. ' ' .. record)
end
local function drop(id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  if redis.call('HDEL', KEYS[1], id) == 1 then
    change('del', id, '')
    return true
  end
  return false
end
local swept = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 64)) do
  if drop(id) then table.insert(swept, id) end
end
"""

# ARGV[5] node id, ARGV[6] service, ARGV[7] record
_PUT = (
    _PROLOGUE
    + """
redis.call('HSET', KEYS[1], ARGV[5], ARGV[7])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
redis.call('HSET', KEYS[5], 'quiet', ARGV[3])
redis.call('SADD', KEYS[4], ARGV[6])
change('put', ARGV[5], ARGV[7])
return {epoch, version, swept}
"""
)

# ARGV[5] node id, ARGV[6] its counters (a serialized Heartbeat; empty: unchanged).
# Answers a version of -1 when the node is unknown here: it registers again.
_BEAT = (
    _PROLOGUE
    + """
if redis.call('ZSCORE', KEYS[2], ARGV[5]) == false then
  return {epoch, -1, swept}
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], ARGV[5], ARGV[6]) end
return {epoch, version, swept}
"""
)

# ARGV[5] node id
_DROP = (
    _PROLOGUE
    + """
drop(ARGV[5])
return {epoch, version, swept}
"""
)

# also answers the ms until the next lease ends (-1: none), for the watcher to be there
_CHECK = (
    _PROLOGUE
    + """
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local ends_in = -1
if first[2] then ends_in = tonumber(first[2]) - now end
return {epoch, version, swept, ends_in}
"""
)

_READ = (
    _PROLOGUE
    + """
return {epoch, version, swept, redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[4]),
        redis.call('HGETALL', KEYS[3])}
"""
)


def mesh_prefix(mesh: str) -> str:
    """The prefix of every key of ``mesh`` (one Redis Cluster slot)."""
    return f"wm:{{{mesh}}}:"


async def find_mesh(url: str, *, tls: TlsFiles | None = None, timeout: float = 5.0) -> str:
    """The name of the one mesh registered in the Redis database at ``url``; a
    :class:`ConfigError` naming them when there are several, :class:`Unavailable` when
    there is none or Redis cannot be reached."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, **tls_options(url, tls)
    )
    try:
        names = sorted(_text(n) for n in await client.smembers(MESHES_KEY))
    except REDIS_ERRORS as exc:
        raise _unreachable(redact_url(url), exc) from None
    finally:
        await client.aclose()
    if not names:
        raise Unavailable(f"no mesh has registered in the registry at {redact_url(url)}")
    if len(names) > 1:
        listed = ", ".join(names)
        raise ConfigError(
            f"the registry at {redact_url(url)} holds several meshes ({listed}): name one "
            f"after a '#', e.g. {redact_url(url)}#{names[0]}"
        )
    return names[0]


class RedisRegistry:
    """A :class:`~wiremesh.registry.Registry` on Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        mesh: str,
        tls: TlsFiles | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        ttl: float = TTL,
        check_interval: float | None = None,
    ) -> None:
        if ttl <= heartbeat_interval:
            raise ValueError("ttl must be greater than heartbeat_interval")
        url, fragment = split_mesh(url)
        mesh = fragment or mesh
        if not mesh:
            raise ConfigError("a Redis registry needs the mesh's name (mesh.name)")
        self.url = url
        #: the URL without its password: for logs, errors and displays
        self.address = redact_url(url)
        self.mesh = mesh
        self.heartbeat_interval = heartbeat_interval
        self.ttl = ttl
        #: seconds between two version checks of an idle watcher (each also sweeps the
        #: leases that ended); a heartbeat's interval, so that a live member reaches Redis
        #: more often than the pause that counts as Redis being away
        self.check_interval = check_interval or heartbeat_interval
        prefix = mesh_prefix(mesh)
        self.channel = prefix + "changes"
        self._keys = [prefix + key for key in _KEYS]
        timeout = min(COMMAND_TIMEOUT, ttl / 2)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # a failed command is tried again by the loop that sent it, at its own pace
            retry=Retry(NoBackoff(), 0),
            health_check_interval=max(1, int(self.check_interval * 2)),
            **tls_options(url, tls),
        )
        self._scripts = {
            name: self.redis.register_script(text)
            for name, text in (
                ("put", _PUT),
                ("beat", _BEAT),
                ("drop", _DROP),
                ("check", _CHECK),
                ("read", _READ),
            )
        }
        #: whether the last exchange with Redis went through
        self.reachable = True
        #: the registry's epoch and version in the latest reply of any script, and when
        #: (the loop's clock): a lease's heartbeat spares its node's view a version check
        self.last_seen: tuple[str, int, float] = ("", -1, 0.0)
        self._closed = False
        self._leases: list[_RedisLease] = []

    # ------------------------------------------------------------------ scripts

    async def run(self, script: str, *args: str | bytes) -> list[Any]:
        """Run one of the scripts; :class:`Unavailable` when Redis cannot be reached."""
        # a fresh epoch each time: the one a just-emptied Redis takes must differ from
        # every epoch it had before
        argv = (secrets.token_hex(8), self.channel, int(self.ttl * 1000 / 2), int(self.ttl * 1000))
        try:
            reply: list[Any] = await self._scripts[script](keys=self._keys, args=[*argv, *args])
        except REDIS_ERRORS as exc:
            self._set_reachable(False, exc)
            raise _unreachable(self.address, exc) from None
        self._set_reachable(True)
        self.last_seen = (reply[0].decode(), int(reply[1]), asyncio.get_running_loop().time())
        swept = reply[2]
        for node_id in swept:
            log.warning("node %s missed its heartbeats and left the mesh", node_id.decode())
        return reply

    def _set_reachable(self, reachable: bool, exc: BaseException | None = None) -> None:
        if reachable != self.reachable:
            if reachable:
                log.warning("the registry at %s is reachable again", self.address)
            else:
                log.warning(
                    "the registry at %s is unreachable (%s): every view keeps its last snapshot",
                    self.address,
                    error_text(exc) if exc else "",
                )
        self.reachable = reachable

    # ------------------------------------------------------------------ Registry

    async def lease(self, node: NodeInfo, timeout: float = START_TIMEOUT) -> _RedisLease:
        lease = _RedisLease(self, node)
        await lease.start(timeout)
        self._leases.append(lease)
        return lease

    async def snapshot(self, timeout: float = 5.0) -> MeshSnapshot:
        async with asyncio.timeout(timeout):
            return _snapshot(await self.run("read"))

    async def watch(self) -> AsyncIterator[MeshSnapshot]:
        while not self._closed:
            try:
                async for snapshot in self._follow():
                    yield snapshot
            except Unavailable:
                pass
            except REDIS_ERRORS as exc:
                self._set_reachable(False, exc)
            await asyncio.sleep(RETRY_DELAY)

    async def _follow(self) -> AsyncIterator[MeshSnapshot]:
        """One subscription: the whole mesh, then each change, until something is off."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        try:
            await pubsub.subscribe(self.channel)
            mesh = _Mesh.read(await self.run("read"))  # after subscribing: nothing missed
            yield mesh.snapshot()
            next_check = loop.time() + self.check_interval
            lease_ends = False
            while True:
                timeout = max(0.0, next_check - loop.time())
                message = await pubsub.get_message(timeout=timeout)
                if task.cancelling():
                    # redis-py's get_message can swallow a cancellation that arrives
                    # while it reads; it must still end this watch
                    raise asyncio.CancelledError
                if message is not None:
                    # every change already here, then one snapshot for them all
                    changed = 0
                    while message is not None and changed < _BATCH:
                        if not mesh.apply(message["data"]):
                            return  # a gap or another epoch: subscribe and read again
                        changed += 1
                        message = await pubsub.get_message(timeout=0)
                    if message is not None and not mesh.apply(message["data"]):
                        return
                    yield mesh.snapshot()
                    continue
                now = loop.time()
                if now < next_check:
                    continue  # redis-py read its own health check's answer
                next_check = now + self.check_interval
                epoch, version, at = self.last_seen
                if lease_ends or now - at > self.check_interval / 2:
                    # (a lease's heartbeat just said it: no need to ask)
                    epoch, version, ends_in = await self._check()
                    # a lease ends before the next check: be there when it does, so that
                    # a dead node leaves within the ttl of its last heartbeat
                    lease_ends = 0 <= ends_in < self.check_interval
                    if lease_ends:
                        next_check = now + ends_in + _LATE
                if (epoch, version) == (mesh.epoch, mesh.version):
                    continue
                # behind, or a change in flight: take what has arrived, then compare again
                message = await pubsub.get_message(timeout=0)
                while message is not None:
                    if not mesh.apply(message["data"]):
                        return
                    message = await pubsub.get_message(timeout=0)
                if mesh.epoch != epoch or mesh.version < version:
                    return  # a message was lost: subscribe and read again
                yield mesh.snapshot()
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()

    async def _check(self) -> tuple[str, int, float]:
        """The registry's epoch and version, and seconds until the next lease ends
        (-1: no lease)."""
        reply = await self.run("check")
        ends_in = int(reply[3])
        return reply[0].decode(), int(reply[1]), ends_in / 1000 if ends_in >= 0 else -1.0

    async def close(self) -> None:
        self._closed = True
        for lease in self._leases:
            await lease.release()
        await self.redis.aclose()


class _Mesh:
    """A watcher's copy of the registry, kept by applying changes in version order."""

    def __init__(
        self, epoch: str, version: int, nodes: dict[str, NodeInfo], services: set[str]
    ) -> None:
        self.epoch = epoch
        self.version = version
        self.nodes = nodes
        self.services = services

    @classmethod
    def read(cls, reply: list[Any]) -> _Mesh:
        snapshot = _snapshot(reply)
        nodes = {n.node_id: n for n in snapshot.nodes}
        return cls(snapshot.epoch, snapshot.version, nodes, set(snapshot.services))

    def apply(self, data: bytes) -> bool:
        """Apply one change; False when it does not follow (read everything again)."""
        try:
            epoch, version, op, node_id, record = data.split(b" ", 4)
            if epoch.decode() != self.epoch:
                return False
            number = int(version)
            key = node_id.decode()
        except ValueError:  # UnicodeDecodeError too: a message some other program sent
            return False
        if number <= self.version:
            return True  # already in what was read
        if number != self.version + 1:
            return False
        self.version = number
        if op == b"del":
            self.nodes.pop(key, None)
            return True
        try:
            node = node_from_proto(pb.Node.FromString(record))
        except Exception:  # a record some other program wrote: read it all again
            return False
        old = self.nodes.get(key)
        self.nodes[key] = replace(node, stats=old.stats) if old is not None else node
        self.services.add(node.service)
        return True

    def snapshot(self) -> MeshSnapshot:
        return MeshSnapshot.of(self.version, self.nodes.values(), self.services, self.epoch)


class _RedisLease:
    def __init__(self, registry: RedisRegistry, node: NodeInfo) -> None:
        self.registry = registry
        self.node = node
        #: the counters sent with every heartbeat
        self.stats: Callable[[], dict[str, int]] = dict
        self._news = asyncio.Event()  # the record changed: put it now
        self._task: asyncio.Task[None] | None = None
        #: the counters Redis holds (sent again only when they change)
        self._sent_stats: dict[str, int] | None = None

    async def start(self, timeout: float) -> None:
        """Register, trying again until ``timeout``: a Redis busy with a mesh that
        starts all at once is not a reason to give up."""
        registry = self.registry
        why = "no answer"
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self._put()
                        break
                    except Unavailable as exc:
                        why = exc.message
                        await asyncio.sleep(RETRY_DELAY)
                with contextlib.suppress(*REDIS_ERRORS):
                    await registry.redis.sadd(MESHES_KEY, registry.mesh)
        except TimeoutError:
            raise Unavailable(
                f"could not register with the registry at {registry.address} within "
                f"{timeout:g}s: {why}"
            ) from None
        self._task = asyncio.create_task(self._hold(), name=f"wiremesh-lease-{self.node.node_id}")

    async def set_state(self, state: NodeState) -> None:
        self.node = self.node.with_state(state)
        self._news.set()

    async def update(self, node: NodeInfo) -> None:
        """Replace the node's record (its groups changed); watchers are told."""
        self.node = replace(node, state=self.node.state)
        self._news.set()

    async def release(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Unavailable, TimeoutError):
            async with asyncio.timeout(self.registry.ttl):
                await self.registry.run("drop", self.node.node_id)

    async def _put(self) -> None:
        node = self.node
        record = node_to_proto(replace(node, stats={})).SerializeToString()
        await self.registry.run("put", node.node_id, node.service, record)
        self._sent_stats = None  # a record put anew: its counters go with the next beat

    async def _hold(self) -> None:
        """Heartbeats every ``heartbeat_interval``; the record again when Redis forgot it
        (restarted empty, or the node was swept while cut off) or when it changed."""
        registry = self.registry
        while True:
            try:
                if self._news.is_set():
                    self._news.clear()
                    await self._put()
                else:
                    stats = self.stats()
                    changed = stats != self._sent_stats
                    blob = pb.Heartbeat(stats=stats).SerializeToString() if changed else b""
                    reply = await registry.run("beat", self.node.node_id, blob)
                    if changed:
                        self._sent_stats = stats
                    if int(reply[1]) < 0:
                        log.warning(
                            "node %s is not in the registry at %s (it restarted, or this "
                            "node was cut off): registering again",
                            self.node.node_id,
                            registry.address,
                        )
                        await self._put()
            except Unavailable:
                await asyncio.sleep(RETRY_DELAY)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), registry.heartbeat_interval)


def _snapshot(reply: list[Any]) -> MeshSnapshot:
    epoch, version = reply[0].decode(), int(reply[1])
    records, services, stats = reply[3], reply[4], reply[5]
    counters: dict[str, dict[str, int]] = {}
    for i in range(0, len(stats), 2):
        with contextlib.suppress(Exception):
            counters[stats[i].decode()] = dict(pb.Heartbeat.FromString(stats[i + 1]).stats)
    nodes = []
    for i in range(0, len(records) - 1, 2):
        try:
            node_id = records[i].decode()
            node = node_from_proto(pb.Node.FromString(records[i + 1]))
        except Exception:  # a record some other program wrote
            log.warning("an unreadable record in the registry (%r); ignored", records[i][:64])
            continue
        nodes.append(replace(node, stats=counters.get(node_id, {})))
    names = []
    for service in services:
        with contextlib.suppress(UnicodeDecodeError):
            names.append(service.decode())
    return MeshSnapshot.of(version, nodes, names, epoch)


def tls_options(url: str, tls: TlsFiles | None) -> dict[str, Any]:
    """redis-py's TLS keywords for a ``rediss://`` URL: the mesh's CA and certificate
    unless the URL's own ``ssl_*`` parameters say otherwise."""
    if not url.startswith("rediss://") or tls is None:
        return {}
    given = {key for key, _ in parse_qsl(urlsplit(url).query)}
    options = {
        "ssl_ca_certs": str(tls.ca),
        "ssl_certfile": str(tls.cert),
        "ssl_keyfile": str(tls.key),
    }
    return {key: value for key, value in options.items() if key not in given}


def _unreachable(address: str, exc: BaseException) -> Unavailable:
    return Unavailable(f"the registry at {address} is unreachable: {error_text(exc)}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")
