from __future__ import annotations

import pytest

from wiremesh.core.bucket import TokenBucket


def test_starts_full_and_refuses_past_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_refills_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert bucket.tokens(100.0) == 3.0  # never more than the burst


def test_a_refusal_spends_nothing_and_time_going_back_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(10.5)
    assert not bucket.take(9.0)
    assert bucket.take(11.0)


def test_cost_and_bad_settings() -> None:
    bucket = TokenBucket(rate=1.0, burst=5.0, now=0.0)
    assert bucket.take(0.0, cost=5.0)
    assert not bucket.take(0.0, cost=0.5)
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1.0, now=0.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=0.5, now=0.0)
