from __future__ import annotations

import pytest

from wiremesh.core.deadline import Deadline


def test_after_is_measured_from_the_given_now() -> None:
    assert Deadline.after(2.5, now=100.0) == Deadline(102.5)


def test_remaining_counts_from_the_given_now() -> None:
    deadline = Deadline.after(60.0, now=1000.0)
    assert deadline.remaining(now=1000.5) == 59.5


def test_remaining_counts_down_and_goes_negative_once_passed() -> None:
    deadline = Deadline(10.0)
    assert deadline.remaining(now=4.0) == 6.0
    assert deadline.remaining(now=10.0) == 0.0
    assert deadline.remaining(now=12.5) == -2.5


@pytest.mark.parametrize(
    ("now", "expired"),
    [(9.999, False), (10.0, True), (11.0, True)],
)
def test_expired_from_the_exact_deadline_on(now: float, expired: bool) -> None:
    assert Deadline(10.0).expired(now=now) is expired


def test_capped_keeps_the_earlier_deadline_when_the_timeout_is_longer() -> None:
    outer = Deadline(10.0)
    assert outer.capped(30.0, now=0.0) is outer


def test_capped_takes_the_timeout_when_it_ends_first() -> None:
    assert Deadline(10.0).capped(3.0, now=5.0) == Deadline(8.0)


def test_capped_with_no_timeout_is_unchanged() -> None:
    outer = Deadline(10.0)
    assert outer.capped(None, now=0.0) is outer


def test_a_nested_call_inherits_what_remains() -> None:
    outer = Deadline.after(5.0, now=100.0)
    nested = outer.capped(30.0, now=103.0)
    assert nested.remaining(now=103.0) == pytest.approx(2.0)


def test_deadline_is_immutable() -> None:
    deadline = Deadline(1.0)
    with pytest.raises(AttributeError):
        deadline.at = 2.0  # type: ignore[misc]
