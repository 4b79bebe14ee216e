"""The calls on one mesh link: numbers, answers, cancels, deadlines, a silent peer and the
end of the link, as values in and actions out (no socket, no event loop; the times are
passed in, the waiters are plain strings)."""

from __future__ import annotations

import doctest
import math

from wiremesh.core import calls as calls_module
from wiremesh.core.calls import SWEEP_SLACK, LinkCalls, Tick
from wiremesh.core.ejection import Liveness

POLICY = Liveness(probe_after=0.25, unreachable_after=1.0)
STEP = POLICY.probe_after


def table() -> LinkCalls[str, str]:
    return LinkCalls(POLICY)


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(calls_module).failed == 0


# -- numbering and answers --------------------------------------------------------------


def test_calls_are_numbered_from_one_and_probes_take_numbers_too() -> None:
    calls = table()
    assert calls.start("a", at=10.0) == 1
    assert calls.start("b", at=10.0) == 2
    assert calls.probe_number() == 3
    assert calls.start("c", at=10.0) == 4
    assert len(calls.pending) == 3  # a probe waits for nothing


def test_an_answer_resolves_its_own_call_once() -> None:
    calls = table()
    first, second = calls.start("a", 10.0), calls.start("b", 10.0)
    assert calls.answered(second) == "b"
    assert calls.answered(second) is None  # a duplicate answer changes nothing
    assert calls.answered(first) == "a"
    assert not calls.pending


def test_an_answer_for_an_unknown_call_or_a_probe_changes_nothing() -> None:
    calls = table()
    number = calls.start("a", 10.0)
    probe = calls.probe_number()
    assert calls.answered(999) is None
    assert calls.answered(probe) is None
    assert calls.answered(0) is None
    assert calls.pending == {number: "a"}


def test_a_cancelled_call_is_told_to_the_peer_once_and_its_late_answer_is_ignored() -> None:
    calls = table()
    number = calls.start("a", 10.0)
    assert calls.cancel(number) == "a"  # a waiter back: send CANCEL
    assert calls.cancel(number) is None  # nothing to tell twice
    assert calls.answered(number) is None
    assert not calls.pending


def test_cancelling_an_answered_call_sends_nothing() -> None:
    calls = table()
    number = calls.start("a", 10.0)
    calls.answered(number)
    assert calls.cancel(number) is None


# -- deadlines --------------------------------------------------------------------------


def test_the_timer_is_due_at_the_earliest_deadline() -> None:
    calls = table()
    assert calls.wake_at == math.inf
    calls.start("late", 30.0)
    assert calls.wake_at == 30.0
    calls.start("early", 10.0)
    assert calls.wake_at == 10.0
    calls.start("middle", 20.0)
    assert calls.wake_at == 10.0


def test_each_call_expires_at_its_own_deadline_and_the_timer_moves_on() -> None:
    calls = table()
    numbers = {name: calls.start(name, at) for name, at in [("a", 3.0), ("b", 1.0), ("c", 2.0)]}
    assert calls.expire(1.0) == [(numbers["b"], "b")]
    assert calls.wake_at == 2.0
    assert calls.expire(2.5) == [(numbers["c"], "c")]
    assert calls.wake_at == 3.0
    assert calls.expire(10.0) == [(numbers["a"], "a")]
    assert calls.wake_at == math.inf
    assert not calls.pending


def test_a_timer_that_fires_early_expires_nothing_and_stays_due() -> None:
    calls = table()
    calls.start("a", 5.0)
    assert calls.expire(4.999) == []
    assert calls.wake_at == 5.0
    assert len(calls.pending) == 1


def test_answered_and_cancelled_calls_never_expire() -> None:
    calls = table()
    answered, cancelled, waiting = (
        calls.start("a", 1.0),
        calls.start("b", 2.0),
        calls.start("c", 3.0),
    )
    calls.answered(answered)
    calls.cancel(cancelled)
    assert calls.expire(5.0) == [(waiting, "c")]
    assert calls.expire(6.0) == []


def test_answered_calls_leave_no_deadline_behind() -> None:
    calls = table()
    calls.start("long", 1000.0)  # one call stays in flight throughout
    for _ in range(10 * SWEEP_SLACK):
        # each later than the earliest, so the heap holds it until swept
        calls.answered(calls.start("quick", 100.0 + calls.last_number))
    assert calls.held <= 2 * len(calls.pending) + SWEEP_SLACK + 1
    assert len(calls.pending) == 1


# -- the link dies --------------------------------------------------------------------------


def test_a_closing_link_fails_every_call_and_cancels_every_served_one() -> None:
    calls = table()
    calls.start("a", 10.0)
    calls.start("b", 20.0, abandonable=True)
    calls.serving[7] = "handler-7"
    calls.serving[9] = "handler-9"
    calls.start_watch(0.0, -math.inf)

    waiters, served = calls.close()

    assert sorted(waiters) == ["a", "b"]
    assert sorted(served) == ["handler-7", "handler-9"]
    assert not calls.pending
    assert calls.wake_at == math.inf and not calls.watching
    assert calls.expire(100.0) == []  # nothing left to expire


def test_answers_after_the_link_died_change_nothing() -> None:
    calls = table()
    number = calls.start("a", 10.0)
    calls.close()
    assert calls.answered(number) is None
    assert calls.cancel(number) is None


# -- the peer's calls -----------------------------------------------------------------------


def test_a_peer_cancel_stops_the_call_it_names_and_nothing_else() -> None:
    calls = table()
    calls.serving[3] = "handler-3"
    calls.serving[4] = "handler-4"
    assert calls.peer_cancelled(3) == "handler-3"
    assert calls.peer_cancelled(3) is None  # finished or cancelled already: nothing
    assert calls.peer_cancelled(42) is None  # never seen: nothing
    assert calls.serving == {4: "handler-4"}


# -- a silent peer -------------------------------------------------------------------------


class Clock:
    """Drives the watch as the link's timer does: a tick every ``probe_after``, and the
    probe it asks for written at once."""

    def __init__(self, calls: LinkCalls[str, str], start: float = 100.0) -> None:
        self.calls = calls
        self.now = start
        self.heard_at = -math.inf
        self.due = calls.start_watch(self.now, self.heard_at)

    def tick(self, *, reading: bool = True) -> Tick[str]:
        self.now = self.due
        tick = self.calls.tick(self.now, self.heard_at, reading=reading)
        if tick.probe:
            self.calls.probe_sent(self.now)
        if tick.next_tick is not None:
            self.due = tick.next_tick
        return tick


def test_the_watch_runs_while_calls_are_out_and_stops_when_none_are() -> None:
    calls = table()
    calls.start("a", 100.0 + 30)
    assert not calls.watching
    clock = Clock(calls)
    assert calls.watching
    assert clock.due == 100.0 + STEP
    calls.answered(1)
    clock.heard_at = clock.now + 0.1
    tick = clock.tick()
    assert tick == Tick()  # nothing to do, and no next tick
    assert not calls.watching


def test_a_quiet_peer_is_probed_then_judged_silent_and_abandonable_calls_are_given_up() -> None:
    calls = table()
    elsewhere = calls.start("may-go-elsewhere", 130.0, abandonable=True)
    calls.start("must-wait", 130.0)
    clock = Clock(calls)

    ticks = [clock.tick() for _ in range(4)]

    assert [t.probe for t in ticks] == [True, False, False, False]
    silent = ticks[-1]
    assert silent.reachability_changed and calls.silent
    assert silent.abandoned == ((elsewhere, "may-go-elsewhere"),)
    assert silent.quiet >= POLICY.unreachable_after - 0.001
    assert list(calls.pending.values()) == ["must-wait"]  # it waits for its deadline
    assert silent.next_tick is not None


def test_calls_sent_to_a_silent_peer_are_given_up_at_the_next_tick() -> None:
    calls = table()
    calls.start("first", 130.0)
    clock = Clock(calls)
    for _ in range(4):
        clock.tick()
    assert calls.silent
    later = calls.start("later", 130.0, abandonable=True)
    tick = clock.tick()
    assert tick.abandoned == ((later, "later"),)
    assert not tick.reachability_changed  # silent already


def test_a_silent_peer_that_answers_is_reachable_again() -> None:
    calls = table()
    calls.start("a", 130.0)
    clock = Clock(calls)
    for _ in range(4):
        clock.tick()
    assert calls.silent
    clock.heard_at = clock.now + 0.01
    tick = clock.tick()
    assert tick.reachability_changed and not calls.silent
    assert tick.abandoned == ()


def test_a_link_that_does_not_read_its_peer_does_not_count_its_silence() -> None:
    calls = table()
    calls.start("a", 130.0, abandonable=True)
    clock = Clock(calls)
    ticks = [clock.tick(reading=False) for _ in range(12)]
    assert not any(t.probe or t.abandoned or t.reachability_changed for t in ticks)
    assert not calls.silent and len(calls.pending) == 1


def test_answered_abandonable_calls_are_not_given_up() -> None:
    calls = table()
    answered = calls.start("answered", 130.0, abandonable=True)
    calls.start("waiting", 130.0)
    clock = Clock(calls)
    calls.answered(answered)
    ticks = [clock.tick() for _ in range(4)]
    assert calls.silent
    assert all(t.abandoned == () for t in ticks)
