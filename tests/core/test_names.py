from __future__ import annotations

import pytest

from wiremesh.core.names import Target, method_path, parse_target
from wiremesh.errors import InvalidPayload, WiremeshError


def test_service_dot_method() -> None:
    target = parse_target("orders.create")
    assert target == Target("orders", "create", None)
    assert target.path == "/orders/create"
    assert str(target) == "orders.create"


def test_service_at_node_dot_method() -> None:
    target = parse_target("orders@orders-3f9a.create")
    assert target == Target("orders", "create", "orders-3f9a")
    assert target.path == "/orders/create"
    assert str(target) == "orders@orders-3f9a.create"


def test_node_argument_sets_the_node() -> None:
    assert parse_target("orders.create", node="orders-1").node == "orders-1"


def test_node_argument_overrides_the_node_in_the_text() -> None:
    target = parse_target("orders@orders-1.create", node="orders-2")
    assert target.node == "orders-2"
    assert str(target) == "orders@orders-2.create"


@pytest.mark.parametrize(
    "text",
    [
        "inventory_v2.get_stock",
        "a.B",
        "web-app._private",
        "orders@node_1:50051.create",
        "s" * 63 + ".m",
    ],
)
def test_accepted_forms(text: str) -> None:
    assert str(parse_target(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "orders",
        "orders.",
        ".create",
        "orders.create.extra",
        "Orders.create",
        "1orders.create",
        "-orders.create",
        "orders.1create",
        "orders.cre-ate",
        "orders@.create",
        "orders@a@b.create",
        "orders@node 1.create",
        "@node.create",
        " orders.create",
        "orders.create ",
        "orders/create",
        "/orders/create",
        "s" * 64 + ".m",
    ],
)
def test_malformed_targets_raise_invalid_payload_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_target(text)
    message = str(info.value)
    assert repr(text) in message
    assert "'service.method'" in message
    assert "'service@node-id.method'" in message


@pytest.mark.parametrize("text", ["orders.create\n", "orders@orders-1.create\n"])
def test_a_trailing_newline_is_malformed(text: str) -> None:
    with pytest.raises(InvalidPayload):
        parse_target(text)


def test_invalid_target_is_a_wiremesh_error() -> None:
    with pytest.raises(WiremeshError):
        parse_target("nope")


def test_method_path() -> None:
    assert method_path("orders", "create") == "/orders/create"
