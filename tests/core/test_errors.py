from __future__ import annotations

import grpc
import pytest

from wiremesh import errors
from wiremesh.errors import (
    STATUS_TABLE,
    InternalError,
    InvalidPayload,
    NodeNotFound,
    NotFound,
    ServiceError,
    Status,
    Unavailable,
    WiremeshError,
    error_class_for,
    qualified_name,
    rebuild,
    status_for_grpc_name,
)

#: RFC 6455 7.4.1 codes an endpoint may send, plus the IANA-registered 1012-1014
SENDABLE_STANDARD_CLOSE_CODES = {
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
}


class OutOfStock(ServiceError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"no stock of {sku}")
        self.sku = sku


class Overbooked(ServiceError):
    status = Status.UNAVAILABLE


def test_every_status_has_a_table_row() -> None:
    assert set(STATUS_TABLE) == set(Status)


def test_every_status_has_an_error_class_with_that_status() -> None:
    for status in Status:
        assert error_class_for(None, status).status is status


@pytest.mark.parametrize("status", list(Status))
def test_ws_close_codes_are_valid(status: Status) -> None:
    code = STATUS_TABLE[status].ws_close_code
    assert 1000 <= code <= 4999
    assert 4000 <= code <= 4999 or code in SENDABLE_STANDARD_CLOSE_CODES


def test_private_ws_close_codes_are_distinct() -> None:
    codes = [info.ws_close_code for info in STATUS_TABLE.values() if info.ws_close_code >= 4000]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("status", list(Status))
def test_http_statuses_are_errors(status: Status) -> None:
    assert 400 <= STATUS_TABLE[status].http_status <= 599


def test_grpc_codes_map_back_to_their_status() -> None:
    for status, info in STATUS_TABLE.items():
        if status is Status.RATE_LIMITED:  # shares RESOURCE_EXHAUSTED with PAYLOAD_TOO_LARGE
            continue
        assert status_for_grpc_name(info.grpc_name) is status
    assert status_for_grpc_name("UNKNOWN") is Status.INTERNAL
    assert status_for_grpc_name("UNIMPLEMENTED") is Status.NOT_FOUND
    # every name is a real gRPC status code
    assert {info.grpc_name for info in STATUS_TABLE.values()} <= {c.name for c in grpc.StatusCode}


def test_every_public_error_is_a_wiremesh_error_with_a_known_status() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    for cls in classes:
        if isinstance(cls, type) and issubclass(cls, Exception):
            assert issubclass(cls, WiremeshError)
            assert cls.status in STATUS_TABLE


def test_rebuild_returns_the_exact_service_error_subclass() -> None:
    exc = rebuild(
        qualified_name(OutOfStock), Status.FAILED_PRECONDITION, "no stock of A", node="inv-1"
    )
    assert type(exc) is OutOfStock
    assert exc.remote_type is None
    assert exc.node == "inv-1"
    assert exc.message == "no stock of A"
    assert exc.args == ("no stock of A",)
    assert str(exc) == "no stock of A (node inv-1)"
    assert exc.type_name == qualified_name(OutOfStock)


def test_rebuild_keeps_a_subclass_with_its_own_status() -> None:
    exc = rebuild(qualified_name(Overbooked), Status.UNAVAILABLE, "full")
    assert type(exc) is Overbooked
    assert exc.status is Status.UNAVAILABLE


def test_rebuild_keeps_the_remote_type_of_an_unknown_service_error() -> None:
    exc = rebuild(
        "shop.errors.Sold",
        Status.FAILED_PRECONDITION,
        "sold out",
        node="shop-1",
        details={"sku": "A"},
    )
    assert type(exc) is ServiceError
    assert exc.remote_type == "shop.errors.Sold"
    assert exc.type_name == "shop.errors.Sold"
    assert exc.details == {"sku": "A"}
    assert str(exc) == "shop.errors.Sold: sold out (node shop-1)"


def test_rebuild_of_a_builtin_error_by_name() -> None:
    exc = rebuild("wiremesh.errors.NodeNotFound", Status.NOT_FOUND, "gone", node="n1")
    assert type(exc) is NodeNotFound
    assert exc.remote_type is None
    assert str(exc) == "gone (node n1)"


def test_rebuild_of_a_foreign_exception_falls_back_to_its_status() -> None:
    exc = rebuild("builtins.KeyError", Status.INTERNAL, "'sku'", node="inv-2")
    assert type(exc) is InternalError
    assert str(exc) == "builtins.KeyError: 'sku' (node inv-2)"


def test_error_class_for_fallbacks() -> None:
    assert error_class_for(qualified_name(OutOfStock), Status.INTERNAL) is OutOfStock
    assert error_class_for("wiremesh.Unavailable", Status.INTERNAL) is Unavailable
    assert error_class_for("nowhere.Missing", Status.NOT_FOUND) is NotFound
    assert error_class_for("", Status.INVALID_PAYLOAD) is InvalidPayload
    assert error_class_for(None, Status.FAILED_PRECONDITION) is ServiceError


def test_str_of_a_local_error() -> None:
    assert str(InvalidPayload("qty: bad")) == "qty: bad"
    assert str(Unavailable()) == "Unavailable"
    assert str(Unavailable(node="n1")) == "Unavailable (node n1)"


def test_str_hides_a_remote_type_that_matches_the_class() -> None:
    exc = Unavailable("down", remote_type="wiremesh.errors.Unavailable", node="n1")
    assert str(exc) == "down (node n1)"


def test_errors_carry_their_data() -> None:
    exc = InvalidPayload("bad", details={"field": "qty"})
    assert exc.status is Status.INVALID_PAYLOAD
    assert exc.details == {"field": "qty"}
    assert WiremeshError().details == {}
    assert exc.type_name == "wiremesh.errors.InvalidPayload"
