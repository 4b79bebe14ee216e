"""The embedded registry: a small gRPC service the supervisor runs, and its client.

No server to install: ``wiremesh run`` hosts :class:`RegistryServer` in its own process
and every node talks to it with :class:`EmbeddedRegistry`. The wire contract is
``proto/wiremesh/registry/v1/registry.proto`` (``docs/protocol.md`` §8.2); the lease rules
are :class:`wiremesh.core.membership.Membership`'s.

Who may join. Only the mesh's members may lease a node, or any local process could put
its own address in the mesh and be sent calls. Without TLS the supervisor makes a join
secret for each run, writes it into ``mesh.json`` (mode 0600, in a data folder of mode
0700) and hands it to its nodes and gateway in their launch descriptions; a Lease call
carries it as the metadata :data:`JOIN_KEY`, compared in constant time, and is refused
``UNAUTHENTICATED`` without it. With TLS on, the registry requires a client certificate
signed by the mesh's CA: the certificate is the admission and no secret is asked for
(a gateway on another machine holds a certificate, never the mesh file). Watch and List
stay open to whoever reaches the registry, as the nodes' own ports are: the membership
names addresses that anyone on the machine can find anyway, and nothing secret.

Channels. The same server serves the embedded channel engine
(:class:`wiremesh.channels.embedded.ChannelServer`, ``docs/protocol.md`` §8.4): every one
of its calls needs the admission a Lease needs, and the registry's sweep drops its expired
logs and members.

Bounds. A member too must not be able to swamp the mesh: a Lease stream holds one node
(registering another node id on it is refused ``INVALID_ARGUMENT``), one connection holds
at most ``max_leases_per_connection`` Lease streams (:data:`MAX_LEASES_PER_CONNECTION`;
more are refused ``RESOURCE_EXHAUSTED``), and a Lease message (so a node's record, and its
counters) is at most :data:`MAX_RECORD_BYTES`. However many nodes there are, a watcher
gets the mesh in parts of about :data:`PART_BYTES` (``Snapshot.more``), each far below
gRPC's usual 4 MiB limit. Refusals are logged one line per
:data:`REFUSALS_LOGGED_EVERY` seconds, not one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc

from wiremesh.channels.channel_server import ChannelServer
from wiremesh.core.membership import Membership
from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo, NodeState
from wiremesh.errors import Unauthenticated, Unavailable
from wiremesh.proto import registry_pb2 as pb
from wiremesh.transport.grpc_core import QUICK_RECONNECT
from wiremesh.transport.tls import open_channel

__all__ = [
    "HELD_KEY",
    "JOIN_KEY",
    "MAX_LEASES_PER_CONNECTION",
    "MAX_RECORD_BYTES",
    "PART_BYTES",
    "EmbeddedRegistry",
    "RegistryServer",
    "new_join_secret",
    "node_from_proto",
    "node_to_proto",
]

log = logging.getLogger("wiremesh.registry")

_SERVICE = "wiremesh.registry.v1.Registry"
_LEASE = f"/{_SERVICE}/Lease"
_WATCH = f"/{_SERVICE}/Watch"
_RECONNECT_DELAY = 0.2

#: the metadata key of the join secret on a Lease call
JOIN_KEY = "wm-join"
#: the response header (value "held") a Lease gets once the registry holds its node
HELD_KEY = "wm-lease"
#: the largest message the registry takes (a Lease message: a node's record, its counters)
MAX_RECORD_BYTES = 256 * 1024
#: Lease streams one connection may hold at once (a node holds one, on its own connection)
MAX_LEASES_PER_CONNECTION = 64
#: a Watch part holds nodes up to about this many bytes (one record more at most)
PART_BYTES = 1024 * 1024
#: seconds between two log lines about refused calls of one kind
REFUSALS_LOGGED_EVERY = 10.0


def new_join_secret() -> str:
    """A fresh join secret (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def node_to_proto(node: NodeInfo) -> pb.Node:
    return pb.Node(
        node_id=node.node_id,
        service=node.service,
        address=node.address,
        pid=node.pid,
        started_at=node.started_at,
        state=node.state.value,
        methods=[
            pb.Method(
                name=m.name,
                idempotent=m.idempotent,
                returns_protobuf=m.returns_protobuf,
                streaming=m.streaming,
            )
            for m in node.methods.values()
        ],
        metadata=dict(node.metadata),
        groups=list(node.groups),
        subscriptions=list(node.subscriptions),
        stats=dict(node.stats),
        host=node.host,
    )


def node_from_proto(msg: pb.Node) -> NodeInfo:
    try:
        state = NodeState(msg.state)
    except ValueError:
        state = NodeState.SERVING
    return NodeInfo(
        node_id=msg.node_id,
        service=msg.service,
        address=msg.address,
        pid=msg.pid,
        started_at=msg.started_at,
        state=state,
        methods={
            m.name: MethodInfo(m.name, m.idempotent, m.returns_protobuf, m.streaming)
            for m in msg.methods
        },
        metadata=dict(msg.metadata),
        groups=tuple(msg.groups),
        subscriptions=tuple(msg.subscriptions),
        stats=dict(msg.stats),
        host=msg.host,
    )


def snapshot_to_proto(snapshot: MeshSnapshot) -> pb.Snapshot:
    return pb.Snapshot(
        version=snapshot.version,
        nodes=[node_to_proto(n) for n in snapshot.nodes],
        services=sorted(snapshot.services),
        epoch=snapshot.epoch,
    )


def snapshot_from_proto(msg: pb.Snapshot) -> MeshSnapshot:
    nodes = (node_from_proto(n) for n in msg.nodes)
    return MeshSnapshot.of(msg.version, nodes, msg.services, msg.epoch)


def snapshot_parts(
    version: int, epoch: str, entries: list[bytes], limit: int | None = PART_BYTES
) -> list[bytes]:
    """One snapshot as serialized ``Snapshot`` messages of about ``limit`` bytes each
    (None: one message). ``entries`` are serialized ``Snapshot`` messages holding one
    node or one service each: protobuf merges concatenated messages, repeated fields
    appending, so a part is its entries joined and a header (version, epoch, ``more``)."""
    groups: list[list[bytes]] = [[]]
    size = 0
    for entry in entries:
        if limit is not None and groups[-1] and size + len(entry) > limit:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += len(entry)
    more = pb.Snapshot(version=version, epoch=epoch, more=True).SerializeToString()
    last = pb.Snapshot(version=version, epoch=epoch).SerializeToString()
    return [b"".join(group) + more for group in groups[:-1]] + [b"".join(groups[-1]) + last]


class _Refusals:
    """Refused calls of one kind, logged in one line per ``every`` seconds rather than one
    per call: a process knocking a thousand times a second must not flood the log."""

    def __init__(self, what: str, every: float = REFUSALS_LOGGED_EVERY) -> None:
        self.what = what
        self.every = every
        #: every refusal since the registry started
        self.total = 0
        self._unlogged = 0
        self._last_peer = ""
        self._logged_at: float | None = None

    def add(self, peer: str, now: float) -> None:
        self.total += 1
        self._unlogged += 1
        self._last_peer = peer
        self.flush(now)

    def flush(self, now: float) -> None:
        """Log the refusals not told yet, unless a line went out within ``every`` s."""
        if not self._unlogged:
            return
        if self._logged_at is not None and now - self._logged_at < self.every:
            return
        log.warning(
            "registry: refused %d %s (the last from %s); one line per %gs at most",
            self._unlogged,
            self.what,
            self._last_peer,
            self.every,
        )
        self._unlogged = 0
        self._logged_at = now


class RegistryServer:
    """Holds the mesh's membership and serves it over gRPC.

    ``join_secret``: what every Lease call must carry as :data:`JOIN_KEY` metadata (None:
    no secret is asked for; the supervisor gives none when TLS is on, see the module
    docstring). ``max_leases_per_connection``: Lease streams one connection may hold."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: float = 1.5,
        sweep_interval: float = 0.25,
        credentials: grpc.ServerCredentials | None = None,
        join_secret: str | None = None,
        max_leases_per_connection: int = MAX_LEASES_PER_CONNECTION,
    ) -> None:
        self.host = host
        self.port = port
        self.membership = Membership(ttl)
        #: this server's life: watchers keep their last view when it changes (a restart)
        self.epoch = secrets.token_hex(8)
        self.sweep_interval = sweep_interval
        self.credentials = credentials
        self._join_secret = join_secret.encode() if join_secret else None
        self.max_leases_per_connection = max_leases_per_connection
        self._changed = asyncio.Event()
        #: set by stop(): every Watch stream ends (OK), so that none is cut mid-wait
        self._stopping = False
        self._owners: dict[str, object] = {}
        #: open Lease streams per connection (the peer's address names the connection)
        self._leases_of: dict[str, int] = {}
        #: each node's entry of a serialized snapshot, kept while its record is the same
        self._entries: dict[str, tuple[NodeInfo, bytes]] = {}
        self.unauthenticated = _Refusals("Lease call(s) without the mesh's join secret")
        self.crowded = _Refusals(
            f"Lease call(s) past {max_leases_per_connection} streams on one connection"
        )
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_RECORD_BYTES),
            ]
        )
        self._sweeper: asyncio.Task[None] | None = None
        handlers = {
            "Lease": grpc.stream_unary_rpc_method_handler(
                self.lease,
                request_deserializer=pb.LeaseRequest.FromString,
                response_serializer=pb.LeaseReply.SerializeToString,
            ),
            # both send serialized Snapshot messages (see snapshot_parts)
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch, request_deserializer=pb.WatchRequest.FromString
            ),
            "List": grpc.unary_unary_rpc_method_handler(
                self._list, request_deserializer=pb.WatchRequest.FromString
            ),
        }
        #: the embedded channel engine, on the same port and with the same admission
        self.channels = ChannelServer(
            admits=self._admits,
            refusals=_Refusals("Channels call(s) without the mesh's join secret"),
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers), self.channels.handler())
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Listen and serve; :class:`Unavailable` when the address cannot be bound."""
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self.credentials is None:
                self.port = self.server.add_insecure_port(bind)
            else:
                self.port = self.server.add_secure_port(bind, self.credentials)
        except RuntimeError:  # grpcio's only word for "bind failed"
            raise Unavailable(
                f"the registry cannot listen on {bind}: the address is in use or not "
                "available here (choose another registry.port, or 0 for any free port)"
            ) from None
        await self.server.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="wiremesh-registry-sweep")

    async def stop(self, grace: float = 0.5) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # end the open Watch streams first: a stream the server cancels logs an error
        self._stopping = True
        self._notify()
        self.channels.close()
        await self.server.stop(grace)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = time.monotonic()
            for node in self.membership.expire(now):
                log.warning("node %s missed its heartbeats and left the mesh", node.node_id)
                self._notify()
            self.unauthenticated.flush(now)
            self.crowded.flush(now)
            self.channels.sweep(now)

    def _admits(self, context: Any) -> bool:
        """Whether the call carries the join secret (always, when none is asked for)."""
        if self._join_secret is None:
            return True
        sent = b""
        for key, value in context.invocation_metadata() or ():
            if key == JOIN_KEY:
                sent = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(sent, self._join_secret)

    async def lease(self, requests: AsyncIterator[pb.LeaseRequest], context: Any) -> pb.LeaseReply:
        peer = str(context.peer())
        if not self._admits(context):
            self.unauthenticated.add(peer, time.monotonic())
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"this registry admits the mesh's members only: send the mesh's join secret "
                f"(mesh.json's join_secret) as '{JOIN_KEY}' metadata",
            )
        held = self._leases_of.get(peer, 0)
        if held >= self.max_leases_per_connection:
            self.crowded.add(peer, time.monotonic())
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"one connection holds at most {self.max_leases_per_connection} lease "
                "streams: open another connection",
            )
        self._leases_of[peer] = held + 1
        try:
            await self._hold_lease(requests, context)
        finally:
            left = self._leases_of.pop(peer, 1) - 1
            if left:
                self._leases_of[peer] = left
        return pb.LeaseReply()

    async def _hold_lease(self, requests: AsyncIterator[pb.LeaseRequest], context: Any) -> None:
        node: NodeInfo | None = None
        stream = object()  # this lease stream; the latest one to register a node owns it
        try:
            async for request in requests:
                now = time.monotonic()
                if request.HasField("register") or request.HasField("update"):
                    record = node_from_proto(
                        request.register if request.HasField("register") else request.update
                    )
                    if node is not None and record.node_id != node.node_id:
                        # one node per stream: a stream cannot fill the mesh with records
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"a lease stream holds one node: this one holds {node.node_id}; "
                            f"lease {record.node_id} on a stream of its own",
                        )
                    first = node is None
                    node = record
                    self.membership.register(node, now)
                    self._owners[node.node_id] = stream
                    self._notify()
                    if first:  # the node is in the mesh: its lease() may return
                        await context.send_initial_metadata(((HELD_KEY, "held"),))
                elif node is not None:
                    state = NodeState(request.heartbeat.state) if request.heartbeat.state else None
                    if state is not None:
                        node = node.with_state(state)
                    before = self.membership.version
                    if not self.membership.renew(node.node_id, now, state):
                        # it hung past its ttl and came back: it is alive again
                        self.membership.register(node, now)
                        self._owners[node.node_id] = stream
                    if request.heartbeat.stats:
                        self.membership.set_stats(node.node_id, dict(request.heartbeat.stats))
                    if self.membership.version != before:
                        self._notify()
        except (grpc.aio.AioRpcError, ValueError) as exc:
            log.debug("lease stream ended: %s", exc)
        finally:
            # a node that registered again on a newer stream (its old one broke on its
            # side first) stays: only the stream that owns the node takes it away
            if node is not None and self._owners.get(node.node_id) is stream:
                del self._owners[node.node_id]
                if self.membership.remove(node.node_id) is not None:
                    self._notify()

    async def _watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[bytes]:
        sent = -1
        while not self._stopping:
            changed = self._changed
            if self.membership.version != sent:
                sent = self.membership.version
                # every part of one snapshot is made at once: a change in between waits
                for part in self._parts(PART_BYTES):
                    yield part
            else:
                await changed.wait()

    async def _list(self, request: pb.WatchRequest, context: Any) -> bytes:
        return self._parts(None)[0]

    def _parts(self, limit: int | None) -> list[bytes]:
        """The mesh now as serialized Snapshot parts (see :func:`snapshot_parts`). A
        node's entry is serialized once per record, not once per watcher and change."""
        snapshot = self.membership.snapshot()
        entries: dict[str, tuple[NodeInfo, bytes]] = {}
        for node in snapshot.nodes:
            entry = self._entries.get(node.node_id)
            if entry is None or entry[0] is not node:
                entry = (node, pb.Snapshot(nodes=[node_to_proto(node)]).SerializeToString())
            entries[node.node_id] = entry
        self._entries = entries
        services = [
            pb.Snapshot(services=[s]).SerializeToString() for s in sorted(snapshot.services)
        ]
        return snapshot_parts(
            snapshot.version,
            self.epoch,
            [entry for _, entry in entries.values()] + services,
            limit,
        )


class EmbeddedRegistry:
    """The client side of :class:`RegistryServer`, a :class:`~wiremesh.registry.Registry`.

    ``join_secret``: the mesh's join secret, sent on every Lease (None: send none)."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        heartbeat_interval: float = 0.5,
        join_secret: str | None = None,
    ) -> None:
        self.address = address
        self.heartbeat_interval = heartbeat_interval
        #: the metadata of a Lease call
        self.lease_metadata: tuple[tuple[str, str], ...] | None = (
            ((JOIN_KEY, join_secret),) if join_secret else None
        )
        options = list(QUICK_RECONNECT)
        self.channel = open_channel(address, credentials, options)
        self._lease_call = self.channel.stream_unary(
            _LEASE,
            request_serializer=pb.LeaseRequest.SerializeToString,
            response_deserializer=pb.LeaseReply.FromString,
        )
        self._watch_call = self.channel.unary_stream(
            _WATCH,
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.Snapshot.FromString,
        )
        self._closed = False
        self._leases: list[_EmbeddedLease] = []
        #: the nodes of the last snapshot watched, by their serialized record
        self._known: dict[bytes, NodeInfo] = {}
        #: whether the registry answered the last time it was asked
        self.reachable = True

    async def lease(self, node: NodeInfo) -> _EmbeddedLease:
        lease = _EmbeddedLease(self, node)
        self._leases.append(lease)
        await lease.start()
        return lease

    async def snapshot(self, timeout: float = 5.0) -> MeshSnapshot:
        """The mesh now: the first whole snapshot of a Watch (which, unlike List, comes
        in parts, so any size of mesh fits within the message limit)."""
        call = self._watch_call(pb.WatchRequest(), timeout=timeout)
        try:
            async for whole in _whole_snapshots(call):
                return snapshot_from_proto(whole)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"registry at {self.address}: {exc.details()}") from None
        finally:
            call.cancel()
        raise Unavailable(f"registry at {self.address}: the watch ended without a snapshot")

    async def watch(self) -> AsyncIterator[MeshSnapshot]:
        while not self._closed:
            call = self._watch_call(pb.WatchRequest())
            try:
                async for whole in _whole_snapshots(call):
                    self.reachable = True
                    yield self._snapshot_of(whole)
            except grpc.aio.AioRpcError as exc:
                log.debug("registry watch interrupted: %s", exc.code())
                self.reachable = False
            finally:
                call.cancel()
            await asyncio.sleep(_RECONNECT_DELAY)

    def _snapshot_of(self, msg: pb.Snapshot) -> MeshSnapshot:
        """:func:`snapshot_from_proto`, reusing each node whose record is the same as in
        the last snapshot: a large mesh changes a node at a time, and making a record's
        :class:`NodeInfo` costs some thirty times more than comparing its bytes."""
        known, self._known = self._known, {}
        nodes = []
        for record in msg.nodes:
            key = record.SerializeToString(deterministic=True)
            node = known.get(key) or node_from_proto(record)
            self._known[key] = node
            nodes.append(node)
        return MeshSnapshot.of(msg.version, nodes, msg.services, msg.epoch)

    async def close(self) -> None:
        self._closed = True
        for lease in self._leases:
            await lease.release()
        await self.channel.close(None)


async def _whole_snapshots(parts: AsyncIterable[pb.Snapshot]) -> AsyncIterator[pb.Snapshot]:
    """Each whole snapshot of a Watch: its parts merged, up to the one with ``more`` unset."""
    whole: pb.Snapshot | None = None
    async for part in parts:
        if whole is None:
            whole = part
        else:
            whole.MergeFrom(part)  # nodes and services append; version and epoch are the same
        if not part.more:
            done, whole = whole, None
            done.more = False
            yield done


class _EmbeddedLease:
    def __init__(self, registry: EmbeddedRegistry, node: NodeInfo) -> None:
        self.registry = registry
        self.node = node
        #: what to tell the registry before the next heartbeat: a new state or a new record
        self._news: asyncio.Queue[NodeState | NodeInfo] = asyncio.Queue(maxsize=64)
        #: the counters sent with every heartbeat
        self.stats: Callable[[], dict[str, int]] = dict
        self._task: asyncio.Task[None] | None = None
        #: the registry answered the first lease: it holds the node, or refused it
        self._answered = asyncio.Event()
        self._refusal: grpc.aio.AioRpcError | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Return once the registry holds the node; :class:`Unauthenticated` when it
        refuses this process (no or another join secret), :class:`Unavailable` when it
        refuses the lease otherwise or does not answer within ``timeout``."""
        self._task = asyncio.create_task(self._hold(), name=f"wiremesh-lease-{self.node.node_id}")
        try:
            await asyncio.wait_for(self._answered.wait(), timeout)
        except TimeoutError:
            await self.release()
            raise Unavailable(
                f"could not register with the registry at {self.registry.address}"
            ) from None
        refusal = self._refusal
        if refusal is not None:
            await self.release()
            problem = (
                f"the registry at {self.registry.address} refused node "
                f"{self.node.node_id}: {refusal.details()}"
            )
            if refusal.code() is grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(problem)
            raise Unavailable(problem)

    async def set_state(self, state: NodeState) -> None:
        self.node = self.node.with_state(state)
        with contextlib.suppress(asyncio.QueueFull):
            self._news.put_nowait(state)

    async def update(self, node: NodeInfo) -> None:
        """Replace the node's record (its groups changed); watchers are told."""
        self.node = replace(node, state=self.node.state)
        with contextlib.suppress(asyncio.QueueFull):
            self._news.put_nowait(self.node)

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _requests(self) -> AsyncIterator[pb.LeaseRequest]:
        yield pb.LeaseRequest(register=node_to_proto(self.node))
        interval = self.registry.heartbeat_interval
        while True:
            news: NodeState | NodeInfo | None = None
            with contextlib.suppress(TimeoutError):
                news = await asyncio.wait_for(self._news.get(), interval)
            if isinstance(news, NodeInfo):
                yield pb.LeaseRequest(update=node_to_proto(news))
                continue
            heartbeat = pb.Heartbeat(
                state=news.value if news is not None else "", stats=self.stats()
            )
            yield pb.LeaseRequest(heartbeat=heartbeat)

    async def _hold(self) -> None:
        refused = False
        while True:
            call = self.registry._lease_call(
                self._requests(), metadata=self.registry.lease_metadata
            )
            try:
                headers = await call.initial_metadata()
                if any(key == HELD_KEY for key, _ in headers or ()):
                    refused = False
                    self._answered.set()
                await call
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in _REFUSED and not self._answered.is_set():
                    self._refusal = exc  # start() raises it
                    self._answered.set()
                elif code in _REFUSED and not refused:
                    # told once: the next attempts are refused alike until this changes
                    log.error(
                        "the registry at %s refused node %s: %s",
                        self.registry.address,
                        self.node.node_id,
                        exc.details(),
                    )
                refused = code in _REFUSED
                log.debug("lease of %s interrupted: %s", self.node.node_id, code)
            finally:
                call.cancel()
            await asyncio.sleep(_RECONNECT_DELAY)


#: the answers of a registry that will not hold this lease as it is asked
_REFUSED = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)
