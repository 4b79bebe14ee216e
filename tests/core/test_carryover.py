"""The view's rule for a registry that restarted with no memory of the mesh."""

from __future__ import annotations

import pytest

from wiremesh.core.carryover import Carryover
from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState

A = NodeInfo("a-1", "a", "h:1")
B = NodeInfo("b-1", "b", "h:2")


def snap(epoch: str, *nodes: NodeInfo, version: int = 1) -> MeshSnapshot:
    return MeshSnapshot.of(version, nodes, epoch=epoch)


def ids(snapshot: MeshSnapshot) -> set[str]:
    return set(snapshot.by_id)


def test_snapshots_of_one_epoch_are_shown_as_they_are() -> None:
    rule = Carryover(2.5)
    first = snap("e1", A, B)
    assert rule.apply(first, 0.0) is first
    second = snap("e1", A, version=2)
    assert rule.apply(second, 1.0) is second  # B left: gone at once


def test_a_new_epoch_keeps_the_old_nodes_until_the_grace_ends() -> None:
    rule = Carryover(2.5)
    rule.apply(snap("e1", A, B), 0.0)
    shown = rule.apply(snap("e2"), 10.0)  # restarted empty
    assert ids(shown) == {"a-1", "b-1"}
    assert shown.epoch == "e2"
    assert rule.carrying(11.0)
    # A registers again: its new record replaces the kept one
    a_again = NodeInfo("a-1", "a", "h:9", state=NodeState.DRAINING)
    shown = rule.apply(snap("e2", a_again, version=2), 11.0)
    assert shown.by_id["a-1"] is a_again
    assert ids(shown) == {"a-1", "b-1"}
    # the grace is over: B never came back, and leaves
    shown = rule.apply(snap("e2", a_again, version=2), 12.6)
    assert ids(shown) == {"a-1"}
    assert not rule.carrying(12.6)


def test_a_second_restart_within_the_grace_keeps_both_generations() -> None:
    rule = Carryover(2.0)
    rule.apply(snap("e1", A), 0.0)
    rule.apply(snap("e2", B), 1.0)
    shown = rule.apply(snap("e3"), 1.5)
    assert ids(shown) == {"a-1", "b-1"}
    assert rule.until == 3.5


def test_the_first_snapshot_or_one_without_an_epoch_starts_no_grace() -> None:
    rule = Carryover(2.0)
    rule.apply(snap("", A), 0.0)
    assert ids(rule.apply(snap("", version=2), 0.5)) == set()
    rule = Carryover(2.0)
    assert ids(rule.apply(snap("e1"), 0.0)) == set()
    assert not rule.carrying(0.0)


def test_a_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError):
        Carryover(-1)
