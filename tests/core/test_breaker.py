"""The circuit breaker's rules (core/breaker.py), with the times passed in."""

from __future__ import annotations

import pytest

from wiremesh.core.breaker import Breakers, BreakerSettings, State, counts_as_failure
from wiremesh.errors import Status

QUICK = BreakerSettings(failures=3, failure_rate=0.5, window=10, open_for=1.0, max_open_for=4.0)


def test_failures_in_a_row_open_the_circuit_and_leave_the_node_out() -> None:
    breakers = Breakers(QUICK)
    assert not breakers.record("svc", "a", True, now=0.0)
    assert not breakers.record("svc", "a", True, now=0.1)
    assert breakers.left_out("svc", now=0.1) == set()
    assert breakers.record("svc", "a", True, now=0.2)  # the third in a row opens it
    assert breakers.left_out("svc", now=0.3) == {"a"}
    assert not breakers.allows("svc", "a", now=0.3)
    assert breakers.left_out("other", now=0.3) == set()
    assert breakers.opened == {"svc": 1}
    assert breakers.not_closed() == [("svc", "a", State.OPEN)]
    assert breakers.reopens_in("svc", now=0.7) == pytest.approx(0.5)  # a probe at 1.2
    assert breakers.reopens_in("svc", now=0.7, node="b") == 0.0
    assert breakers.reopens_in("svc", now=2.0) == 0.0


def test_a_success_breaks_the_run_of_failures() -> None:
    breakers = Breakers(QUICK)
    for failed in (True, True, False, True, True, False):
        assert not breakers.record("svc", "a", failed, now=0.0)
    assert breakers.left_out("svc", now=0.0) == set()


def test_a_failure_rate_over_the_window_opens_the_circuit() -> None:
    breakers = Breakers(QUICK)
    opened = [breakers.record("svc", "a", failed, now=0.0) for failed in [True, False] * 5]
    assert opened == [False] * 9 + [True]  # half of the last 10, once 10 were seen


def test_half_open_lets_one_probe_through_and_its_success_closes_the_circuit() -> None:
    breakers = Breakers(QUICK)
    for _ in range(3):
        breakers.record("svc", "a", True, now=0.0)
    assert not breakers.allows("svc", "a", now=0.9)
    assert breakers.left_out("svc", now=1.0) == set()  # time is up: the next call probes
    assert breakers.allows("svc", "a", now=1.0)  # the probe
    assert not breakers.allows("svc", "a", now=1.0)  # the others wait for its outcome
    assert breakers.left_out("svc", now=1.0) == {"a"}
    breakers.record("svc", "a", False, now=1.1)
    assert breakers.circuits == {}  # closed and healthy: nothing kept
    assert breakers.allows("svc", "a", now=1.1)


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_most() -> None:
    breakers = Breakers(QUICK)
    for _ in range(3):
        breakers.record("svc", "a", True, now=0.0)
    now, waits = 0.0, []
    for _ in range(4):
        circuit = breakers.circuits["svc", "a"]
        waits.append(circuit.until - now)
        now = circuit.until
        assert breakers.allows("svc", "a", now)
        assert breakers.record("svc", "a", True, now)
    assert waits == [1.0, 2.0, 4.0, 4.0]
    assert breakers.opened == {"svc": 5}


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    breakers = Breakers(QUICK)
    for _ in range(3):
        breakers.record("svc", "a", True, now=0.0)
    assert breakers.allows("svc", "a", now=1.0)
    breakers.release("svc", "a")
    assert breakers.allows("svc", "a", now=1.0)


def test_settings_per_service_and_a_disabled_breaker() -> None:
    breakers = Breakers(
        QUICK, {"lenient": BreakerSettings(failures=10), "off": BreakerSettings(enabled=False)}
    )
    for service in ("svc", "lenient", "off"):
        for _ in range(3):
            breakers.record(service, "a", True, now=0.0)
    assert breakers.left_out("svc", 0.0) == {"a"}
    assert breakers.left_out("lenient", 0.0) == set()
    assert breakers.left_out("off", 0.0) == set()
    assert ("off", "a") not in breakers.circuits


def test_nodes_that_leave_the_mesh_are_forgotten() -> None:
    breakers = Breakers(QUICK)
    for node in ("a", "b"):
        for _ in range(3):
            breakers.record("svc", node, True, now=0.0)
    breakers.forget({"b"})
    assert set(breakers.circuits) == {("svc", "b")}


@pytest.mark.parametrize(
    ("status", "refused", "counts"),
    [
        (Status.UNAVAILABLE, False, True),
        (Status.DEADLINE_EXCEEDED, False, True),
        (Status.INTERNAL, False, True),
        (Status.UNAVAILABLE, True, False),  # a bulkhead's refusal: busy, not broken
        (Status.FAILED_PRECONDITION, False, False),  # a domain error
        (Status.INVALID_PAYLOAD, False, False),
        (Status.PERMISSION_DENIED, False, False),
        (Status.CANCELLED, False, False),
    ],
)
def test_what_counts_as_a_failure(status: Status, refused: bool, counts: bool) -> None:
    assert counts_as_failure(status, refused=refused) is counts


@pytest.mark.parametrize(
    "bad",
    [
        {"failures": 0},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"window": 0},
        {"open_for": 0.0},
        {"open_for": 10.0, "max_open_for": 5.0},
        {"max_open_for": float("inf")},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        BreakerSettings(**bad)  # type: ignore[arg-type]
