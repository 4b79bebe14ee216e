from __future__ import annotations

import random

import pytest

from wiremesh.core.delivery import DeadLetter, DeliveryPolicy, Retry, reason_of, retry_delay
from wiremesh.errors import InvalidPayload


def test_retry_delay_doubles_within_jitter_bounds() -> None:
    for attempt in range(1, 8):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        assert retry_delay(attempt, 0.5, 10.0, 0.0) == pytest.approx(0.25)
        assert retry_delay(attempt, 0.5, 10.0, 0.999999) == pytest.approx(ceiling, rel=1e-5)


def test_retry_delay_is_capped_by_maximum() -> None:
    assert retry_delay(60, 0.5, 3.0, 0.999999) == pytest.approx(3.0, rel=1e-5)
    assert retry_delay(10_000, 0.5, 3.0, 0.5) <= 3.0


def test_failures_retry_then_die_after_attempts() -> None:
    policy = DeliveryPolicy(attempts=3, initial=0.1, maximum=1.0)
    rng = random.Random(7)
    first = policy.after_failure(1, RuntimeError("boom"), rng)
    second = policy.after_failure(2, RuntimeError("boom"), rng)
    third = policy.after_failure(3, RuntimeError("boom"), rng)
    assert isinstance(first, Retry) and first.reason == "RuntimeError: boom"
    assert 0.05 <= first.delay <= 0.1
    assert isinstance(second, Retry) and 0.05 <= second.delay <= 0.2
    assert isinstance(third, DeadLetter)
    assert third.reason == "failed 3 time(s); last: RuntimeError: boom"


def test_invalid_payload_dies_at_once() -> None:
    policy = DeliveryPolicy(attempts=5)
    rng = random.Random(0)
    outcome = policy.after_failure(1, InvalidPayload("qty: Input should be a valid integer"), rng)
    assert outcome == DeadLetter("invalid payload: qty: Input should be a valid integer")
    assert policy.undecodable(InvalidPayload("payload is not valid msgpack")) == DeadLetter(
        "invalid payload: payload is not valid msgpack"
    )


def test_single_attempt_never_retries() -> None:
    dead = DeliveryPolicy(attempts=1).after_failure(1, ValueError(), random.Random(0))
    assert isinstance(dead, DeadLetter)


def test_reason_is_bounded() -> None:
    assert reason_of(ValueError()) == "ValueError"
    assert len(reason_of(ValueError("x" * 10_000))) == 2000


@pytest.mark.parametrize(
    ("attempts", "initial", "maximum"), [(0, 0.5, 1.0), (3, 0.0, 1.0), (3, 2.0, 1.0)]
)
def test_bad_policy_is_refused(attempts: int, initial: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        DeliveryPolicy(attempts=attempts, initial=initial, maximum=maximum)
