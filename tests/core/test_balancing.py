from __future__ import annotations

from collections import Counter

import pytest

from wiremesh.core.balancing import LeastOutstanding, RoundRobin, make_balancer
from wiremesh.core.model import NodeInfo

NODES = tuple(NodeInfo(f"orders-{i}", "orders", f"127.0.0.1:{5000 + i}") for i in range(3))


def picks(balancer: RoundRobin | LeastOutstanding, count: int, exclude: set[str]) -> list[str]:
    chosen = []
    for _ in range(count):
        node = balancer.pick(NODES, exclude)
        assert node is not None
        chosen.append(node.node_id)
    return chosen


def test_round_robin_cycles_through_every_node_in_turn() -> None:
    chosen = picks(RoundRobin(), 9, set())
    assert chosen[:3] == chosen[3:6] == chosen[6:]
    assert sorted(chosen[:3]) == ["orders-0", "orders-1", "orders-2"]


def test_round_robin_skips_excluded_nodes_and_stays_even() -> None:
    chosen = picks(RoundRobin(), 10, {"orders-1"})
    assert Counter(chosen) == {"orders-0": 5, "orders-2": 5}


def test_round_robin_returns_none_when_all_are_excluded_or_there_are_none() -> None:
    balancer = RoundRobin()
    assert balancer.pick(NODES, {n.node_id for n in NODES}) is None
    assert balancer.pick((), ()) is None


def test_round_robin_follows_a_changing_node_list() -> None:
    balancer = RoundRobin()
    balancer.pick(NODES)
    only = NODES[:1]
    assert balancer.pick(only) is only[0]
    assert balancer.pick(only) is only[0]


def test_least_outstanding_picks_the_least_loaded_node() -> None:
    balancer = LeastOutstanding()
    for _ in range(3):
        balancer.started("orders-0")
    balancer.started("orders-1")
    for _ in range(5):
        assert balancer.pick(NODES) is NODES[2]


def test_least_outstanding_follows_the_load_as_calls_finish() -> None:
    balancer = LeastOutstanding()
    balancer.started("orders-0")
    balancer.started("orders-1")
    balancer.started("orders-2")
    balancer.started("orders-2")
    balancer.finished("orders-1")
    assert balancer.pick(NODES) is NODES[1]


def test_least_outstanding_spreads_ties_over_every_node() -> None:
    chosen = picks(LeastOutstanding(), 9, set())
    assert Counter(chosen) == {"orders-0": 3, "orders-1": 3, "orders-2": 3}


def test_least_outstanding_spreads_calls_that_stay_in_flight() -> None:
    balancer = LeastOutstanding()
    for _ in range(6):
        node = balancer.pick(NODES)
        assert node is not None
        balancer.started(node.node_id)
    assert balancer.outstanding == {"orders-0": 2, "orders-1": 2, "orders-2": 2}


def test_least_outstanding_skips_excluded_even_when_idle() -> None:
    balancer = LeastOutstanding()
    for _ in range(4):
        balancer.started("orders-1")
    chosen = picks(balancer, 6, {"orders-0", "orders-2"})
    assert set(chosen) == {"orders-1"}


def test_least_outstanding_returns_none_when_all_excluded_or_no_nodes() -> None:
    balancer = LeastOutstanding()
    assert balancer.pick(NODES, {n.node_id for n in NODES}) is None
    assert balancer.pick(()) is None


def test_outstanding_never_goes_negative() -> None:
    balancer = LeastOutstanding()
    balancer.finished("orders-0")
    assert balancer.outstanding.get("orders-0", 0) == 0
    balancer.started("orders-1")
    balancer.finished("orders-1")
    balancer.finished("orders-1")
    assert balancer.outstanding.get("orders-1", 0) == 0
    balancer.started("orders-1")
    assert balancer.outstanding["orders-1"] == 1


def test_round_robin_bookkeeping_is_harmless() -> None:
    balancer = RoundRobin()
    balancer.finished("orders-0")
    balancer.started("orders-0")
    assert picks(balancer, 3, set()) == ["orders-0", "orders-1", "orders-2"]


def test_make_balancer_builds_each_policy() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobin)
    assert isinstance(make_balancer("least_outstanding"), LeastOutstanding)
    assert make_balancer("round_robin") is not make_balancer("round_robin")


def test_make_balancer_rejects_unknown_names_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'random'") as info:
        make_balancer("random")  # type: ignore[arg-type]
    assert "round_robin" in str(info.value)
    assert "least_outstanding" in str(info.value)
