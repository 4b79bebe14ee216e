"""The gateway's table of sessions, with no I/O: who is connected, where, and how many.

Connections are counted per principal and per client address from the moment they are
admitted (before the WebSocket handshake ends), so a burst of upgrades cannot overshoot
the limits. Sessions are indexed by number, by principal (push to a principal) and
counted by node (route a new session to the least loaded node); a dead node's sessions
are found among all (a rare event, where a set per node would cost every session its
entry).

Kept small per session: a principal with one session holds it as it is (most browsers'
case), only one with more a dict of them by number (a set or a dict is 200 bytes or more,
even for one entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["SessionTable", "TableEntry"]


class TableEntry(Protocol):
    number: int
    principal: str
    node_id: str


E = TypeVar("E", bound=TableEntry)


class SessionTable(Generic[E]):
    def __init__(self, *, per_principal: int, per_ip: int) -> None:
        self.per_principal = per_principal
        self.per_ip = per_ip
        self._by_number: dict[int, E] = {}
        # each principal's session, or its sessions by number when it has more than one
        self._by_principal: dict[str, E | dict[int, E]] = {}
        self._node_counts: dict[str, int] = {}
        self._principal_counts: dict[str, int] = {}
        self._ip_counts: dict[str, int] = {}
        self._next = 0

    # ------------------------------------------------------------------ counting

    def ip_full(self, ip: str) -> bool:
        return self._ip_counts.get(ip, 0) >= self.per_ip

    def principal_full(self, principal: str) -> bool:
        return self._principal_counts.get(principal, 0) >= self.per_principal

    def admit(self, principal: str, ip: str) -> bool:
        """Count one more connection of ``principal`` from ``ip``; False (and nothing
        counted) when either is at its limit."""
        if self.ip_full(ip) or self.principal_full(principal):
            return False
        self._ip_counts[ip] = self._ip_counts.get(ip, 0) + 1
        self._principal_counts[principal] = self._principal_counts.get(principal, 0) + 1
        return True

    def release(self, principal: str, ip: str) -> None:
        """Uncount a connection :meth:`admit` counted."""
        _decrement(self._ip_counts, ip)
        _decrement(self._principal_counts, principal)

    def count_of_ip(self, ip: str) -> int:
        return self._ip_counts.get(ip, 0)

    # ------------------------------------------------------------------ sessions

    def next_number(self) -> int:
        self._next += 1
        return self._next

    def add(self, entry: E) -> None:
        self._by_number[entry.number] = entry
        principal = entry.principal
        held = self._by_principal.get(principal)
        if held is None:
            self._by_principal[principal] = entry
        elif isinstance(held, dict):
            held[entry.number] = entry
        else:
            self._by_principal[principal] = {held.number: held, entry.number: entry}
        self._node_counts[entry.node_id] = self._node_counts.get(entry.node_id, 0) + 1

    def remove(self, entry: E) -> None:
        if self._by_number.get(entry.number) is not entry:
            return
        del self._by_number[entry.number]
        principal = entry.principal
        held = self._by_principal.get(principal)
        if held is entry:
            del self._by_principal[principal]
        elif isinstance(held, dict):
            held.pop(entry.number, None)
            if len(held) == 1:
                self._by_principal[principal] = next(iter(held.values()))
        _decrement(self._node_counts, entry.node_id)

    def get(self, number: int) -> E | None:
        return self._by_number.get(number)

    def of_principal(self, principal: str) -> list[E]:
        held = self._by_principal.get(principal)
        if held is None:
            return []
        return list(held.values()) if isinstance(held, dict) else [held]

    def of_node(self, node_id: str) -> list[E]:
        """The sessions on ``node_id``: a walk over all of them."""
        if node_id not in self._node_counts:
            return []
        return [entry for entry in self._by_number.values() if entry.node_id == node_id]

    def count_of_node(self, node_id: str) -> int:
        return self._node_counts.get(node_id, 0)

    def __len__(self) -> int:
        return len(self._by_number)

    def __iter__(self) -> Iterator[E]:
        return iter(list(self._by_number.values()))


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
