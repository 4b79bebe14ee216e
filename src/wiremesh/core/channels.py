"""Channels, without I/O: names, the rules that a channel name picks, publications, their
positions, recovery, and the history log the embedded engine keeps.

A **channel** is a name (``flow-run:42``) that browsers subscribe to and that any node
publishes to. Each publication gets the next **offset** of its channel (1, 2, 3 ...) in the
channel's **epoch**: a random text the channel's log was started with. A log that is lost
(it expired, its engine restarted without it) starts again with another epoch, so a
client that remembers ``(offset, epoch)`` can tell whether what it missed can still be
told::

    >>> log = ChannelLog("e1", size=3, ttl=60.0)
    >>> [log.append(b'"x"', now=0.0).offset for _ in range(5)]
    [1, 2, 3, 4, 5]
    >>> found = log.since(Position(3, "e1"), now=1.0)
    >>> found.recovered, [p.offset for p in found.publications]
    (True, [4, 5])
    >>> log.since(Position(1, "e1"), now=1.0).recovered     # 2 is no longer kept
    False
    >>> log.since(Position(3, "e0"), now=1.0).reason       # another epoch
    'epoch'

The rules (:class:`ChannelRules`) are declared by the service that owns the channels
(``Service.owns_channels``) and travel in its nodes' registry records, so that every
gateway and node knows them; a :class:`Rulebook` gives a channel the rules of the first
pattern that its name matches, ``*`` standing for any run of characters::

    >>> book = Rulebook({"flow-run:*": ChannelRules(history_size=100), "*": ChannelRules()})
    >>> book.rules_for("flow-run:42").history_size
    100
    >>> book.rules_for("chat").history_size
    0
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from wiremesh.core.model import MeshSnapshot
from wiremesh.errors import InvalidPayload

__all__ = [
    "CHANNEL_NAME",
    "MAX_CHANNEL_LENGTH",
    "ChannelLog",
    "ChannelRules",
    "Found",
    "Member",
    "MeshRules",
    "Position",
    "Publication",
    "Rulebook",
    "check_channel",
    "check_channel_pattern",
    "recovery",
    "rules_from_text",
    "rules_to_text",
]

#: the longest channel name, in characters
MAX_CHANNEL_LENGTH = 200
#: what a channel name is made of: letters, digits and ``_ - . : @ = , / #``
CHANNEL_NAME = re.compile(rf"^[A-Za-z0-9_\-.:@=,/#]{{1,{MAX_CHANNEL_LENGTH}}}$")


def check_channel(name: object) -> str:
    """``name`` when it is a channel name, else :class:`~wiremesh.errors.InvalidPayload`
    saying what one is.

    >>> check_channel("flow-run:42")
    'flow-run:42'
    >>> check_channel("two words")
    Traceback (most recent call last):
    ...
    wiremesh.errors.InvalidPayload: invalid channel name 'two words': 1 to 200 of the \
characters A-Z a-z 0-9 _ - . : @ = , / #
    """
    if isinstance(name, str) and CHANNEL_NAME.fullmatch(name) is not None:
        return name
    shown = repr(name)[:60] if isinstance(name, str) else type(name).__name__
    raise InvalidPayload(
        f"invalid channel name {shown}: 1 to {MAX_CHANNEL_LENGTH} of the characters "
        "A-Z a-z 0-9 _ - . : @ = , / #"
    )


def check_channel_pattern(pattern: object) -> str:
    """``pattern`` when it is a channel name in which ``*`` may also stand for any run of
    characters, else :class:`~wiremesh.errors.InvalidPayload`.

    >>> check_channel_pattern("flow-run:*")
    'flow-run:*'
    """
    if isinstance(pattern, str) and pattern and pattern.replace("*", "") == "":
        return pattern
    if isinstance(pattern, str) and CHANNEL_NAME.fullmatch(pattern.replace("*", "x")):
        return pattern
    shown = repr(pattern)[:60] if isinstance(pattern, str) else type(pattern).__name__
    raise InvalidPayload(
        f"invalid channel pattern {shown}: a channel name in which * stands for any run of "
        "characters"
    )


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """What a channel keeps and who may use it (one ``[channels."<pattern>"]`` table)."""

    #: the service that owns the channel: its nodes decide who may subscribe (their
    #: ``on_subscribe`` hook)
    service: str = ""
    #: token scopes a session must hold to subscribe (all of them)
    scopes: tuple[str, ...] = ()
    #: whether every authenticated session with ``scopes`` may subscribe without asking
    #: the owner's ``on_subscribe``
    anyone: bool = False
    #: publications kept for recovery (0: none, recovery is never possible)
    history_size: int = 0
    #: seconds a publication is kept for recovery; the channel's log (its offsets and
    #: epoch) is forgotten this long after its last publication
    history_ttl: float = 300.0
    #: whether the channel keeps who is subscribed (``presence``)
    presence: bool = False
    #: whether subscribers are told when a session subscribes or leaves (``join``/``leave``)
    join_leave: bool = False
    #: whether a browser subscribed to the channel may publish to it itself
    client_publish: bool = False

    @property
    def history(self) -> bool:
        return self.history_size > 0


class Rulebook:
    """The rules of every channel: those of the most specific pattern its name matches
    (the one with the most characters other than ``*``; of equal ones, the first given),
    or None when none does (nobody may subscribe)."""

    __slots__ = ("_cache", "patterns")

    def __init__(self, patterns: Mapping[str, ChannelRules] | None = None) -> None:
        given = list((patterns or {}).items())
        #: the patterns in the order they are tried
        self.patterns: tuple[tuple[str, ChannelRules], ...] = tuple(
            sorted(given, key=lambda item: -len(item[0].replace("*", "")))
        )
        self._cache: dict[str, ChannelRules | None] = {}

    @classmethod
    def of_services(cls, declared: Iterable[tuple[str, str]]) -> Rulebook:
        """The rules that services declare: ``(service, text)`` pairs, the text as
        :func:`rules_to_text` wrote it (a node's registry record carries it). A pattern
        that two services declare is the first one's (by service name); a text that does
        not parse declares nothing."""
        patterns: dict[str, ChannelRules] = {}
        for service, text in sorted(declared):
            for pattern, rules in rules_from_text(service, text).items():
                patterns.setdefault(pattern, rules)
        return cls(patterns)

    def rules_for(self, channel: str) -> ChannelRules | None:
        found = self._cache.get(channel, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        rules = next((r for p, r in self.patterns if fnmatchcase(channel, p)), None)
        if len(self._cache) >= 10_000:  # a bound, whatever names browsers try
            self._cache.clear()
        self._cache[channel] = rules
        return rules

    def __bool__(self) -> bool:
        return bool(self.patterns)


class MeshRules:
    """The :class:`Rulebook` of a mesh as the registry shows it: built from the records of
    the nodes (the metadata ``key`` holds a service's declarations) and built again only
    when the view changes. ``own`` are the declarations of the asking node's service,
    known before its record is in any view."""

    __slots__ = ("_book", "_seen", "key", "own")

    def __init__(self, key: str, own: tuple[str, str] | None = None) -> None:
        self.key = key
        self.own = own
        self._seen: object = None
        self._book = Rulebook()

    def __call__(self, snapshot: MeshSnapshot) -> Rulebook:
        if snapshot is not self._seen:
            key = self.key
            declared = {(n.service, n.metadata[key]) for n in snapshot.nodes if key in n.metadata}
            if self.own is not None:
                declared.add(self.own)
            self._book = Rulebook.of_services(declared)
            self._seen = snapshot
        return self._book


_FIELDS = ("scopes", "anyone", "history_size", "history_ttl", "presence", "join_leave")


def rules_to_text(patterns: Mapping[str, ChannelRules]) -> str:
    """The JSON text of a service's channel declarations, for its registry record.

    >>> rules_to_text({"room:*": ChannelRules(history_size=10)})
    '{"room:*":{"scopes":[],"anyone":false,"history_size":10,"history_ttl":300.0,\
"presence":false,"join_leave":false,"client_publish":false}}'
    """
    shown = {
        pattern: {
            **{name: getattr(rules, name) for name in _FIELDS},
            "scopes": list(rules.scopes),
            "client_publish": rules.client_publish,
        }
        for pattern, rules in patterns.items()
    }
    return json.dumps(shown, separators=(",", ":"))


def rules_from_text(service: str, text: str) -> dict[str, ChannelRules]:
    """What :func:`rules_to_text` wrote, owned by ``service`` ({} for a text that is not
    such declarations; one bad entry is skipped)."""
    try:
        found = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(found, dict):
        return {}
    patterns: dict[str, ChannelRules] = {}
    for pattern, entry in found.items():
        if not isinstance(entry, dict):
            continue
        try:
            patterns[pattern] = ChannelRules(
                service=service,
                scopes=tuple(str(s) for s in entry.get("scopes", ())),
                anyone=bool(entry.get("anyone", False)),
                history_size=max(0, int(entry.get("history_size", 0))),
                history_ttl=max(0.001, float(entry.get("history_ttl", 300.0))),
                presence=bool(entry.get("presence", False)),
                join_leave=bool(entry.get("join_leave", False)),
                client_publish=bool(entry.get("client_publish", False)),
            )
        except (TypeError, ValueError, OverflowError):
            continue
    return patterns


_UNSEEN = object()


@dataclass(frozen=True, slots=True)
class Position:
    """Where a channel is: the offset of its last publication (0: none yet) in ``epoch``."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One message of a channel. ``data`` is JSON text (UTF-8). Every channel numbers its
    publications, whether it keeps history or not; ``offset`` is 0 only for a join or a
    leave (``data`` is then the member)."""

    channel: str
    data: bytes
    offset: int = 0
    epoch: str = ""
    #: "pub", or "join" / "leave" (``data`` then is the member, as JSON)
    kind: Literal["pub", "join", "leave"] = "pub"


@dataclass(frozen=True, slots=True)
class Member:
    """One subscribed session, as presence shows it."""

    session: str
    principal: str
    gateway: str

    def as_json(self) -> dict[str, str]:
        return {"session": self.session, "principal": self.principal, "gateway": self.gateway}


@dataclass(frozen=True, slots=True)
class Found:
    """What a channel's history holds after a position.

    ``recovered`` is whether ``publications`` are all that came after it; when not,
    ``reason`` says why: ``"epoch"`` (the log was started again since), ``"gone"`` (some
    are no longer kept), ``"future"`` (the position is past the channel's last offset), or
    ``"no_history"`` (the channel keeps none).
    """

    position: Position
    publications: tuple[Publication, ...] = ()
    recovered: bool = True
    reason: str = ""


def recovery(
    since: Position, top: Position, oldest: int, kept: Iterable[Publication], *, history: bool
) -> Found:
    """The answer to "what came after ``since``" for a channel now at ``top`` whose kept
    publications are ``kept`` (in order), the oldest of them ``oldest`` (``top.offset +
    1`` when none is kept). Shared by the engines, so that both answer alike."""
    if not history:
        return Found(top, (), False, "no_history")
    if since.epoch != top.epoch:
        return Found(top, (), False, "epoch")
    if since.offset > top.offset:
        return Found(top, (), False, "future")
    if since.offset + 1 < oldest:
        return Found(top, (), False, "gone")
    return Found(top, tuple(p for p in kept if p.offset > since.offset), True, "")


@dataclass(slots=True)
class ChannelLog:
    """One channel's offsets and kept publications, in memory (the embedded engine's).

    At most ``size`` publications are kept, none older than ``ttl`` seconds; a log whose
    last publication is older than ``ttl`` is :meth:`expired` and is dropped by its owner
    (it starts again with a new epoch)."""

    epoch: str
    size: int
    ttl: float
    offset: int = 0
    touched: float = 0.0
    kept: deque[tuple[float, Publication]] = field(default_factory=deque)

    def append(self, data: bytes, *, now: float, channel: str = "") -> Publication:
        self.offset += 1
        self.touched = now
        publication = Publication(channel, data, self.offset, self.epoch)
        if self.size > 0:
            self.kept.append((now, publication))
            while len(self.kept) > self.size:
                self.kept.popleft()
        self._trim(now)
        return publication

    def _trim(self, now: float) -> None:
        kept = self.kept
        while kept and kept[0][0] <= now - self.ttl:
            kept.popleft()

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)

    def since(self, position: Position, *, now: float) -> Found:
        self._trim(now)
        oldest = self.kept[0][1].offset if self.kept else self.offset + 1
        return recovery(
            position,
            self.position,
            oldest,
            (p for _, p in self.kept),
            history=self.size > 0,
        )

    def expired(self, now: float) -> bool:
        return now - self.touched >= self.ttl
