"""The calls on one mesh link, both ways: numbers, waiters, deadlines, a silent peer.

Everything that decides what happens to a link's calls lives in this file (the liveness
judgement itself is :class:`~wiremesh.core.ejection.Watch`'s, which :class:`LinkCalls`
drives). :class:`wiremesh.transport.link.Link` is the I/O around it: it reads and writes
the stream, runs the two timers, and resolves the *waiters*, which are opaque here (the
link's asyncio futures). Nothing here waits, reads a clock or sends a frame: the times
are passed in, and each method says what the link must do next.

Theory of operation, for the calls of ours (the *pending* calls):

1. **Numbering.** A call sent gets the next number, from 1 (:meth:`LinkCalls.start`); a
   probe takes one too (:meth:`LinkCalls.probe_number`), with no waiter. Numbers are
   never reused on a link.
2. **Answers.** A REPLY or ERROR frame resolves the call of its number, once
   (:meth:`LinkCalls.answered` hands its waiter back and forgets it). An answer for a
   number the table does not hold (a probe's, or a call answered, cancelled, expired or
   given up already, or one never sent) changes nothing: a late answer is harmless.
3. **Cancelling.** A caller that gives up (:meth:`LinkCalls.cancel`) takes its waiter
   out; the peer is told with a CANCEL frame if the call was still in the table.
4. **Deadlines.** Each call has one. Instead of a timer per call, the link keeps one
   timer, set for :attr:`LinkCalls.wake_at`; :meth:`LinkCalls.expire` then takes out
   every call whose deadline has passed (the peer is told: CANCEL; the waiter fails
   ``DeadlineExceeded``) and moves :attr:`~LinkCalls.wake_at` to the next deadline.
   Answered calls leave the deadline heap lazily: as they come to its top, or in one
   sweep once the heap holds more than twice the calls in flight plus
   :data:`SWEEP_SLACK`.
5. **A silent peer.** While calls are in flight, a watch ticks every ``probe_after``
   (:meth:`LinkCalls.start_watch`, then :meth:`LinkCalls.tick`): the rules of
   :mod:`wiremesh.core.ejection` say when to probe and when the peer is silent. Then the
   calls sent *abandonable* (those that may go to another node) are given up (CANCEL,
   and the waiters fail ``Unavailable``); the others wait for their deadlines. While
   the link does not read (its queue is full), the peer's silence is not counted.
6. **The link dies.** :meth:`LinkCalls.close` hands back every waiter (each fails
   ``Unavailable``) and every call of the peer's being served (each is cancelled).

And for the peer's calls (the *served* calls): the link lists each in
:attr:`LinkCalls.serving` while its handler runs; a CANCEL frame from the peer cancels
the one of its number (:meth:`LinkCalls.peer_cancelled`); a CANCEL for a call that is
not there (answered already, or never seen) changes nothing.

An example, with times in seconds passed in::

    >>> calls = LinkCalls()
    >>> calls.start("waiter-a", at=10.0), calls.start("waiter-b", at=5.0)
    (1, 2)
    >>> calls.wake_at
    5.0
    >>> calls.answered(1), calls.answered(1)
    ('waiter-a', None)
    >>> calls.expire(now=5.0)
    [(2, 'waiter-b')]
    >>> calls.wake_at, len(calls.pending)
    (inf, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar

from wiremesh.core.ejection import Liveness, Verdict, Watch

__all__ = ["SWEEP_SLACK", "LinkCalls", "Tick"]

W = TypeVar("W")
S = TypeVar("S")

#: entries for answered calls the deadline heap (and the list of abandonable calls) may
#: hold beyond twice the calls in flight before it is swept
SWEEP_SLACK = 256


@dataclass(frozen=True, slots=True)
class Tick(Generic[W]):
    """What a link does after a tick of its watch, in this order."""

    #: send the peer a probe (a CALL that names no service; see :meth:`LinkCalls.probe_number`)
    probe: bool = False
    #: the calls given up because the peer is silent, with their waiters: tell the peer
    #: (CANCEL) and fail each waiter ``Unavailable``
    abandoned: tuple[tuple[int, W], ...] = ()
    #: seconds the peer has said nothing while calls waited (for the error's message)
    quiet: float = 0.0
    #: the peer fell silent or, silent, answered (:attr:`LinkCalls.silent` says which):
    #: tell whoever listens
    reachability_changed: bool = False
    #: when to tick next; None: the watch stops until a call starts it again
    next_tick: float | None = None


class LinkCalls(Generic[W, S]):
    """The calls of one link: ours waiting for answers (each with a waiter ``W``) and the
    peer's being served (each with a handle ``S`` to cancel it). See the module's rules.

    The link reads :attr:`pending` (how many calls are out: ``len``), :attr:`serving`
    (it adds and removes the peer's calls itself), :attr:`wake_at` and :attr:`watching`.
    """

    __slots__ = (
        "_abandonable",
        "_deadlines",
        "_due",
        "last_number",
        "liveness",
        "pending",
        "serving",
        "wake_at",
        "watch",
        "watching",
    )

    def __init__(self, liveness: Liveness | None = None) -> None:
        self.liveness = liveness if liveness is not None else Liveness()
        #: the calls of ours waiting for their answers: number -> waiter
        self.pending: dict[int, W] = {}
        #: the peer's calls being served: number -> what cancels its handler. The link
        #: adds each call as its handler starts and removes it as it ends (a dict, written
        #: directly on the hot path); the answers owed count against the link's bound.
        self.serving: dict[int, S] = {}
        #: the last number given (to a call or a probe)
        self.last_number = 0
        #: when :meth:`expire` is due: the earliest deadline of the calls sent (inf: none)
        self.wake_at = math.inf
        #: whether the watch ticks (calls went out since it last found nothing in flight)
        self.watching = False
        #: the liveness rules of this link's peer
        self.watch = Watch(self.liveness)
        #: (deadline, number) of the calls sent, earliest first; answered calls linger
        self._deadlines: list[tuple[float, int]] = []
        #: numbers of the calls that may be given up when the peer falls silent (some
        #: may be answered already: pruned lazily, like the deadlines)
        self._abandonable: list[int] = []
        #: when the watch's next tick is due
        self._due = 0.0

    # ------------------------------------------------------------------ our calls

    def start(self, waiter: W, at: float, abandonable: bool = False) -> int:
        """A call of ours goes out, to be answered by ``at`` (the link's clock); returns
        its number. ``abandonable``: it may be given up should the peer fall silent.

        After calling this: if :attr:`wake_at` is earlier than the link's deadline timer,
        set the timer for it; if :attr:`watching` is false, call :meth:`start_watch`."""
        self.last_number = number = self.last_number + 1
        pending = self.pending
        pending[number] = waiter
        deadlines = self._deadlines
        heappush(deadlines, (at, number))
        if at < self.wake_at:
            self.wake_at = at
        elif len(deadlines) > 2 * len(pending) + SWEEP_SLACK:
            # answered calls linger in the heap until their deadline: drop them now
            self._deadlines = [entry for entry in deadlines if entry[1] in pending]
            heapify(self._deadlines)
        if abandonable:
            numbers = self._abandonable
            numbers.append(number)
            if len(numbers) > 2 * len(pending) + SWEEP_SLACK:
                self._abandonable = [n for n in numbers if n in pending]
        return number

    def probe_number(self) -> int:
        """A number for a probe: no waiter, no deadline; its answer is that of a call the
        table does not hold (rule 2)."""
        self.last_number = number = self.last_number + 1
        return number

    def answered(self, number: int) -> W | None:
        """A REPLY or ERROR frame for ``number`` arrived: the waiter to resolve with it,
        or None (nothing waits for it: ignore the frame)."""
        return self.pending.pop(number, None)

    def cancel(self, number: int) -> W | None:
        """Our caller gave up call ``number``: its waiter, or None when the call was no
        longer in flight. After calling this: when a waiter came back, send the peer a
        CANCEL frame for ``number``."""
        return self.pending.pop(number, None)

    def expire(self, now: float) -> list[tuple[int, W]]:
        """The deadline timer fired at ``now``: the calls whose deadline has passed, with
        their waiters, taken out. After calling this: send a CANCEL frame for each, fail
        each waiter ``DeadlineExceeded``, and set the timer for :attr:`wake_at` unless it
        is inf."""
        deadlines = self._deadlines
        pending = self.pending
        expired: list[tuple[int, W]] = []
        while deadlines:
            at, number = deadlines[0]
            if number not in pending:  # answered, cancelled or expired already
                heappop(deadlines)
            elif at <= now:
                heappop(deadlines)
                expired.append((number, pending.pop(number)))
            else:
                self.wake_at = at
                return expired
        self.wake_at = math.inf
        return expired

    @property
    def held(self) -> int:
        """Entries the deadline heap holds, answered calls' included: at most twice the
        calls in flight plus :data:`SWEEP_SLACK`, whatever has been answered."""
        return len(self._deadlines)

    # ------------------------------------------------------------------ the peer's liveness

    @property
    def silent(self) -> bool:
        """Whether the peer is judged silent: unreachable from here."""
        return self.watch.silent

    def start_watch(self, now: float, heard_at: float) -> float:
        """A call went out while the watch was not ticking; ``heard_at``: when the peer
        was last heard. Returns when to :meth:`tick` first."""
        self.watch.start(now, heard_at)
        self.watching = True
        self._due = due = now + self.liveness.probe_after
        return due

    def tick(self, now: float, heard_at: float, *, reading: bool = True) -> Tick[W]:
        """The watch's timer fired at ``now``; ``heard_at``: when the peer was last
        heard; ``reading``: whether the link reads its peer (when its queue is full it
        does not, and the peer's answers may be waiting unread: its silence does not
        count). Returns what to do (:class:`Tick`)."""
        was_silent = self.watch.silent
        verdict = self.watch.tick(
            now,
            due=self._due,
            heard_at=heard_at if reading else now,
            outstanding=bool(self.pending),
        )
        if verdict is Verdict.IDLE:
            self._abandonable.clear()
            self.watching = False
            return Tick()
        abandoned: tuple[tuple[int, W], ...] = ()
        quiet = 0.0
        if verdict is Verdict.SILENT or verdict is Verdict.ABANDON:
            quiet = now - self.watch.quiet_since
            abandoned = self._abandon()
        self._due = due = now + self.liveness.probe_after
        return Tick(
            probe=verdict is Verdict.PROBE,
            abandoned=abandoned,
            quiet=quiet,
            reachability_changed=self.watch.silent != was_silent,
            next_tick=due,
        )

    def probe_sent(self, now: float) -> None:
        """The probe a tick asked for has been written at ``now``: the peer can answer
        it from then on."""
        self.watch.probe_sent(now)

    def _abandon(self) -> tuple[tuple[int, W], ...]:
        numbers, self._abandonable = self._abandonable, []
        pending = self.pending
        return tuple((n, pending.pop(n)) for n in numbers if n in pending)

    # ------------------------------------------------------------------ the peer's calls

    def peer_cancelled(self, number: int) -> S | None:
        """A CANCEL frame for the peer's call ``number``: what cancels its handler, or
        None (it is not being served: it ended, or never came)."""
        return self.serving.pop(number, None)

    # ------------------------------------------------------------------ the end

    def close(self) -> tuple[list[W], list[S]]:
        """The link is gone: the waiters of every call of ours (each fails
        ``Unavailable``) and the handles of the peer's calls being served (cancel each;
        each handler removes its own call from :attr:`serving` as it ends). The watch
        stops and nothing is due any more."""
        waiters = list(self.pending.values())
        self.pending.clear()
        self._deadlines.clear()
        self._abandonable.clear()
        self.wake_at = math.inf
        self.watching = False
        return waiters, list(self.serving.values())
