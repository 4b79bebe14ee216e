from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import pydantic
import pytest

from wiremesh.core.shape import Shape, signature_shapes
from wiremesh.errors import InvalidPayload
from wiremesh.proto.registry_pb2 import Method


class Line(pydantic.BaseModel):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    customer: str
    items: list[Line]


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Handlers:
    async def none(self, ctx: object) -> None: ...

    async def model(self, ctx: object, order: Order) -> Order:
        raise NotImplementedError

    async def dataclass(self, ctx: object, point: Point) -> int:
        raise NotImplementedError

    async def plain(self, ctx: object, sku: str) -> int:
        raise NotImplementedError

    async def optional(self, ctx: object, limit: Optional[int]) -> list[int]:  # noqa: UP045
        raise NotImplementedError

    async def many(
        self, ctx: object, sku: str, qty: int = 1, tags: list[str] | None = None
    ) -> None:
        raise NotImplementedError

    async def proto(self, ctx: object, method: Method) -> Method:
        raise NotImplementedError

    async def untyped(self, ctx, value): ...  # type: ignore[no-untyped-def]


def shapes(name: str) -> Any:
    return signature_shapes(getattr(Handlers, name), skip=2)


def test_no_parameters_take_nothing() -> None:
    sig = shapes("none")
    assert sig.arguments(None) == ((), {})
    assert sig.arguments({"ignored": 1}) == ((), {})
    assert sig.param_types == {}
    assert sig.returns is None


def test_one_pydantic_parameter_is_validated_into_the_model() -> None:
    sig = shapes("model")
    args, kwargs = sig.arguments({"customer": "ann", "items": [{"sku": "A", "qty": "2"}]})
    assert kwargs == {}
    assert args == (Order(customer="ann", items=[Line(sku="A", qty=2)]),)
    assert sig.returns is Order
    assert sig.param_types == {"order": Order}


def test_one_dataclass_parameter() -> None:
    (point,), _ = shapes("dataclass").arguments({"x": 1, "y": "2"})
    assert point == Point(1, 2)


def test_one_plain_parameter_fast_path_returns_the_same_object() -> None:
    value = "".join(["sku-", "1"])
    (got,), _ = shapes("plain").arguments(value)
    assert got is value


@pytest.mark.parametrize("tp", [bytes, str, int, float, bool])
def test_plain_types_of_the_right_type_are_not_copied(tp: type) -> None:
    value = tp()
    assert Shape(tp).validate(value) is value


def test_plain_parameter_of_the_wrong_type_is_validated() -> None:
    assert Shape(float).validate(3) == 3.0
    assert type(Shape(float).validate(3)) is float
    with pytest.raises(InvalidPayload, match="payload: "):
        Shape(int).validate("three")


def test_optional_and_list_types() -> None:
    sig = shapes("optional")
    assert sig.arguments(None) == ((None,), {})
    assert sig.arguments("5") == ((5,), {})
    assert Shape(list[int]).validate(["1", 2]) == [1, 2]
    with pytest.raises(InvalidPayload, match="1: "):
        Shape(list[int]).validate([1, "x"])


def test_untyped_parameters_are_passed_through() -> None:
    sig = shapes("untyped")
    marker = object()
    assert sig.arguments(marker) == ((marker,), {})
    assert sig.returns is Any


def test_several_parameters_take_a_mapping_and_fill_defaults() -> None:
    sig = shapes("many")
    assert sig.arguments({"sku": "A"}) == ((), {"sku": "A", "qty": 1, "tags": None})
    assert sig.arguments({"sku": "A", "qty": "4", "tags": ["x"]}) == (
        (),
        {"sku": "A", "qty": 4, "tags": ["x"]},
    )
    assert sig.param_types == {"sku": str, "qty": int, "tags": list[str] | None}


def test_several_parameters_refuse_a_non_mapping_and_name_them() -> None:
    with pytest.raises(InvalidPayload, match="mapping of sku, qty, tags, not list"):
        shapes("many").arguments(["A", 1])


def test_a_missing_required_parameter_is_named() -> None:
    with pytest.raises(InvalidPayload, match=r"^sku: Field required$"):
        shapes("many").arguments({"qty": 2})


def test_the_error_names_the_failing_field() -> None:
    with pytest.raises(InvalidPayload, match=r"^qty: .*valid integer"):
        shapes("many").arguments({"sku": "A", "qty": "lots"})


def test_the_error_names_a_nested_field() -> None:
    payload = {"customer": "ann", "items": [{"sku": "A", "qty": "x"}]}
    with pytest.raises(InvalidPayload, match=r"^items\.0\.qty: .*valid integer"):
        shapes("model").arguments(payload)


def test_the_error_lists_every_failing_field() -> None:
    with pytest.raises(InvalidPayload) as info:
        shapes("model").arguments({"items": [{"sku": 1, "qty": 1}]})
    message = str(info.value)
    assert "customer: Field required" in message
    assert "items.0.sku: " in message
    assert "; " in message


def test_a_named_shape_prefixes_the_field() -> None:
    with pytest.raises(InvalidPayload, match=r"^result\.items\.0\.qty: "):
        Shape(Order, "result").validate({"customer": "a", "items": [{"sku": "A", "qty": None}]})
    with pytest.raises(InvalidPayload, match=r"^result: "):
        Shape(int, "result").validate("x")


def test_a_protobuf_parameter_parses_bytes() -> None:
    sig = shapes("proto")
    assert sig.takes_protobuf
    assert sig.returns_protobuf
    message = Method(name="stock", idempotent=True)
    (got,), _ = sig.arguments(message.SerializeToString())
    assert got == message
    assert Shape(Method).validate(message) is message


def test_a_protobuf_parameter_refuses_bad_bytes() -> None:
    with pytest.raises(InvalidPayload, match="not a valid Method"):
        Shape(Method).validate(b"\xff\xff\xff")


def test_non_protobuf_signatures_are_not_flagged() -> None:
    sig = shapes("model")
    assert not sig.takes_protobuf
    assert not sig.returns_protobuf


def test_variadic_and_positional_only_parameters_are_rejected() -> None:
    async def star(self: object, ctx: object, *items: int) -> None: ...

    async def double_star(self: object, ctx: object, **options: int) -> None: ...

    async def positional(self: object, ctx: object, value: int, /) -> None: ...

    cases: list[tuple[Callable[..., Any], str]] = [
        (star, "items"),
        (double_star, "options"),
        (positional, "value"),
    ]
    for func, name in cases:
        with pytest.raises(TypeError, match=f"{name!r} must be a plain one"):
            signature_shapes(func, skip=2)


def test_an_unresolvable_annotation_is_a_type_error() -> None:
    async def broken(self: object, ctx: object, req: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="cannot read the annotations of"):
        signature_shapes(broken, skip=2)


class Defaults:
    async def limit(self, ctx: object, limit: int = 10) -> int:
        raise NotImplementedError

    async def page(self, ctx: object, limit: int = 10, offset: int = 0) -> int:
        raise NotImplementedError


def test_no_payload_gives_a_single_parameter_its_default() -> None:
    sig = signature_shapes(Defaults.limit, skip=2)
    assert sig.arguments(None) == ((10,), {})
    assert sig.arguments(3) == ((3,), {})


def test_no_payload_gives_several_parameters_their_defaults() -> None:
    sig = signature_shapes(Defaults.page, skip=2)
    assert sig.arguments(None) == ((), {"limit": 10, "offset": 0})


def test_no_payload_reports_each_required_parameter() -> None:
    with pytest.raises(InvalidPayload, match=r"^sku: Field required$"):
        shapes("many").arguments(None)


def test_an_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(InvalidPayload, match=r"qyt: Extra inputs are not permitted"):
        shapes("many").arguments({"sku": "A", "qyt": 5})


def test_an_object_naming_the_one_parameter_says_to_send_the_value_itself() -> None:
    plain = signature_shapes(Handlers.plain, skip=2)
    with pytest.raises(InvalidPayload) as caught:
        plain.arguments({"sku": "A-1"})
    assert caught.value.message.startswith("payload: Input should be a valid string")
    assert "takes one parameter, sku: send its value itself" in caught.value.message
    assert caught.value.details["errors"][0]["field"] == "payload"
    assert plain.arguments("A-1") == (("A-1",), {})


def test_an_object_that_does_not_name_the_parameter_gets_no_hint() -> None:
    with pytest.raises(InvalidPayload) as caught:
        signature_shapes(Handlers.plain, skip=2).arguments({"code": "A-1"})
    assert "takes one parameter" not in caught.value.message
    with pytest.raises(InvalidPayload) as caught:
        Shape(int).validate({"x": 1})  # a shape of no name: nothing to name
    assert "takes one parameter" not in caught.value.message
