"""The channel engine: what carries channels between processes, behind one interface.

An engine keeps each channel's offsets, epoch and history, delivers every publication of
a channel to each process that watches it (one message per process, in offset order),
and keeps presence. Two engines implement it:

- :mod:`wiremesh.channels.embedded`: in the embedded registry's process (one machine);
- :mod:`wiremesh.channels.redis`: in the Redis of a Redis registry (many machines).

:func:`wiremesh.channels.open_engine` opens the one a registry address names. The rules
(history, presence) are the caller's: each call that needs them takes the channel's
:class:`~wiremesh.core.channels.ChannelRules`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Protocol

from wiremesh.core.channels import ChannelRules, Found, Member, Position, Publication

__all__ = ["ChannelEngine", "OnPublication"]

#: what an engine calls with each publication of a watched channel, in the event loop
OnPublication = Callable[[Publication], None]


class ChannelEngine(Protocol):
    #: where the engine is, for people (no password)
    address: str

    async def publish(self, channel: str, data: bytes, rules: ChannelRules) -> Position:
        """Give ``data`` (JSON text) the channel's next offset, keep it when the rules keep
        history, and deliver it to every process watching ``channel``; the position it
        got. Raises :class:`~wiremesh.errors.Unavailable` when the engine cannot be
        reached."""
        ...

    async def announce(self, channel: str, kind: Literal["join", "leave"], member: Member) -> None:
        """Deliver a join or leave of ``member`` to every process watching ``channel``
        (kept nowhere, no offset)."""
        ...

    async def history(self, channel: str, since: Position | None, rules: ChannelRules) -> Found:
        """What the channel kept after ``since`` (see
        :func:`wiremesh.core.channels.recovery`); with ``since`` None, only the channel's
        position (an empty, recovered :class:`Found`). A channel never published to is at
        offset 0 of a fresh epoch, which it keeps from then on."""
        ...

    def on_publication(self, callback: OnPublication) -> None:
        """Set the one callback that gets every publication (and join and leave) of the
        channels this process watches."""
        ...

    async def watch(self, channel: str) -> None:
        """From when this returns, publications of ``channel`` reach the callback."""
        ...

    async def unwatch(self, channel: str) -> None:
        """Stop delivering ``channel`` here."""
        ...

    async def join(self, channel: str, member: Member, ttl: float) -> bool:
        """Add ``member`` to the channel's presence for ``ttl`` seconds (refreshed by
        :meth:`refresh`); True when it was not there."""
        ...

    async def leave(self, channel: str, session: str) -> Member | None:
        """Remove session ``session`` from the channel's presence; the member removed, or
        None when it was not there."""
        ...

    async def presence(self, channel: str) -> list[Member]:
        """Who is subscribed to ``channel`` now (members whose time ran out are not)."""
        ...

    async def refresh(self, members: Iterable[tuple[str, Member]], ttl: float) -> None:
        """Keep these (channel, member) entries of presence for ``ttl`` seconds more."""
        ...

    async def sweep(self, channel: str) -> list[Member]:
        """Remove the channel's members whose time ran out (their gateway died); those
        removed by this call (a member is removed by one caller only)."""
        ...

    async def close(self) -> None: ...
