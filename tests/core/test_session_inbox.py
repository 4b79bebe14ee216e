"""The turns of one session's messages on its node: messages in, what to run out (no
sockets, no event loop)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremesh.core import session_inbox
from wiremesh.core.session_inbox import DROPPED, OVERFLOW, QUEUED, RUN, SessionInbox


def drain(inbox: SessionInbox[str]) -> list[str]:
    """What the running handler's turn hands over, in order, until the session is idle."""
    ran = []
    while (message := inbox.finished()) is not None:
        ran.append(message)
    return ran


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(session_inbox).failed == 0


def test_a_message_to_an_idle_session_runs_at_once() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=4)
    assert not inbox.running
    assert inbox.arrived("a") is RUN
    assert inbox.running
    assert inbox.finished() is None
    assert not inbox.running


def test_messages_that_arrive_while_a_handler_runs_wait_and_run_in_order() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=4)
    assert inbox.arrived("a") is RUN
    assert [inbox.arrived(m) for m in "bcd"] == [QUEUED, QUEUED, QUEUED]
    assert len(inbox) == 3
    assert drain(inbox) == ["b", "c", "d"]
    assert not inbox.running and len(inbox) == 0


def test_one_handler_at_a_time_until_the_session_is_idle_again() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=4)
    assert inbox.arrived("a") is RUN
    assert inbox.arrived("b") is QUEUED
    assert inbox.finished() == "b"  # "b" runs now: the session is still running
    assert inbox.arrived("c") is QUEUED  # so "c" waits, however empty the inbox was
    assert inbox.finished() == "c"
    assert inbox.finished() is None
    assert inbox.arrived("d") is RUN  # idle again: the next one runs at once


def test_exactly_limit_messages_may_wait() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=3)
    inbox.arrived("a")
    assert [inbox.arrived(m) for m in "bcd"] == [QUEUED] * 3
    assert len(inbox) == 3
    assert drain(inbox) == ["b", "c", "d"]


def test_one_more_than_the_limit_overflows_and_drops_what_waited() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=3)
    inbox.arrived("a")
    for m in "bcd":
        inbox.arrived(m)
    assert inbox.arrived("e") is OVERFLOW
    assert len(inbox) == 0
    assert inbox.running  # the handler that runs is not stopped: it finishes
    assert inbox.finished() is None


def test_room_made_by_a_finished_turn_takes_a_message_again() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=1)
    inbox.arrived("a")
    assert inbox.arrived("b") is QUEUED
    assert inbox.finished() == "b"
    assert inbox.arrived("c") is QUEUED  # "b" runs, so the one place is free again
    assert inbox.arrived("d") is OVERFLOW


def test_closing_without_a_last_message_drops_what_waits() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=4)
    inbox.arrived("a")
    inbox.arrived("b")
    assert inbox.close() is None
    assert inbox.closed and len(inbox) == 0
    assert inbox.running  # the handler that runs finishes ...
    assert inbox.finished() is None  # ... and nothing runs after it


def test_the_last_message_runs_after_what_waits_past_a_full_inbox() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=2)
    inbox.arrived("a")
    inbox.arrived("b")
    inbox.arrived("c")  # full
    assert inbox.close("end") is None
    assert len(inbox) == 3
    assert drain(inbox) == ["b", "c", "end"]


def test_the_last_message_of_an_idle_session_runs_at_once() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=2)
    assert inbox.close("end") == "end"
    assert inbox.running
    assert inbox.finished() is None


def test_after_an_overflow_the_last_message_still_runs() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=1)
    inbox.arrived("a")
    inbox.arrived("b")
    assert inbox.arrived("c") is OVERFLOW
    assert inbox.close("end") is None
    assert drain(inbox) == ["end"]


def test_a_session_that_ended_takes_no_message() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=2)
    assert inbox.close() is None
    assert inbox.arrived("late") is DROPPED
    assert not inbox.running and len(inbox) == 0


def test_a_session_ends_once() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=2)
    assert inbox.close("end") == "end"
    assert inbox.close("again") is None
    assert inbox.close() is None
    assert drain(inbox) == []


def test_finishing_with_no_handler_running_is_a_mistake_of_the_caller() -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=2)
    with pytest.raises(RuntimeError):
        inbox.finished()


def test_an_inbox_holds_at_least_one_message() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SessionInbox(limit=0)


def test_the_answers_are_shared_constants() -> None:
    # the node side compares them by identity on every browser message
    a: SessionInbox[str] = SessionInbox(limit=1)
    b: SessionInbox[str] = SessionInbox(limit=1)
    assert a.arrived("x") is b.arrived("y") is RUN


@given(
    limit=st.integers(1, 4),
    events=st.lists(st.sampled_from(["arrive", "finish", "close", "close-last"]), max_size=40),
)
def test_every_message_runs_at_most_once_in_order_one_at_a_time(
    limit: int, events: list[str]
) -> None:
    inbox: SessionInbox[str] = SessionInbox(limit=limit)
    arrived: list[str] = []
    ran: list[str] = []
    running = False
    for event in events:
        if event == "arrive":
            message = f"m{len(arrived):03}"
            arrived.append(message)
            answer = inbox.arrived(message)
            if answer is RUN:
                assert not running
                running = True
                ran.append(message)
            elif answer is DROPPED:
                assert inbox.closed
        elif event == "finish" and running:
            following = inbox.finished()
            if following is None:
                running = False
            else:
                ran.append(following)
        elif event.startswith("close"):
            last = inbox.close("zz-end" if event == "close-last" else None)
            if last is not None:
                assert not running
                running = True
                ran.append(last)
        assert inbox.running is running
        assert len(inbox) <= limit + 1  # the last message may wait past the limit
    assert ran == sorted(set(ran))  # in arrival order, each once; the last one last
