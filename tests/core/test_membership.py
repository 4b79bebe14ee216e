from __future__ import annotations

import pytest

from wiremesh.core.membership import Membership
from wiremesh.core.model import NodeInfo, NodeState


def node(node_id: str, service: str = "orders", address: str = "127.0.0.1:5000") -> NodeInfo:
    return NodeInfo(node_id, service, address)


@pytest.mark.parametrize("ttl", [0, -1.0])
def test_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        Membership(ttl)


def test_register_adds_the_node_and_bumps_the_version() -> None:
    members = Membership(ttl=10)
    assert members.version == 0
    members.register(node("orders-1"), now=0.0)
    assert members.version == 1
    assert "orders-1" in members
    assert len(members) == 1
    snapshot = members.snapshot()
    assert snapshot.version == 1
    assert snapshot.by_id["orders-1"] == node("orders-1")


def test_renew_without_a_change_keeps_the_version() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1"), now=0.0)
    assert members.renew("orders-1", now=5.0) is True
    assert members.renew("orders-1", now=6.0, state=NodeState.SERVING) is True
    assert members.version == 1


def test_renew_with_a_new_state_bumps_the_version_once() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1"), now=0.0)
    assert members.renew("orders-1", now=1.0, state=NodeState.DRAINING)
    assert members.version == 2
    assert members.snapshot().by_id["orders-1"].state is NodeState.DRAINING
    assert members.snapshot().serving("orders") == ()
    members.renew("orders-1", now=2.0, state=NodeState.DRAINING)
    assert members.version == 2


def test_renew_of_an_unknown_node_is_false_and_changes_nothing() -> None:
    members = Membership(ttl=10)
    assert members.renew("ghost", now=1.0, state=NodeState.DRAINING) is False
    assert members.version == 0
    assert "ghost" not in members


def test_remove_returns_the_node_and_bumps_only_when_present() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1"), now=0.0)
    assert members.remove("orders-1") == node("orders-1")
    assert members.version == 2
    assert members.remove("orders-1") is None
    assert members.version == 2
    assert len(members) == 0


def test_a_lease_lives_exactly_ttl_seconds() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1"), now=100.0)
    assert members.expire(now=110.0) == []
    assert "orders-1" in members
    assert members.version == 1
    assert members.expire(now=110.001) == [node("orders-1")]
    assert "orders-1" not in members
    assert members.version == 2


def test_renewing_extends_the_lease() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1"), now=0.0)
    members.renew("orders-1", now=8.0)
    assert members.expire(now=15.0) == []
    assert [n.node_id for n in members.expire(now=18.5)] == ["orders-1"]


def test_a_hung_node_expires_while_the_others_stay() -> None:
    members = Membership(ttl=3)
    members.register(node("orders-1"), now=0.0)
    members.register(node("orders-2"), now=0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        members.renew("orders-1", now=now)  # orders-2 hangs: no heartbeats
    dropped = members.expire(now=4.5)
    assert [n.node_id for n in dropped] == ["orders-2"]
    snapshot = members.snapshot()
    assert [n.node_id for n in snapshot.nodes] == ["orders-1"]
    assert snapshot.version == 3


def test_expire_bumps_once_per_dropped_node() -> None:
    members = Membership(ttl=1)
    for i in range(3):
        members.register(node(f"orders-{i}"), now=0.0)
    assert len(members.expire(now=5.0)) == 3
    assert members.version == 6
    assert members.expire(now=10.0) == []
    assert members.version == 6


def test_re_register_replaces_the_node_and_restarts_its_lease() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1", address="127.0.0.1:5000"), now=0.0)
    members.register(node("orders-1", address="127.0.0.1:6000"), now=8.0)
    assert len(members) == 1
    assert members.version == 2
    assert members.snapshot().by_id["orders-1"].address == "127.0.0.1:6000"
    assert members.expire(now=15.0) == []


def test_re_register_after_expiry_brings_the_node_back() -> None:
    members = Membership(ttl=1)
    members.register(node("orders-1"), now=0.0)
    members.expire(now=5.0)
    assert members.renew("orders-1", now=5.0) is False
    members.register(node("orders-1"), now=5.0)
    assert "orders-1" in members
    assert members.snapshot().serving("orders") == (node("orders-1"),)


def test_services_are_remembered_after_their_last_node_leaves() -> None:
    members = Membership(ttl=10)
    members.register(node("orders-1"), now=0.0)
    members.register(node("pricing-1", "pricing"), now=0.0)
    members.remove("pricing-1")
    snapshot = members.snapshot()
    assert snapshot.services == frozenset({"orders", "pricing"})
    assert snapshot.serving("pricing") == ()
