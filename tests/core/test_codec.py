from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pydantic
import pytest

from wiremesh.core.codec import CODECS, decode, encode, to_plain
from wiremesh.errors import InvalidPayload
from wiremesh.proto.registry_pb2 import Method

PLAIN = {"sku": "A-1", "qty": 3, "price": 9.5, "tags": ["x", "y"], "gift": False, "note": None}


class Color(enum.Enum):
    RED = "red"


class Line(pydantic.BaseModel):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    id: uuid.UUID
    at: dt.datetime
    lines: list[Line]
    color: Color
    total: Decimal


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: bytes


ORDER_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
WHEN = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@pytest.mark.parametrize("value", [PLAIN, [1, "two", 3.0], "text", 42, -1.5, True, None])
def test_plain_values_round_trip(codec: Any, value: Any) -> None:
    assert decode(encode(value, codec), codec) == value


def test_msgpack_is_the_default() -> None:
    assert encode(PLAIN) == encode(PLAIN, "msgpack")
    assert msgpack.unpackb(encode(PLAIN)) == PLAIN
    assert decode(msgpack.packb(PLAIN)) == PLAIN


def test_bytes_stay_bytes_in_msgpack() -> None:
    value = {"blob": b"\x00\xff", "nested": [b"abc"]}
    assert decode(encode(value)) == value


def test_integer_map_keys_survive_msgpack() -> None:
    assert decode(encode({1: "a", 2: "b"})) == {1: "a", 2: "b"}


def test_json_is_utf8_json() -> None:
    assert encode({"name": "café"}, "json").decode("utf-8") == '{"name":"café"}'
    assert decode(b'{"a": [1, 2]}', "json") == {"a": [1, 2]}


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_rich_values_are_flattened(codec: Any) -> None:
    order = Order(
        id=ORDER_ID, at=WHEN, lines=[Line(sku="A", qty=2)], color=Color.RED, total=Decimal("9.90")
    )
    plain = decode(encode(order, codec), codec)
    assert plain == {
        "id": str(ORDER_ID),
        "at": "2024-05-01T12:30:00Z",
        "lines": [{"sku": "A", "qty": 2}],
        "color": "red",
        "total": "9.90",
    }
    assert Order.model_validate(plain) == order


def test_dataclasses_are_flattened_and_keep_bytes_in_msgpack() -> None:
    assert decode(encode(Point(1, 2, b"\x01"))) == {"x": 1, "y": 2, "label": b"\x01"}


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (ORDER_ID, str(ORDER_ID)),
        (Color.RED, "red"),
        (Decimal("1.10"), "1.10"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        ({"when": WHEN}, {"when": "2024-05-01T12:30:00Z"}),
    ],
)
def test_scalars_are_flattened_in_msgpack(value: Any, plain: Any) -> None:
    assert decode(encode(value)) == plain


def test_to_plain_flattens_models_and_dataclasses() -> None:
    assert to_plain(Line(sku="A", qty=1)) == {"sku": "A", "qty": 1}
    assert to_plain(Point(1, 2, b"")) == {"x": 1, "y": 2, "label": b""}


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_values_that_cannot_be_encoded_raise_invalid_payload(codec: Any) -> None:
    with pytest.raises(InvalidPayload, match=f"cannot encode list as {codec}"):
        encode([1, object()], codec)


def test_a_failed_msgpack_encode_does_not_leak_into_the_next_one() -> None:
    with pytest.raises(InvalidPayload):
        encode(["prefix", object()])
    assert encode(1) == b"\x01"


def test_an_integer_too_large_for_msgpack_raises_invalid_payload() -> None:
    with pytest.raises(InvalidPayload):
        encode(2**70)


def test_raw_carries_bytes_as_they_are() -> None:
    data = b"\x00\x01binary"
    assert encode(data, "raw") == data
    assert encode(bytearray(data), "raw") == data
    assert encode(memoryview(data), "raw") == data
    assert type(encode(bytearray(data), "raw")) is bytes
    assert decode(data, "raw") is data
    assert encode(None, "raw") == b""


def test_raw_refuses_anything_but_bytes() -> None:
    with pytest.raises(InvalidPayload, match="raw codec carries bytes, not str"):
        encode("text", "raw")


def test_proto_round_trip() -> None:
    message = Method(name="stock", idempotent=True)
    data = encode(message, "proto")
    assert data == message.SerializeToString()
    assert decode(data, "proto") == data
    assert Method.FromString(decode(data, "proto")) == message


def test_proto_refuses_a_non_message() -> None:
    with pytest.raises(InvalidPayload, match="needs a protobuf message"):
        encode({"name": "stock"}, "proto")


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_empty_body_decodes_to_none(codec: Any) -> None:
    assert decode(b"", codec) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of two with one element
        b"\x01\x02",  # extra data after the value
        b"\xa2\xff\xfe",  # a string that is not UTF-8
    ],
)
def test_invalid_msgpack_raises_invalid_payload(data: bytes) -> None:
    with pytest.raises(InvalidPayload, match="not valid msgpack"):
        decode(data)


@pytest.mark.parametrize("data", [b"\x81\x91\x01\x01", b"\x81\x80\x01"])
def test_msgpack_with_an_unhashable_map_key_raises_invalid_payload(data: bytes) -> None:
    with pytest.raises(InvalidPayload):
        decode(data)


@pytest.mark.parametrize("data", [b"{", b"{'a': 1}", b"nope", b"[1,]", b" "])
def test_invalid_json_raises_invalid_payload(data: bytes) -> None:
    with pytest.raises(InvalidPayload, match="not valid json"):
        decode(data, "json")


def test_unknown_codec_raises_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidPayload, match="unknown codec 'yaml'") as info:
        encode({"a": 1}, "yaml")  # type: ignore[arg-type]
    assert all(name in str(info.value) for name in CODECS)
    with pytest.raises(InvalidPayload, match="unknown codec 'yaml'"):
        decode(b"a: 1", "yaml")  # type: ignore[arg-type]


def test_unknown_codec_raises_even_for_an_empty_body() -> None:
    with pytest.raises(InvalidPayload, match="unknown codec"):
        decode(b"", "yaml")  # type: ignore[arg-type]
