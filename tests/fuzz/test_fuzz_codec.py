"""Payloads from any caller: msgpack and JSON bytes into plain values (core/codec.py), then
into the annotated types of a handler (core/shape.py).

The contract (docs/protocol.md §3): a body decodes to a plain value or fails with
``InvalidPayload``; a plain value validates into the handler's types or fails with
``InvalidPayload`` naming the fields. Nothing else escapes, nothing hangs, and no decoder
allocates in proportion to a length the input declares rather than to the input itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pydantic
import pydantic_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import json_values, msgpack_values, mutated, peak_bytes, same
from wiremesh.core.codec import decode, encode
from wiremesh.core.shape import MAX_LISTED_ERRORS, signature_shapes
from wiremesh.errors import InvalidPayload

FUZZ = settings.get_profile("wiremesh-fuzz")

#: what a decoded msgpack body may hold: plain values, and the ext types the format
#: defines (docs/protocol.md §3.1: they reach the handler as msgpack's own objects)
_PLAIN_LEAVES = (type(None), bool, int, float, str, bytes, msgpack.ExtType, msgpack.Timestamp)


def assert_plain(value: Any) -> None:
    """``value`` is made of plain values only (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            assert isinstance(item, _PLAIN_LEAVES), f"{type(item).__name__} in a decoded payload"


def decodes_or_refuses(data: bytes, codec: Any) -> Any:
    """The decoded value, or None after an ``InvalidPayload``; anything else fails."""
    try:
        value = decode(data, codec)
    except InvalidPayload as exc:
        assert isinstance(exc.message, str)
        assert exc.message.startswith("payload is not valid")
        return None
    assert_plain(value)
    return value


# ------------------------------------------------------------------ bytes to plain values


@FUZZ
@given(data=st.binary(max_size=512), codec=st.sampled_from(["msgpack", "json"]))
def test_any_bytes_decode_to_a_plain_value_or_invalid_payload(data: bytes, codec: Any) -> None:
    decodes_or_refuses(data, codec)


@FUZZ
@given(data=msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)).flatmap(mutated))
def test_mutated_msgpack_decodes_or_is_refused(data: bytes) -> None:
    decodes_or_refuses(data, "msgpack")


@FUZZ
@given(data=json_values.map(pydantic_core.to_json).flatmap(mutated))
def test_mutated_json_decodes_or_is_refused(data: bytes) -> None:
    decodes_or_refuses(data, "json")


@FUZZ
@given(value=msgpack_values)
def test_what_a_wiremesh_client_encodes_decodes_to_the_same_value(value: Any) -> None:
    assert same(decode(encode(value, "msgpack"), "msgpack"), value)


@FUZZ
@given(value=json_values)
def test_what_a_json_client_encodes_decodes_to_the_same_value(value: Any) -> None:
    assert same(decode(encode(value, "json"), "json"), value)


@FUZZ
@given(data=st.binary(max_size=64), codec=st.sampled_from(["raw", "proto"]))
def test_raw_and_proto_bodies_are_handed_over_as_they_are(data: bytes, codec: Any) -> None:
    assert decode(data, codec) == data


@FUZZ
@given(codec=st.text(max_size=20).filter(lambda c: c not in ("msgpack", "json", "raw", "proto")))
def test_an_unknown_codec_is_invalid_payload(codec: str) -> None:
    with pytest.raises(InvalidPayload, match="unknown codec"):
        decode(b"\xc0", codec)  # type: ignore[arg-type]


#: inputs that once made decoders misbehave elsewhere, each a few bytes long
ADVERSARIAL = {
    "a str declaring 4 GiB": b"\xdb\xff\xff\xff\xff" + b"abcde",
    "a bin declaring 4 GiB": b"\xc6\xff\xff\xff\xff" + b"abcde",
    "an ext declaring 4 GiB": b"\xc9\xff\xff\xff\xff\x05abcd",
    "an array declaring 4 G items": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 5,
    "a map declaring 4 G pairs": b"\xdf\xff\xff\xff\xff" + b"\xc0" * 5,
    "arrays nested 100,000 deep": b"\x91" * 100_000 + b"\xc0",
    "maps nested 100,000 deep": b"\x81\xc0" * 100_000 + b"\xc0",
    "a timestamp of the wrong size": b"\xc7\x05\xff" + b"\x00" * 5,
    "a str that is not UTF-8": b"\xa2\xff\xfe",
    "a surrogate encoded in UTF-8": b"\xa3\xed\xa0\x80",
    "an array as a map key": b"\x81\x91\x01\x02",
    "a map as a map key": b"\x81\x81\x01\x02\x03",
    "trailing bytes": b"\xc0\xc0",
    "a truncated float": b"\xcb\x7f\xf8",
}

JSON_ADVERSARIAL = {
    "arrays nested 100,000 deep": b"[" * 100_000,
    "objects nested 100,000 deep": b'{"a":' * 100_000,
    "a number of a million digits": b"1" * 1_000_000,
    "an exponent of eleven digits": b"1e99999999999",
    "a lone surrogate escape": b'"\\ud800"',
    "a string that is not UTF-8": b'"\xff\xfe"',
    "a string of a million escapes": b'"' + b"\\u0041" * 1_000_000 + b'"',
}


@pytest.mark.parametrize("data", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_msgpack_is_refused_or_decoded_in_memory_bounded_by_the_input(
    data: bytes,
) -> None:
    decodes_or_refuses(data, "msgpack")
    # a few KiB of bookkeeping plus what the input itself could hold, never 4 GiB
    assert peak_bytes(lambda: decode(data, "msgpack")) < 64 * 1024 + 64 * len(data)


@pytest.mark.parametrize("data", JSON_ADVERSARIAL.values(), ids=JSON_ADVERSARIAL.keys())
def test_adversarial_json_is_refused_or_decoded_in_memory_bounded_by_the_input(
    data: bytes,
) -> None:
    decodes_or_refuses(data, "json")
    assert peak_bytes(lambda: decode(data, "json")) < 64 * 1024 + 8 * len(data)


def test_msgpack_nested_too_deeply_says_so() -> None:
    with pytest.raises(InvalidPayload, match="nested too deeply"):
        decode(b"\x91" * 100_000 + b"\xc0")


def test_non_finite_numbers_decode_as_floats() -> None:
    nan = decode(b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00")
    assert isinstance(nan, float) and nan != nan
    assert decode(b"[NaN,Infinity,-Infinity]", "json")[1:] == [float("inf"), float("-inf")]


# ------------------------------------------------------------------ plain values to types


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Line(pydantic.BaseModel):
    sku: str
    qty: int = pydantic.Field(gt=0)


class Order(pydantic.BaseModel):
    id: uuid.UUID
    at: dt.datetime
    lines: list[Line]
    color: Color = Color.RED
    total: Decimal = Decimal(0)
    note: str | None = None


class Tree(pydantic.BaseModel):
    label: str = ""
    kids: list[Tree] = []


@dataclasses.dataclass
class Point:
    x: int
    y: float
    label: bytes = b""


async def takes_order(self: Any, ctx: Any, order: Order) -> None: ...
async def takes_tree(self: Any, ctx: Any, tree: Tree) -> None: ...
async def takes_point(self: Any, ctx: Any, point: Point) -> None: ...
async def takes_text(self: Any, ctx: Any, sku: str) -> None: ...
async def takes_bytes(self: Any, ctx: Any, blob: bytes) -> None: ...
async def takes_counts(self: Any, ctx: Any, counts: dict[str, int]) -> None: ...
async def takes_anything(self: Any, ctx: Any, value: Any) -> None: ...
async def takes_when(self: Any, ctx: Any, when: dt.date | None = None) -> None: ...
async def takes_several(
    self: Any, ctx: Any, a: int, b: list[Point], c: Color = Color.BLUE, d: float = 0.0
) -> None: ...
async def takes_nothing(self: Any, ctx: Any) -> None: ...


HANDLERS = [
    takes_order,
    takes_tree,
    takes_point,
    takes_text,
    takes_bytes,
    takes_counts,
    takes_anything,
    takes_when,
    takes_several,
    takes_nothing,
]
SHAPES = {handler.__name__: signature_shapes(handler, 2) for handler in HANDLERS}

#: plain values shaped like the handlers' parameters, so that validation goes deep
_near_order = st.fixed_dictionaries(
    {
        "id": st.one_of(st.uuids().map(str), st.text(max_size=8)),
        "at": st.one_of(
            st.datetimes().map(dt.datetime.isoformat), st.integers(-(2**63), 2**63), st.text()
        ),
        "lines": st.lists(
            st.fixed_dictionaries({"sku": msgpack_values, "qty": msgpack_values}), max_size=4
        ),
    },
    optional={"color": msgpack_values, "total": msgpack_values, "extra": msgpack_values},
)
_near_params = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e"]), msgpack_values, max_size=5
)
_payloads = st.one_of(msgpack_values, _near_order, _near_params)


def validates_or_refuses(name: str, payload: Any) -> None:
    try:
        SHAPES[name].arguments(payload)
    except InvalidPayload as exc:
        assert exc.message
        assert len(exc.details.get("errors", [])) <= MAX_LISTED_ERRORS


@FUZZ
@given(name=st.sampled_from(sorted(SHAPES)), payload=_payloads)
def test_any_plain_value_validates_or_is_invalid_payload(name: str, payload: Any) -> None:
    validates_or_refuses(name, payload)


@FUZZ
@given(
    name=st.sampled_from(sorted(SHAPES)),
    data=_payloads.map(lambda v: msgpack.packb(v, use_bin_type=True)).flatmap(mutated),
)
def test_mutated_bodies_validate_or_are_invalid_payload(name: str, data: bytes) -> None:
    try:
        payload = decode(data)
    except InvalidPayload:
        return
    validates_or_refuses(name, payload)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("depth", [100, 300, 510])
def test_deeply_nested_payloads_are_refused_not_a_recursion_error(name: str, depth: int) -> None:
    # the deepest msgpack decodes (1,024 containers), into every kind of parameter
    data = b"\x81\xa4kids\x91" * depth + b"\x80"
    validates_or_refuses(name, decode(data))
