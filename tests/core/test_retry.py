from __future__ import annotations

import random
from typing import Any

import pytest

from wiremesh.core.retry import MAX_ATTEMPTS, Backoff, should_retry
from wiremesh.errors import Status

GOOD: dict[str, Any] = {"idempotent": True, "attempt": 1, "remaining": 1.0, "nodes_left": 2}


def retry(status: Status = Status.UNAVAILABLE, **changes: Any) -> bool:
    """should_retry for a call that would be retried, with ``changes`` applied."""
    return should_retry(status, **{**GOOD, **changes})


def test_an_idempotent_call_to_an_unavailable_node_is_retried() -> None:
    assert retry() is True


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.UNAVAILABLE])
def test_only_unavailable_is_retried(status: Status) -> None:
    assert retry(status) is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idempotent", False),
        ("remaining", 0.0),
        ("remaining", -0.5),
        ("nodes_left", 0),
        ("attempt", MAX_ATTEMPTS),
    ],
)
def test_no_retry_when_one_condition_fails(field: str, value: Any) -> None:
    assert retry(**{field: value}) is False


def test_attempts_are_counted_from_one_up_to_max_attempts() -> None:
    allowed = [retry(attempt=attempt) for attempt in range(1, 6)]
    assert allowed == [True, True, False, False, False]
    assert MAX_ATTEMPTS == 3


def test_max_attempts_can_be_raised() -> None:
    assert retry(attempt=4, max_attempts=5) is True
    assert retry(attempt=4, max_attempts=4) is False


def test_backoff_grows_exponentially_within_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=16.0, reset_after=100.0)
    rng = random.Random(7)
    for failure in range(12):
        ceiling = min(16.0, 2.0**failure)
        delay = backoff.next_delay(ran_for=0.1, rng=rng)
        assert 0.5 <= delay <= ceiling
    assert backoff.failures == 12


def test_backoff_ceiling_doubles_then_caps_at_maximum() -> None:
    # rng.random() just below 1 puts the delay at the ceiling for that failure
    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    backoff = Backoff(initial=1.0, maximum=10.0, reset_after=100.0)
    delays = [backoff.next_delay(0.0, Top()) for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_lowest_delay_is_half_the_initial_one() -> None:
    class Bottom(random.Random):
        def random(self) -> float:
            return 0.0

    backoff = Backoff(initial=2.0, maximum=30.0)
    assert [backoff.next_delay(0.0, Bottom()) for _ in range(4)] == [1.0] * 4


def test_backoff_resets_after_a_long_run() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, reset_after=30.0)
    rng = random.Random(1)
    for _ in range(5):
        backoff.next_delay(ran_for=1.0, rng=rng)
    delay = backoff.next_delay(ran_for=30.0, rng=rng)
    assert 0.5 <= delay <= 1.0
    assert backoff.failures == 1


def test_backoff_does_not_reset_after_a_short_run() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, reset_after=30.0)
    for _ in range(3):
        backoff.next_delay(ran_for=29.9, rng=random.Random(0))
    assert backoff.failures == 3


def test_backoff_uses_the_rng_it_is_given() -> None:
    def delays(seed: int) -> list[float]:
        backoff, rng = Backoff(), random.Random(seed)
        return [backoff.next_delay(0.0, rng) for _ in range(8)]

    assert delays(42) == delays(42)
    assert delays(42) != delays(43)


def test_backoff_survives_a_node_that_never_stops_dying() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    rng = random.Random(3)
    delays = [backoff.next_delay(0.0, rng) for _ in range(1100)]
    assert all(0.25 <= d <= 30.0 for d in delays)
