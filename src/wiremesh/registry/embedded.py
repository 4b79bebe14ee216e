"""The embedded registry: a small gRPC service the supervisor runs, and its client.

No server to install: ``wiremesh run`` hosts :class:`RegistryServer` in its own process
and every node talks to it with :class:`EmbeddedRegistry`. The wire contract is
``proto/wiremesh/registry/v1/registry.proto``; the lease rules are
:class:`wiremesh.core.membership.Membership`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc

from wiremesh.core.membership import Membership
from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo, NodeState
from wiremesh.errors import Unavailable
from wiremesh.proto import registry_pb2 as pb
from wiremesh.transport.grpc_core import OWN_SUBCHANNELS

__all__ = ["EmbeddedRegistry", "RegistryServer", "node_from_proto", "node_to_proto"]

log = logging.getLogger("wiremesh.registry")

_SERVICE = "wiremesh.registry.v1.Registry"
_LEASE = f"/{_SERVICE}/Lease"
_WATCH = f"/{_SERVICE}/Watch"
_LIST = f"/{_SERVICE}/List"
_RECONNECT_DELAY = 0.2


def node_to_proto(node: NodeInfo) -> pb.Node:
    return pb.Node(
        node_id=node.node_id,
        service=node.service,
        address=node.address,
        pid=node.pid,
        started_at=node.started_at,
        state=node.state.value,
        methods=[
            pb.Method(name=m.name, idempotent=m.idempotent, returns_protobuf=m.returns_protobuf)
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
        methods={m.name: MethodInfo(m.name, m.idempotent, m.returns_protobuf) for m in msg.methods},
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


class RegistryServer:
    """Holds the mesh's membership and serves it over gRPC."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: float = 1.5,
        sweep_interval: float = 0.25,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.membership = Membership(ttl)
        #: this server's life: watchers keep their last view when it changes (a restart)
        self.epoch = secrets.token_hex(8)
        self.sweep_interval = sweep_interval
        self.credentials = credentials
        self._changed = asyncio.Event()
        self._owners: dict[str, object] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handlers = {
            "Lease": grpc.stream_unary_rpc_method_handler(
                self._lease,
                request_deserializer=pb.LeaseRequest.FromString,
                response_serializer=pb.LeaseReply.SerializeToString,
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self._watch,
                request_deserializer=pb.WatchRequest.FromString,
                response_serializer=pb.Snapshot.SerializeToString,
            ),
            "List": grpc.unary_unary_rpc_method_handler(
                self._list,
                request_deserializer=pb.WatchRequest.FromString,
                response_serializer=pb.Snapshot.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers),)
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
        await self.server.stop(grace)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            for node in self.membership.expire(time.monotonic()):
                log.warning("node %s missed its heartbeats and left the mesh", node.node_id)
                self._notify()

    async def _lease(self, requests: AsyncIterator[pb.LeaseRequest], context: Any) -> pb.LeaseReply:
        node: NodeInfo | None = None
        stream = object()  # this lease stream; the latest one to register a node owns it
        try:
            async for request in requests:
                now = time.monotonic()
                if request.HasField("register") or request.HasField("update"):
                    node = node_from_proto(
                        request.register if request.HasField("register") else request.update
                    )
                    self.membership.register(node, now)
                    self._owners[node.node_id] = stream
                    self._notify()
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
        return pb.LeaseReply()

    async def _watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[pb.Snapshot]:
        sent = -1
        while True:
            changed = self._changed
            if self.membership.version != sent:
                sent = self.membership.version
                yield self._snapshot()
            else:
                await changed.wait()

    async def _list(self, request: pb.WatchRequest, context: Any) -> pb.Snapshot:
        return self._snapshot()

    def _snapshot(self) -> pb.Snapshot:
        return snapshot_to_proto(replace(self.membership.snapshot(), epoch=self.epoch))


class EmbeddedRegistry:
    """The client side of :class:`RegistryServer`, a :class:`~wiremesh.registry.Registry`."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        heartbeat_interval: float = 0.5,
    ) -> None:
        self.address = address
        self.heartbeat_interval = heartbeat_interval
        options = [
            ("grpc.enable_retries", 0),
            # a registry that restarts must be found again within about a second, not
            # after grpc's default reconnect backoff (which grows to two minutes)
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            OWN_SUBCHANNELS,
        ]
        self.channel = (
            grpc.aio.insecure_channel(address, options=options)
            if credentials is None
            else grpc.aio.secure_channel(address, credentials, options=options)
        )
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
        self._list_call = self.channel.unary_unary(
            _LIST,
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.Snapshot.FromString,
        )
        self._closed = False
        self._leases: list[_EmbeddedLease] = []
        #: whether the registry answered the last time it was asked
        self.reachable = True

    async def lease(self, node: NodeInfo) -> _EmbeddedLease:
        lease = _EmbeddedLease(self, node)
        self._leases.append(lease)
        await lease.start()
        return lease

    async def snapshot(self, timeout: float = 5.0) -> MeshSnapshot:
        try:
            reply: pb.Snapshot = await self._list_call(pb.WatchRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"registry at {self.address}: {exc.details()}") from None
        return snapshot_from_proto(reply)

    async def watch(self) -> AsyncIterator[MeshSnapshot]:
        while not self._closed:
            call = self._watch_call(pb.WatchRequest())
            try:
                async for message in call:
                    self.reachable = True
                    yield snapshot_from_proto(message)
            except grpc.aio.AioRpcError as exc:
                log.debug("registry watch interrupted: %s", exc.code())
                self.reachable = False
            finally:
                call.cancel()
            await asyncio.sleep(_RECONNECT_DELAY)

    async def close(self) -> None:
        self._closed = True
        for lease in self._leases:
            await lease.release()
        await self.channel.close(None)


class _EmbeddedLease:
    def __init__(self, registry: EmbeddedRegistry, node: NodeInfo) -> None:
        self.registry = registry
        self.node = node
        #: what to tell the registry before the next heartbeat: a new state or a new record
        self._news: asyncio.Queue[NodeState | NodeInfo] = asyncio.Queue(maxsize=64)
        #: the counters sent with every heartbeat
        self.stats: Callable[[], dict[str, int]] = dict
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._hold(), name=f"wiremesh-lease-{self.node.node_id}")
        try:
            await asyncio.wait_for(self._registered.wait(), timeout)
        except TimeoutError:
            await self.release()
            raise Unavailable(
                f"could not register with the registry at {self.registry.address}"
            ) from None

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
        self._registered.set()
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
        while True:
            call = self.registry._lease_call(self._requests())
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                log.debug("lease of %s interrupted: %s", self.node.node_id, exc.code())
            finally:
                call.cancel()
            await asyncio.sleep(_RECONNECT_DELAY)
