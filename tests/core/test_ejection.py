"""The liveness rules of a link and the ejection table: values in, verdicts out (no
sockets, no event loop; the times are passed in)."""

from __future__ import annotations

import doctest

import pytest

from wiremesh.core import ejection
from wiremesh.core.ejection import Ejections, Liveness, Verdict, Watch

POLICY = Liveness(probe_after=0.25, unreachable_after=1.0, first_ejection=1.0, max_ejection=8.0)
STEP = POLICY.probe_after


class Ticker:
    """Drives a :class:`Watch` as a link's timer does: a tick every ``probe_after``,
    on time unless told otherwise; a probe asked for is written at once unless
    ``writes_stuck``."""

    def __init__(self, start: float = 100.0) -> None:
        self.watch = Watch(POLICY)
        self.now = start
        self.heard_at = 0.0
        self.writes_stuck = False
        self.watch.start(self.now, self.heard_at)

    def hear(self) -> None:
        """A message from the peer is read, a little after the last tick."""
        self.heard_at = self.now + 0.125

    def tick(self, *, outstanding: bool = True, late: float = 0.0) -> Verdict:
        due = self.now + STEP
        self.now = due + late
        verdict = self.watch.tick(
            self.now, due=due, heard_at=self.heard_at, outstanding=outstanding
        )
        if verdict is Verdict.PROBE and not self.writes_stuck:
            self.watch.probe_sent(self.now)
        return verdict

    def ticks(self, count: int) -> list[Verdict]:
        return [self.tick() for _ in range(count)]


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(ejection).failed == 0


# -- the watch of one link -------------------------------------------------------------


def test_a_quiet_link_probes_once_then_judges_its_peer_silent() -> None:
    t = Ticker()
    # quiet since the start: a probe after probe_after, then silence at unreachable_after
    assert t.ticks(4) == [Verdict.PROBE, Verdict.WAIT, Verdict.WAIT, Verdict.SILENT]
    assert t.watch.silent
    assert t.now - 100.0 <= POLICY.unreachable_after + POLICY.probe_after


@pytest.mark.parametrize("phase", [0.0, 0.01, 0.1, 0.125, 0.2, 0.249])
def test_a_silent_peer_is_judged_within_the_documented_bound_of_its_last_word(
    phase: float,
) -> None:
    t = Ticker()
    t.tick()
    t.heard_at = t.now + phase  # its last word, anywhere between two ticks
    while t.tick() is not Verdict.SILENT:
        assert t.now - t.heard_at < 5.0
    quiet = t.now - t.heard_at
    assert POLICY.unreachable_after <= quiet <= POLICY.unreachable_after + POLICY.probe_after


def test_a_peer_that_answers_the_probe_is_never_judged() -> None:
    # a slow handler: no reply for seconds, but every probe is answered
    t = Ticker()
    verdicts = []
    for _ in range(40):
        verdict = t.tick()
        verdicts.append(verdict)
        if verdict is Verdict.PROBE:
            t.hear()  # the probe's answer, read before the next tick
    assert Verdict.SILENT not in verdicts
    assert verdicts.count(Verdict.PROBE) >= 10
    assert not t.watch.silent


def test_any_message_from_the_peer_starts_a_new_quiet_spell() -> None:
    t = Ticker()
    assert t.ticks(3) == [Verdict.PROBE, Verdict.WAIT, Verdict.WAIT]
    t.hear()  # a reply to some call
    assert t.tick() is Verdict.WAIT
    assert t.ticks(4) == [Verdict.PROBE, Verdict.WAIT, Verdict.WAIT, Verdict.SILENT]


def test_nothing_in_flight_stops_the_watch() -> None:
    t = Ticker()
    assert t.tick(outstanding=False) is Verdict.IDLE
    t.hear()  # the last reply came in: nothing is left out there
    assert t.tick(outstanding=False) is Verdict.IDLE


def test_a_late_tick_never_judges() -> None:
    # this process itself stalled for seconds: the peer's answers may be waiting unread
    t = Ticker()
    assert t.tick(late=5.0) is Verdict.WAIT
    assert t.tick() is Verdict.PROBE
    assert t.tick(late=5.0) is Verdict.WAIT
    assert not t.watch.silent
    # on time again, and still nothing read: now it judges
    assert t.tick() is Verdict.SILENT


def test_no_judgement_before_the_probe_had_time_to_come_back() -> None:
    # quiet for long already when the first tick comes (it was late): probe first
    t = Ticker()
    assert t.tick(late=2.0) is Verdict.WAIT
    assert t.tick() is Verdict.PROBE
    assert t.ticks(3) == [Verdict.WAIT, Verdict.WAIT, Verdict.SILENT]


def test_no_judgement_on_a_probe_that_has_not_left() -> None:
    # the probe waits behind a large write of ours: the peer cannot answer it yet
    t = Ticker()
    t.writes_stuck = True
    assert t.ticks(12) == [Verdict.PROBE] + [Verdict.WAIT] * 11
    t.watch.probe_sent(t.now)  # the write is done, the probe is out
    # it gets unreachable_after - probe_after (0.75 s) to come back
    assert t.ticks(3) == [Verdict.WAIT, Verdict.WAIT, Verdict.SILENT]


def test_a_peer_never_heard_is_judged_even_though_no_probe_could_leave() -> None:
    # a new link whose connection never comes up (a partition drops the handshake): its
    # writes never leave, and nothing of ours can be holding up the peer's answer
    t = Ticker()
    t.heard_at = float("-inf")
    t.watch.start(t.now, t.heard_at)
    t.writes_stuck = True
    assert t.ticks(4) == [Verdict.PROBE, Verdict.WAIT, Verdict.WAIT, Verdict.SILENT]


def test_a_probe_written_after_its_quiet_spell_ended_changes_nothing() -> None:
    t = Ticker()
    t.writes_stuck = True
    assert t.tick() is Verdict.PROBE
    t.hear()
    assert t.tick() is Verdict.WAIT  # a new quiet spell, which asked for no probe yet
    t.watch.probe_sent(t.now)
    assert t.watch.probed_at is None


def test_a_silent_peer_keeps_having_its_calls_given_up_until_it_answers() -> None:
    t = Ticker()
    t.ticks(4)
    assert t.watch.silent
    assert t.ticks(3) == [Verdict.ABANDON] * 3
    t.hear()
    assert t.tick() is Verdict.ANSWERED
    assert not t.watch.silent
    assert t.tick() is Verdict.PROBE  # a new quiet spell, judged afresh


def test_a_silent_peer_that_answers_when_nothing_is_in_flight_is_answered_first() -> None:
    t = Ticker()
    t.ticks(4)
    t.hear()
    assert t.tick(outstanding=False) is Verdict.ANSWERED
    assert t.tick(outstanding=False) is Verdict.IDLE


def test_a_new_call_on_a_silent_link_is_given_up_at_the_first_tick() -> None:
    t = Ticker()
    t.ticks(4)
    assert t.tick(outstanding=False) is Verdict.IDLE
    t.now += 3.0
    t.watch.start(t.now, t.heard_at)  # a call goes out again; still not a word from the peer
    assert t.watch.silent
    assert t.tick() is Verdict.ABANDON


def test_a_silent_peer_heard_while_the_watch_slept_is_no_longer_silent() -> None:
    t = Ticker()
    t.ticks(4)
    assert t.tick(outstanding=False) is Verdict.IDLE
    t.hear()  # e.g. the answer to a probe sent back by the ejection table
    t.watch.start(t.now, t.heard_at)
    assert not t.watch.silent
    assert t.tick() is Verdict.PROBE  # judged afresh: a probe first


# -- the policy ------------------------------------------------------------------------


def test_ejections_double_up_to_the_maximum() -> None:
    assert [POLICY.ejection(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert POLICY.ejection(10_000) == 8.0


@pytest.mark.parametrize(
    "settings",
    [
        {"probe_after": 0.0},
        {"probe_after": 1.0, "unreachable_after": 1.0},
        {"first_ejection": 0.0},
        {"first_ejection": 10.0, "max_ejection": 5.0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Liveness(**settings)


# -- the ejection table ----------------------------------------------------------------


def test_an_ejected_node_is_due_a_probe_when_its_ejection_ends() -> None:
    ejections = Ejections(POLICY)
    until = ejections.eject("orders-1", now=10.0)
    assert until == 11.0
    assert "orders-1" in ejections
    assert not ejections.due("orders-1", 10.5)
    assert ejections.due("orders-1", 11.0)
    assert not ejections.due("orders-2", 11.0)


def test_each_ejection_in_a_row_lasts_longer_and_an_answer_resets_the_count() -> None:
    ejections = Ejections(POLICY)
    now = 0.0
    lengths = []
    for _ in range(5):
        until = ejections.eject("orders-1", now)
        lengths.append(until - now)
        now = until + POLICY.unreachable_after  # the probe went unanswered
    assert lengths == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert ejections.answered("orders-1") is True
    assert "orders-1" not in ejections
    assert ejections.eject("orders-1", now) - now == 1.0


def test_answering_or_forgetting_a_node_that_was_not_ejected_changes_nothing() -> None:
    ejections = Ejections(POLICY)
    ejections.eject("orders-1", 0.0)
    assert ejections.answered("orders-2") is False
    ejections.forget("orders-3")
    assert list(ejections.ejected) == ["orders-1"]
    ejections.forget("orders-1")
    assert not ejections.ejected
