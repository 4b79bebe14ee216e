"""When a silent peer counts as unreachable, and how long a caller leaves it out.

Everything that decides lives in this file; :mod:`wiremesh.transport.link` runs one
timer per link and sends the frames, :mod:`wiremesh.transport.peer_links` runs the probes
back, and the caller's balancer skips what :class:`Ejections` holds.

Why: a partition between two hosts drops packets silently. TCP sees no reset, the peer
still heartbeats to the registry (every view lists it), and a call sent to it waits for
its whole deadline. The same holds, for a while, for a peer whose process is stopped.

Theory of operation:

1. **Watching a link.** While a link has calls of ours in flight, its :class:`Watch`
   ticks every ``probe_after`` seconds. Every message read from the peer is a sign of
   life. Once the link has been quiet for ``probe_after`` (calls out, nothing heard), the
   watch asks for one *probe*: a frame the peer answers at once, whatever its handlers
   are doing, so a slow handler never looks like a silent peer. A peer that has answered
   nothing for ``unreachable_after``, and nothing to the probe for ``unreachable_after -
   probe_after`` since it left, is *silent*: unreachable from here. Nobody is judged on
   a probe that has not left yet (it waits behind a large write of ours), nor at a tick
   that comes late (this process stalled: the peer's answers may be waiting unread).
   What the watch cannot see is a large message of the peer's on its way: megabytes over
   a slow network can look like silence; raise ``unreachable_after`` for such a mesh.
2. **Giving up on calls.** When the peer is silent, the calls on the link that may go
   elsewhere (idempotent, another node left, attempts left) are given up: their callers
   retry them on another node within their deadlines, and the peer is told to cancel
   them. Every other call keeps waiting for its answer until its own deadline: a peer
   that was only stopped for a few seconds still answers it, and a link whose
   connection is really gone is closed by gRPC's keepalive, failing them ``Unavailable``.
3. **Ejecting.** A silent peer is ejected (:class:`Ejections`): balancers leave it out,
   though the registry lists it, for ``first_ejection`` seconds, twice as long with each
   ejection in a row, at most ``max_ejection``. When an ejection ends, the peer is
   probed, still ejected; any answer within ``unreachable_after`` puts it back and
   forgets the count, silence ejects it again.

Bounds, with the defaults: a peer that falls silent is ejected within
``unreachable_after + probe_after`` (1.25 s) of the first call it leaves unanswered, and
a peer that can be reached again is back within ``max_ejection + unreachable_after``
(9 s) once it answers.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = [
    "FIRST_EJECTION",
    "MAX_EJECTION",
    "PROBE_AFTER",
    "UNREACHABLE_AFTER",
    "Ejection",
    "Ejections",
    "Liveness",
    "Verdict",
    "Watch",
]

#: seconds a link may stay quiet, calls in flight, before the peer is probed
PROBE_AFTER = 0.25
#: seconds of silence, a probe unanswered, after which the peer is unreachable from here
UNREACHABLE_AFTER = 1.0
#: seconds the first ejection in a row lasts; each next one lasts twice as long
FIRST_EJECTION = 1.0
#: seconds an ejection lasts at most
MAX_EJECTION = 8.0
#: how finely the watch compares times
_EPSILON = 0.001


@dataclass(frozen=True, slots=True)
class Liveness:
    """How quickly a caller judges a silent peer, and how long it leaves it out."""

    probe_after: float = PROBE_AFTER
    unreachable_after: float = UNREACHABLE_AFTER
    first_ejection: float = FIRST_EJECTION
    max_ejection: float = MAX_EJECTION

    def __post_init__(self) -> None:
        if self.probe_after <= 0:
            raise ValueError(f"probe_after must be positive, got {self.probe_after:g}")
        if self.unreachable_after <= self.probe_after:
            raise ValueError(
                f"unreachable_after ({self.unreachable_after:g}s) must be longer than "
                f"probe_after ({self.probe_after:g}s): the probe needs time to come back"
            )
        if not 0 < self.first_ejection <= self.max_ejection:
            raise ValueError(
                f"ejections must last 0 < first_ejection ({self.first_ejection:g}s) "
                f"<= max_ejection ({self.max_ejection:g}s)"
            )

    def ejection(self, count: int) -> float:
        """How long the ``count``-th ejection in a row (1-based) lasts.

        >>> [Liveness().ejection(n) for n in (1, 2, 3, 4, 5)]
        [1.0, 2.0, 4.0, 8.0, 8.0]
        """
        return min(self.max_ejection, self.first_ejection * 2.0 ** min(count - 1, 64))


class Verdict(enum.Enum):
    """What a link does after a tick of its :class:`Watch`."""

    #: nothing in flight: stop ticking until the next call
    IDLE = "idle"
    #: tick again
    WAIT = "wait"
    #: send the peer a probe, then tick again
    PROBE = "probe"
    #: the peer just fell silent: eject it, give up the calls that may go elsewhere
    SILENT = "silent"
    #: the peer is still silent: give up the calls that may go elsewhere sent since
    ABANDON = "abandon"
    #: the peer, silent until now, answered: it is reachable again
    ANSWERED = "answered"


class Watch:
    """The liveness rules of one link: a state machine its one timer drives.

    The link calls :meth:`start` when it sends a call and no watch runs, then
    :meth:`tick` every :attr:`Liveness.probe_after` seconds, passing when it last read a
    message from the peer, and acts on the :class:`Verdict`; after a ``PROBE`` verdict
    it calls :meth:`probe_sent` once the probe is written. Times are seconds on one
    monotonic clock, passed in; they are compared to the millisecond, so that a timer
    that fires a hair early does not put a judgement off by a whole tick.
    """

    __slots__ = ("_heard_at", "policy", "probe_asked", "probed_at", "quiet_since", "silent")

    def __init__(self, policy: Liveness) -> None:
        self.policy = policy
        #: since when the peer has said nothing while we waited for it
        self.quiet_since = 0.0
        #: whether this quiet spell asked for a probe
        self.probe_asked = False
        #: when that probe was written (None: not yet)
        self.probed_at: float | None = None
        #: whether the peer is judged silent (unreachable from here)
        self.silent = False
        self._heard_at = -math.inf

    def start(self, now: float, heard_at: float) -> None:
        """A call went out with no watch running; ``heard_at``: when the peer was last
        heard. A peer judged silent stays so unless it said something meanwhile."""
        if heard_at != self._heard_at:
            self._heard_at = heard_at
            self.silent = False
        self._quiet(now)

    def probe_sent(self, now: float) -> None:
        """The probe asked for has been written: the peer can answer it from now on."""
        if self.probe_asked and self.probed_at is None:
            self.probed_at = now

    def tick(self, now: float, *, due: float, heard_at: float, outstanding: bool) -> Verdict:
        """The verdict at ``now`` of a tick that was due at ``due``; ``heard_at``: when
        the peer was last heard; ``outstanding``: whether calls of ours are in flight."""
        if heard_at != self._heard_at:
            # a sign of life: a new quiet spell started then
            self._heard_at = heard_at
            self._quiet(max(heard_at, self.quiet_since))
            if self.silent:
                self.silent = False
                return Verdict.ANSWERED
        if not outstanding:
            return Verdict.IDLE
        policy = self.policy
        if now - due > policy.probe_after:
            # this process stalled: the peer's answers may be waiting to be read
            return Verdict.WAIT
        if self.silent:
            return Verdict.ABANDON
        quiet = now - self.quiet_since + _EPSILON
        if not self.probe_asked:
            if quiet >= policy.probe_after:
                self.probe_asked = True
                return Verdict.PROBE
            return Verdict.WAIT
        probed_at = self.probed_at
        if quiet >= policy.unreachable_after and (
            # never heard at all: the connection itself is not up (a partition drops the
            # handshake), so no probe of ours can be stuck behind a long upload
            heard_at == -math.inf
            or (
                probed_at is not None
                and now - probed_at + _EPSILON >= policy.unreachable_after - policy.probe_after
            )
        ):
            self.silent = True
            return Verdict.SILENT
        return Verdict.WAIT

    def _quiet(self, since: float) -> None:
        self.quiet_since = since
        self.probe_asked = False
        self.probed_at = None


@dataclass(slots=True)
class Ejection:
    """One peer left out: until when, and how many ejections in a row it has had."""

    until: float
    count: int


class Ejections:
    """The peers a caller leaves out, by node id.

    Balancers skip the ids in :attr:`ejected` (and pick among them only when every
    candidate is ejected). :meth:`eject` returns when the peer is due a probe; the
    probe's answer calls :meth:`answered`, its silence :meth:`eject` again.
    """

    __slots__ = ("ejected", "policy")

    def __init__(self, policy: Liveness | None = None) -> None:
        self.policy = policy if policy is not None else Liveness()
        #: node id -> its ejection; read on every call (empty almost always)
        self.ejected: dict[str, Ejection] = {}

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ejected

    def eject(self, node_id: str, now: float) -> float:
        """``node_id`` is silent (or left a probe unanswered): leave it out. Returns the
        time it is due a probe, twice as far each time in a row, up to the maximum.

        >>> ejections = Ejections()
        >>> ejections.eject("orders-3f9a", now=100.0), ejections.eject("orders-3f9a", 101.0)
        (101.0, 103.0)
        """
        entry = self.ejected.get(node_id)
        count = 1 if entry is None else entry.count + 1
        until = now + self.policy.ejection(count)
        self.ejected[node_id] = Ejection(until, count)
        return until

    def due(self, node_id: str, now: float) -> bool:
        """Whether ``node_id`` is ejected and its ejection has ended: probe it now."""
        entry = self.ejected.get(node_id)
        return entry is not None and now >= entry.until

    def answered(self, node_id: str) -> bool:
        """``node_id`` showed a sign of life: it is back, and its next ejection starts
        from the first length again. Whether it was ejected."""
        return self.ejected.pop(node_id, None) is not None

    def forget(self, node_id: str) -> None:
        """``node_id`` left the mesh: nothing to probe any more."""
        self.ejected.pop(node_id, None)
