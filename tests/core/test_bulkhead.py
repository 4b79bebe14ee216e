"""The bulkhead's rules (core/bulkhead.py): slots, a bounded queue, first come first served."""

from __future__ import annotations

import pytest

from wiremesh.core.bulkhead import Bulkhead


def test_calls_take_the_free_slots_then_wait_then_are_refused() -> None:
    gate: Bulkhead[str] = Bulkhead(max_concurrency=2, max_queue=2)
    assert [gate.enter(), gate.enter(), gate.enter()] == [True, True, False]
    assert [gate.wait("a"), gate.wait("b"), gate.wait("c")] == [True, True, False]
    assert (gate.running, gate.waiting, gate.refused) == (2, 2, 1)


def test_a_free_slot_goes_to_the_waiters_in_order_before_a_newcomer() -> None:
    gate: Bulkhead[str] = Bulkhead(max_concurrency=1, max_queue=2)
    assert gate.enter()
    gate.wait("a")
    gate.wait("b")
    assert gate.leave() == "a"
    assert not gate.enter()  # b waits: a newcomer does not jump the queue
    assert gate.leave() == "b"
    assert gate.running == 1
    assert gate.leave() is None
    assert gate.running == 0
    assert gate.enter()


def test_a_waiter_that_gives_up_leaves_the_queue_and_frees_its_place() -> None:
    gate: Bulkhead[str] = Bulkhead(max_concurrency=1, max_queue=1)
    gate.enter()
    assert gate.wait("a")
    assert gate.withdraw("a")
    assert gate.waiting == 0
    assert gate.wait("b")  # its place is free again
    assert gate.leave() == "b"
    assert not gate.withdraw("b")  # handed a slot already: it must leave to pass it on
    assert gate.leave() is None
    assert gate.running == 0


def test_no_queue_refuses_as_soon_as_the_slots_are_taken() -> None:
    gate: Bulkhead[str] = Bulkhead(max_concurrency=1)
    assert gate.enter()
    assert not gate.wait("a")
    assert gate.refused == 1


@pytest.mark.parametrize(("limit", "queue"), [(0, 0), (-1, 0), (1, -1)])
def test_bad_limits_are_refused(limit: int, queue: int) -> None:
    with pytest.raises(ValueError, match="max_"):
        Bulkhead(limit, queue)
