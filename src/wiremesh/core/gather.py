"""Gathering the replies of a multicast.

A multicast sends one request to several nodes and waits, under one deadline, until its
mode is satisfied:

* ``all``: every node has answered (a value or an error);
* ``first``: one node has answered with a value (or every node has failed);
* ``quorum(n)``: ``n`` nodes have answered with a value (or so many have failed that
  ``n`` can no longer be reached).

:class:`Gather` is the bookkeeping, fed one outcome at a time; it never waits. The result
maps each node id to its value or its error; a node that had not answered when the
gather ended gets :class:`~wiremesh.errors.DeadlineExceeded` (the deadline passed) or
:class:`~wiremesh.errors.Cancelled` (its answer was no longer needed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from wiremesh.errors import Cancelled, DeadlineExceeded, InvalidPayload, WiremeshError

__all__ = ["Gather", "Mode", "MulticastResult", "parse_mode"]


@dataclass(frozen=True, slots=True)
class Mode:
    """``all``, ``first`` or ``quorum`` with its count."""

    name: str
    count: int = 0

    def __str__(self) -> str:
        return f"quorum({self.count})" if self.name == "quorum" else self.name


ALL = Mode("all")
FIRST = Mode("first")


def quorum(n: int) -> Mode:
    if n < 1:
        raise InvalidPayload(f"quorum needs at least 1 reply, not {n}")
    return Mode("quorum", n)


def parse_mode(mode: str | Mode) -> Mode:
    """``"all"``, ``"first"``, ``"quorum(2)"``, ``"quorum:2"`` or a :class:`Mode`."""
    if isinstance(mode, Mode):
        return mode
    text = mode.strip().lower()
    if text in ("all", "first"):
        return Mode(text)
    for prefix, suffix in (("quorum(", ")"), ("quorum:", "")):
        if text.startswith(prefix) and text.endswith(suffix):
            number = text[len(prefix) : len(text) - len(suffix)]
            if number.isdigit():
                return quorum(int(number))
    raise InvalidPayload(f"bad multicast mode {mode!r}: use 'all', 'first' or 'quorum(n)'")


class MulticastResult(Mapping[str, Any]):
    """Node id → the value it returned, or the :class:`WiremeshError` it ended with."""

    def __init__(self, mode: Mode, outcomes: dict[str, Any], satisfied: bool) -> None:
        self.mode = mode
        self._outcomes = outcomes
        #: whether the mode was met (all answered / a first value / the quorum reached)
        self.satisfied = satisfied

    def __getitem__(self, node_id: str) -> Any:
        return self._outcomes[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def values(self) -> dict[str, Any]:  # type: ignore[override]
        """The nodes that answered with a value."""
        return {n: v for n, v in self._outcomes.items() if not isinstance(v, WiremeshError)}

    @property
    def errors(self) -> dict[str, WiremeshError]:
        """The nodes that failed, did not answer in time, or were not needed."""
        return {n: v for n, v in self._outcomes.items() if isinstance(v, WiremeshError)}

    @property
    def first(self) -> Any:
        """The first value that arrived (``None`` when no node answered with one)."""
        return next(iter(self.values.values()), None)

    def __repr__(self) -> str:
        return f"MulticastResult({self.mode}, {self._outcomes!r}, satisfied={self.satisfied})"


class Gather:
    """The state of one multicast: who was asked, who answered, whether it is done."""

    def __init__(self, node_ids: Iterable[str], mode: Mode) -> None:
        self.mode = mode
        self.asked = tuple(node_ids)
        self.outcomes: dict[str, Any] = {}
        self.successes = 0
        self.failures = 0

    @property
    def needed(self) -> int:
        """Successes that satisfy the mode."""
        if self.mode.name == "all":
            return len(self.asked)
        if self.mode.name == "first":
            return min(1, len(self.asked))
        return self.mode.count

    def add(self, node_id: str, outcome: Any) -> bool:
        """Record a node's value or :class:`WiremeshError`; True once the gather is done."""
        if node_id in self.outcomes or node_id not in self.asked:
            return self.done
        self.outcomes[node_id] = outcome
        if isinstance(outcome, WiremeshError):
            self.failures += 1
        else:
            self.successes += 1
        return self.done

    @property
    def done(self) -> bool:
        answered = self.successes + self.failures
        if answered == len(self.asked):
            return True
        if self.mode.name == "all":
            return False
        # first / quorum: met, or no longer reachable with the nodes still out
        return self.successes >= self.needed or (
            self.successes + (len(self.asked) - answered) < self.needed
        )

    @property
    def satisfied(self) -> bool:
        if self.mode.name == "all":
            return len(self.outcomes) == len(self.asked)
        return self.successes >= self.needed

    def result(self, *, deadline_passed: bool) -> MulticastResult:
        """The outcome of every node asked; the silent ones get the error that says why."""
        outcomes = dict(self.outcomes)
        why = (
            f"reply not needed: {self.mode} was met"
            if self.satisfied
            else f"reply not awaited: {self.mode} could no longer be met"
        )
        for node_id in self.asked:
            if node_id not in outcomes:
                outcomes[node_id] = (
                    DeadlineExceeded("no reply before the multicast deadline", node=node_id)
                    if deadline_passed
                    else Cancelled(why, node=node_id)
                )
        return MulticastResult(self.mode, outcomes, self.satisfied)
