"""Making calls: choose a node, send, translate the outcome, retry when allowed.

:class:`Caller` is what ``ctx.call`` and ``wiremesh.connect()`` use. It reads the mesh
from a :class:`~wiremesh.registry.MeshView` (no registry round trip per call), keeps one
gRPC channel per node address, and closes a channel when its node leaves the mesh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc

from wiremesh.core.balancing import Balancer, BalancerName, make_balancer
from wiremesh.core.codec import CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.core.names import Target, parse_target
from wiremesh.core.retry import should_retry
from wiremesh.core.shape import Shape, is_protobuf_type
from wiremesh.errors import (
    DeadlineExceeded,
    MethodNotFound,
    NodeNotFound,
    ServiceNotFound,
    Unavailable,
    WiremeshError,
)
from wiremesh.registry.view import MeshView
from wiremesh.transport.wire import CALLER_KEY, CODEC_KEY, error_from_rpc_error

__all__ = ["Caller", "channel_options"]

_Stub = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class Caller:
    """Calls methods of the services in one mesh."""

    def __init__(
        self,
        view: MeshView,
        *,
        identity: str | None = None,
        default_timeout: float = 10.0,
        balancer: BalancerName = "round_robin",
        balancers: Mapping[str, BalancerName] | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.view = view
        self.identity = identity
        self.default_timeout = default_timeout
        self._balancer_name: BalancerName = balancer
        self._balancer_names = dict(balancers or {})
        self._balancers: dict[str, Balancer] = {}
        self._options = channel_options(max_message_bytes)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, str], _Stub] = {}
        self._targets: dict[str, Target] = {}
        self._returns: dict[Any, Shape] = {}
        self._metadata: dict[tuple[str, ...], tuple[tuple[str, str], ...] | None] = {}
        view.on_change(self._forget_gone_nodes)

    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        deadline: Deadline | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Call ``target`` (``service.method`` or ``service@node-id.method``) and return its
        result, validated into ``returns`` when given. Raises a :class:`WiremeshError`."""
        where = self._target(target, node)
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"timeout must be positive, got {timeout:g}s for {target}")
        if deadline is None:
            deadline = Deadline.after(self.default_timeout if timeout is None else timeout)
        elif timeout is not None:
            deadline = deadline.capped(timeout)
        if is_protobuf_type(type(payload)):
            codec = "proto"
        body = encode(payload, codec)
        wire_metadata = self._wire_metadata(codec, metadata)
        response, _ = await self._send(where, body, deadline, wire_metadata)
        return self._result(response, codec, returns)

    async def _send(
        self,
        where: Target,
        body: bytes,
        deadline: Deadline,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> tuple[bytes, NodeInfo]:
        attempt = 0
        tried: set[str] = set()
        while True:
            attempt += 1
            remaining = deadline.remaining()
            if remaining <= 0:
                raise DeadlineExceeded(f"the deadline passed before {where} was sent")
            snapshot = self.view.snapshot
            node, idempotent, candidates = self._choose(snapshot, where, tried)
            balancer = self._balancer(where.service)
            stub = self._stub(node.address, where.path)
            balancer.started(node.node_id)
            try:
                response: bytes = await stub(body, timeout=remaining, metadata=metadata)
                return response, node
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc_error(exc, node=node.node_id)
                tried.add(node.node_id)
                if not should_retry(
                    error.status,
                    idempotent=idempotent and where.node is None,
                    attempt=attempt,
                    remaining=deadline.remaining(),
                    nodes_left=candidates - len(tried),
                ):
                    raise error from None
            except asyncio.CancelledError:
                raise
            finally:
                balancer.finished(node.node_id)

    def _choose(
        self, snapshot: MeshSnapshot, where: Target, tried: set[str]
    ) -> tuple[NodeInfo, bool, int]:
        """The node to try, whether the method is idempotent, and how many candidates."""
        service = where.service
        if where.node is not None:
            node = snapshot.by_id.get(where.node)
            if node is None or node.service != service:
                raise NodeNotFound(f"no node {where.node!r} of service {service!r} in the mesh")
            if not node.serving:
                raise Unavailable(f"node {where.node} is draining", node=where.node)
            nodes: tuple[NodeInfo, ...] = (node,)
        else:
            nodes = snapshot.serving(service)
            if not nodes:
                if service in snapshot.services:
                    raise Unavailable(f"no live node of service {service!r}")
                raise ServiceNotFound(f"no service {service!r} in the mesh")
        info = nodes[0].methods.get(where.method)
        if info is None:
            known = ", ".join(sorted(nodes[0].methods)) or "none"
            raise MethodNotFound(
                f"service {service!r} has no method {where.method!r} (methods: {known})"
            )
        chosen = self._balancer(service).pick(nodes, tried)
        if chosen is None:
            raise Unavailable(f"every node of service {service!r} failed")
        return chosen, info.idempotent, len(nodes)

    def _result(self, response: bytes, codec: CodecName, returns: Any) -> Any:
        if returns is None:
            return decode(response, codec)
        shape = self._returns.get(returns)
        if shape is None:
            shape = self._returns[returns] = Shape(returns, "result")
        if shape.is_protobuf:
            return shape.validate(response)
        return shape.validate(decode(response, codec))

    def _target(self, target: str, node: str | None) -> Target:
        if node is None:
            parsed = self._targets.get(target)
            if parsed is None:
                parsed = parse_target(target)
                if len(self._targets) < 4096:
                    self._targets[target] = parsed
            return parsed
        return parse_target(target, node=node)

    def _wire_metadata(
        self, codec: CodecName, extra: Mapping[str, str] | None
    ) -> tuple[tuple[str, str], ...] | None:
        if extra:
            pairs = [(k.lower(), v) for k, v in extra.items()]
            for key, _ in pairs:
                if key.startswith(("wm-", "grpc-", ":")):
                    raise WiremeshError(f"metadata key {key!r} is reserved")
            return (*(self._wire_metadata(codec, None) or ()), *pairs)
        cached = self._metadata.get((codec,), ())
        if cached != ():
            return cached
        base: list[tuple[str, str]] = []
        if codec != "msgpack":
            base.append((CODEC_KEY, codec))
        if self.identity:
            base.append((CALLER_KEY, self.identity))
        result = tuple(base) or None
        self._metadata[(codec,)] = result
        return result

    def _balancer(self, service: str) -> Balancer:
        balancer = self._balancers.get(service)
        if balancer is None:
            name = self._balancer_names.get(service, self._balancer_name)
            balancer = self._balancers[service] = make_balancer(name)
        return balancer

    def _stub(self, address: str, path: str) -> _Stub:
        stub = self._stubs.get((address, path))
        if stub is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = (
                    grpc.aio.insecure_channel(address, options=self._options)
                    if self._credentials is None
                    else grpc.aio.secure_channel(address, self._credentials, options=self._options)
                )
            stub = self._stubs[(address, path)] = channel.unary_unary(path, None, None)
        return stub

    def _forget_gone_nodes(self, old: MeshSnapshot, new: MeshSnapshot) -> None:
        live = {n.address for n in new.nodes}
        for address in [a for a in self._channels if a not in live]:
            channel = self._channels.pop(address)
            for key in [k for k in self._stubs if k[0] == address]:
                del self._stubs[key]
            asyncio.get_running_loop().create_task(channel.close(grace=1.0))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for channel in channels:
            await channel.close(None)
