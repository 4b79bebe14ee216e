"""Channels: browsers subscribe to a named channel, any node publishes to it.

- :class:`Channel`: what a service declares about the channels it owns
  (``owns_channels = {"flow-run:*": Channel(history_size=100)}``);
- :class:`SubscribeRequest`: what the owner's ``on_subscribe`` hook is asked;
- :class:`~wiremesh.channels.node.Channels`: a node's ``self.channels`` (publish,
  subscribe a session, presence, history);
- :func:`open_engine`: the channel engine of a registry address (embedded or Redis).

The guide's "Channels" section shows them at work; ``docs/protocol.md`` has the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wiremesh.channels.base import ChannelEngine
from wiremesh.core.channels import ChannelRules, Found, Member, Position, Publication
from wiremesh.transport.tls import TlsFiles

__all__ = [
    "Channel",
    "ChannelEngine",
    "Found",
    "Member",
    "Position",
    "Publication",
    "SubscribeRequest",
    "open_engine",
]

#: What a service declares about a channel pattern it owns (history, presence, who may
#: subscribe): see :class:`~wiremesh.core.channels.ChannelRules` for every field.
Channel = ChannelRules


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A browser session asks to subscribe to ``channel``: the owner's ``on_subscribe``
    decides."""

    channel: str
    #: the session's mesh-wide id (``self.sessions.send(session_id, ...)`` reaches it)
    session_id: str
    #: who it is (the token's ``sub``) and the token's claims
    principal: str
    claims: dict[str, Any] = field(default_factory=dict)


def open_engine(
    address: str,
    *,
    mesh: str = "",
    tls: TlsFiles | None = None,
    join_secret: str | None = None,
    owner: str = "",
) -> ChannelEngine:
    """The channel engine of the registry at ``address``: in Redis for a ``redis://`` or
    ``rediss://`` URL (``mesh`` names its keys), else the embedded registry's (``owner``:
    the process's id, which presence ties its members to)."""
    if address.startswith(("redis://", "rediss://")):
        from wiremesh.channels.redis import RedisChannelEngine

        return RedisChannelEngine(address, mesh=mesh, tls=tls)
    from wiremesh.channels.embedded import EmbeddedChannelEngine

    return EmbeddedChannelEngine(
        address,
        credentials=tls.channel_credentials() if tls else None,
        join_secret=join_secret,
        owner=owner,
    )
