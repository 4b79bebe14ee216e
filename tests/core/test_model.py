from __future__ import annotations

from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo, NodeState


def node(
    node_id: str,
    service: str = "orders",
    *,
    state: NodeState = NodeState.SERVING,
    methods: dict[str, MethodInfo] | None = None,
) -> NodeInfo:
    return NodeInfo(
        node_id, service, f"127.0.0.1:{5000 + len(node_id)}", state=state, methods=methods or {}
    )


def test_indexes_by_id_and_by_service_in_order() -> None:
    a, b, c = node("orders-1"), node("pricing-1", "pricing"), node("orders-2")
    snapshot = MeshSnapshot.of(7, [a, b, c])
    assert snapshot.version == 7
    assert snapshot.nodes == (a, b, c)
    assert snapshot.by_id == {"orders-1": a, "pricing-1": b, "orders-2": c}
    assert snapshot.by_service == {"orders": (a, c), "pricing": (b,)}


def test_serving_excludes_draining_nodes() -> None:
    a = node("orders-1")
    b = node("orders-2", state=NodeState.DRAINING)
    c = node("orders-3")
    snapshot = MeshSnapshot.of(1, [a, b, c])
    assert snapshot.serving("orders") == (a, c)
    assert snapshot.by_service["orders"] == (a, b, c)


def test_serving_is_empty_when_every_node_drains_or_the_service_is_unknown() -> None:
    snapshot = MeshSnapshot.of(1, [node("orders-1", state=NodeState.DRAINING)])
    assert snapshot.serving("orders") == ()
    assert snapshot.serving("nobody") == ()


def test_services_includes_the_nodes_services_and_past_ones() -> None:
    snapshot = MeshSnapshot.of(1, [node("orders-1"), node("pricing-1", "pricing")], ["audit"])
    assert snapshot.services == frozenset({"orders", "pricing", "audit"})


def test_method_looks_through_every_node_of_the_service() -> None:
    create = MethodInfo("create", idempotent=False)
    get = MethodInfo("get", idempotent=True)
    snapshot = MeshSnapshot.of(
        1,
        [
            node("orders-1", methods={"create": create}),
            node("orders-2", methods={"get": get}),
            node("pricing-1", "pricing", methods={"quote": MethodInfo("quote")}),
        ],
    )
    assert snapshot.method("orders", "create") is create
    assert snapshot.method("orders", "get") == MethodInfo("get", idempotent=True)
    assert snapshot.method("orders", "quote") is None
    assert snapshot.method("nobody", "create") is None


def test_with_state_changes_only_the_state() -> None:
    original = NodeInfo(
        "orders-1",
        "orders",
        "10.0.0.1:5000",
        pid=42,
        started_at=3.5,
        methods={"get": MethodInfo("get", True)},
        metadata={"zone": "a"},
    )
    draining = original.with_state(NodeState.DRAINING)
    assert draining.state is NodeState.DRAINING
    assert not draining.serving
    assert original.serving
    assert draining == NodeInfo(
        "orders-1",
        "orders",
        "10.0.0.1:5000",
        pid=42,
        started_at=3.5,
        state=NodeState.DRAINING,
        methods={"get": MethodInfo("get", True)},
        metadata={"zone": "a"},
    )


def test_empty_snapshot() -> None:
    snapshot = MeshSnapshot.of(0, ())
    assert snapshot.nodes == ()
    assert snapshot.services == frozenset()
    assert snapshot.by_id == {}
