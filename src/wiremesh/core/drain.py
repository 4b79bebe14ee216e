"""A draining node's rules: finish the work in flight, refuse new work. No I/O.

*Work* is what one call from outside a handler sets going in the mesh: that call (from
the HTTP door, ``wiremesh call``, a client, a foreign gRPC program) and every call nested
in it, at any depth, on any host. A nested call carries the age of its work,
``wm-work-age``: milliseconds since the work began, as its caller measures it when it
sends. The receiving node knows from it when the work began on its own clock, with no
clock shared between hosts (the way a gRPC deadline travels as a timeout). A call that
carries no age begins its work when it arrives.

A node that drains (:class:`Drain`), from the moment it stops taking new work
(:meth:`Drain.begin`):

- takes a call whose work began before that moment (:meth:`Drain.admits`), and refuses
  any other, unrun, so that its caller may try another node;
- stays until nothing in flight may still need it. Its own part is done
  (:meth:`Drain.settled`) once no call runs on it and no *serving* node whose work in
  flight has called it (:meth:`Drain.called_by`; another host's, say) is still before
  that work's deadline; it says so in its registry record (``wm.drain``: ``working``,
  then ``done``). It goes once, besides, no other node that drains, nor any node of the
  supervisor it drains with (``wm.drains-with``), is still working
  (:meth:`Drain.working`): a node whose work is in flight may call it at any moment, and
  only says ``done`` once that work has ended. So callees outlive their callers with no
  call graph known, and when every draining node is done, all go at once.

The work the running handler belongs to is in a context variable (:func:`enter_work`,
:func:`work_began`): tasks a handler starts inherit it, and the calls they make carry
its age (:func:`work_age`).

>>> drain = Drain()
>>> drain.admits(began=5.0)
True
>>> drain.begin(now=10.0)
>>> drain.admits(began=9.0), drain.admits(began=11.0)
(True, False)
>>> began_at("1500", now=20.0), began_at(None, now=20.0)
(18.5, 20.0)
"""

from __future__ import annotations

import contextvars

from wiremesh.core.model import MeshSnapshot

__all__ = [
    "DONE",
    "DRAINS_WITH_KEY",
    "DRAIN_KEY",
    "TRAVEL_ALLOWANCE",
    "WORKING",
    "Drain",
    "began_at",
    "drains_with",
    "enter_work",
    "leave_work",
    "work_age",
    "work_began",
]

#: Seconds after a node stopped taking new work that a work may have begun and still
#: count as in flight: the age a call carries leaves out the time it travelled (and
#: waited in a busy event loop), and each hop adds its own.
TRAVEL_ALLOWANCE = 0.25
#: the largest age taken at its word (a day, in milliseconds); a longer one is nonsense
_LONGEST_AGE = 86_400_000
#: callers remembered before the ones past their deadline are forgotten
_CALLERS = 1024

#: registry metadata of a node started by a supervisor: which one (``host/pid``); the
#: nodes (and the gateway) of one supervisor drain together
DRAINS_WITH_KEY = "wm.drains-with"
#: registry metadata of a draining node: :data:`WORKING` while work in flight on it may
#: still call other nodes, :data:`DONE` once it only waits for the others
DRAIN_KEY = "wm.drain"
WORKING = "working"
DONE = "done"

_began: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "wiremesh_work_began", default=None
)


def drains_with(host: str, supervisor_pid: int) -> str | None:
    """``wm.drains-with`` of a process that the supervisor ``supervisor_pid`` started on
    ``host``; None for one started by hand.

    >>> drains_with("app-1", 4242), drains_with("app-1", 0)
    ('app-1/4242', None)
    """
    return f"{host}/{supervisor_pid}" if supervisor_pid else None


def work_began() -> float | None:
    """When the work of the running handler began (``time.monotonic()``); None outside
    of any work (a client, a timer, ``on_start``)."""
    return _began.get()


def enter_work(began: float) -> contextvars.Token[float | None]:
    """Run what follows (and the tasks it starts) as part of the work that began at
    ``began``; :func:`leave_work` with the token ends it."""
    return _began.set(began)


def leave_work(token: contextvars.Token[float | None]) -> None:
    _began.reset(token)


def work_age(began: float, now: float) -> str:
    """``wm-work-age`` for a call made at ``now`` in the work that began at ``began``.

    >>> work_age(10.0, now=12.25)
    '2250'
    """
    return str(max(0, int((now - began) * 1000)))


def began_at(age: str | bytes | None, now: float) -> float:
    """When the work of a call that arrived at ``now`` carrying ``age`` began; ``now``
    when it carries none, or not a whole number of milliseconds: it begins its work."""
    if isinstance(age, bytes):
        age = age.decode("ascii", "replace")
    if age is None or not (age.isascii() and age.isdigit()) or len(age) > 9:
        return now
    return now - min(int(age), _LONGEST_AGE) / 1000


class Drain:
    """One node's drain: which calls it takes, and whom it waits for before it goes.

    The node tells it each call it runs (:attr:`running`, :meth:`called_by`); the time is
    always passed in (``time.monotonic()``).
    """

    __slots__ = ("_callers", "running", "since")

    def __init__(self) -> None:
        #: when the node stopped taking new work; None while it takes it
        self.since: float | None = None
        #: calls running on the node now, whatever transport brought them
        self.running = 0
        # a calling node (``service@node-id``) -> the latest deadline of its calls here
        # that belonged to work in flight
        self._callers: dict[str, float] = {}

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self, now: float) -> None:
        """Stop taking new work from ``now`` on (a second call changes nothing)."""
        if self.since is None:
            self.since = now

    def admits(self, began: float) -> bool:
        """Whether the node takes a call whose work began at ``began``."""
        since = self.since
        return since is None or began <= since + TRAVEL_ALLOWANCE

    def called_by(self, caller: str, deadline: float, now: float) -> None:
        """Note a call nested in work in flight on ``caller`` (``service@node-id``): that
        work may call again until ``deadline``."""
        callers = self._callers
        if deadline <= callers.get(caller, 0.0):
            return
        if len(callers) >= _CALLERS and caller not in callers:
            for gone in [name for name, due in callers.items() if due <= now]:
                del callers[gone]
        callers[caller] = deadline

    def holding(self, now: float, snapshot: MeshSnapshot) -> list[str]:
        """The serving callers whose work in flight may still call this node: in the
        mesh, serving, before the deadline of their latest call here (a draining caller
        says itself when its work is done: see :meth:`working`)."""
        held = []
        for caller, due in self._callers.items():
            if due > now:
                node = snapshot.by_id.get(caller.rpartition("@")[2])
                if node is not None and node.serving:
                    held.append(caller)
        return sorted(held)

    def settled(self, now: float, snapshot: MeshSnapshot) -> bool:
        """Whether this node's own part of the work in flight is done: no call runs on it
        and no caller is :meth:`holding` it (what it says as ``wm.drain``)."""
        return self.running == 0 and not self.holding(now, snapshot)

    @staticmethod
    def working(snapshot: MeshSnapshot, me: str, drains_with: str | None) -> list[str]:
        """The other nodes whose work in flight may still call this one: those that drain,
        and those of the supervisor this node drains with (draining soon, if not yet),
        until they say :data:`DONE` or leave the mesh."""
        return sorted(
            node.node_id
            for node in snapshot.nodes
            if node.node_id != me
            and (
                not node.serving
                or (drains_with is not None and node.metadata.get(DRAINS_WITH_KEY) == drains_with)
            )
            and node.metadata.get(DRAIN_KEY) != DONE
        )
