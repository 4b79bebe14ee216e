"""A node's ``self.channels``: publish to a channel, subscribe a session, presence, history.

::

    class Flows(Service):
        name = "flows"
        owns_channels = {"flow-run:*": Channel(history_size=200, history_ttl=600)}

        async def on_subscribe(self, request: SubscribeRequest) -> bool:
            return await self.may_see(request.principal, request.channel)

        @rpc
        async def step(self, ctx: Context, run: int, step: str) -> None:
            await self.channels.publish(f"flow-run:{run}", {"step": step})

Publications are JSON: ``data`` is any value pydantic can write as JSON (a model, a
dataclass, a dict, a list, a string, a number). Each goes through the channel engine
(:mod:`wiremesh.channels.base`), which gives it the channel's next offset, keeps it when
the channel keeps history, and hands it to every gateway with a subscriber (one message
per gateway), in offset order. The channel's rules are its owner's
(``Service.owns_channels``), read from the registry records of the owner's nodes; a node
publishing to a channel that no service declares gets :class:`~wiremesh.errors.NotFound`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pydantic_core

from wiremesh.channels.base import ChannelEngine
from wiremesh.core.channels import (
    ChannelRules,
    Found,
    Member,
    Position,
    Rulebook,
    check_channel,
)
from wiremesh.core.defaults import MAX_PUBLISH_BYTES
from wiremesh.errors import InvalidPayload, NotFound, PayloadTooLarge
from wiremesh.gateway.frame_stream import JOIN, LEAVE, Frame, FrameStream
from wiremesh.proto import gateway_pb2
from wiremesh.session import Session

__all__ = ["Channels", "encode"]


def encode(data: Any) -> bytes:
    """``data`` as JSON text (:class:`~wiremesh.errors.InvalidPayload` when it has no JSON
    form)."""
    try:
        return pydantic_core.to_json(data)
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidPayload(f"a publication must be JSON: {exc}") from None


class Channels:
    """The channels, as one node uses them (the service's ``self.channels``).

    ``engine`` opens the channel engine on first use; ``rules`` gives the mesh's
    :class:`Rulebook` now; ``streams`` the gateways' streams to this node, by gateway id
    (subscribing a session goes through the gateway that holds it)."""

    def __init__(
        self,
        engine: Callable[[], ChannelEngine],
        rules: Callable[[], Rulebook],
        streams: Callable[[], dict[str, FrameStream]],
        *,
        max_publish_bytes: int = MAX_PUBLISH_BYTES,
    ) -> None:
        self._open = engine
        self._engine: ChannelEngine | None = None
        self._rules = rules
        self._streams = streams
        self.max_publish_bytes = max_publish_bytes

    @property
    def engine(self) -> ChannelEngine:
        if self._engine is None:
            self._engine = self._open()
        return self._engine

    def rules_for(self, channel: str) -> ChannelRules:
        """The rules of ``channel`` (:class:`NotFound` when no service declares it)."""
        rules = self._rules().rules_for(check_channel(channel))
        if rules is None:
            raise NotFound(
                f"no service declares a channel matching {channel!r} (Service.owns_channels), "
                "or none of its nodes is in the mesh now"
            )
        return rules

    async def publish(self, channel: str, data: Any) -> Position:
        """Publish ``data`` (JSON) to every subscriber of ``channel``; the position it got
        (its offset in the channel's epoch)."""
        rules = self.rules_for(channel)
        payload = encode(data)
        if len(payload) > self.max_publish_bytes:
            raise PayloadTooLarge(
                f"a publication is at most {self.max_publish_bytes} bytes of JSON, "
                f"not {len(payload)}"
            )
        return await self.engine.publish(channel, payload, rules)

    async def history(self, channel: str, since: Position | None = None) -> Found:
        """What ``channel`` kept after ``since`` (only its position, with None)."""
        return await self.engine.history(channel, since, self.rules_for(channel))

    async def presence(self, channel: str) -> list[Member]:
        """Who is subscribed to ``channel`` now (channels that keep presence)."""
        rules = self.rules_for(channel)
        if not rules.presence:
            raise InvalidPayload(f"channel {channel!r} keeps no presence (Channel(presence=True))")
        return await self.engine.presence(channel)

    async def subscribe(self, session: Session | str, channel: str) -> bool:
        """Subscribe a browser session (held by any gateway) to ``channel``, without
        asking ``on_subscribe``; False when its gateway is not connected to this node."""
        return await self._tell(JOIN, session, channel)

    async def unsubscribe(self, session: Session | str, channel: str) -> bool:
        """End a session's subscription to ``channel`` (its browser is told)."""
        return await self._tell(LEAVE, session, channel)

    async def _tell(
        self, kind: gateway_pb2.Frame.Kind, session: Session | str, channel: str
    ) -> bool:
        self.rules_for(channel)
        session_id = session.id if isinstance(session, Session) else session
        stream = self._streams().get(session_id.rpartition(".")[0])
        if stream is None or stream.closed:
            return False
        if stream.full:
            await stream.wait_for_room()
        stream.send(Frame(kind=kind, session_id=session_id, channel=channel))
        return True

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.shield(engine.close())
