"""Channel presence, without I/O: who is subscribed to each channel, until when, and by
which gateway (the embedded channel engine's; the caller passes the time in)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from wiremesh.core.channels import Member

__all__ = ["MAX_MEMBERS", "MAX_PRESENCE", "Presence"]

#: presence members in all channels together
MAX_MEMBERS = 1_000_000
#: the most members a presence or sweep answer holds (a sweep removes no more: the next
#: one takes the rest)
MAX_PRESENCE = 10_000


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
