"""Codecs: how a payload becomes bytes and back.

``msgpack`` (the default), ``json`` and ``raw`` (bytes as they are) carry plain values;
``proto`` carries a protobuf message's own encoding. Rich values (pydantic models,
dataclasses, datetimes, UUIDs, enums, decimals) are flattened to plain values on the way
out; typed validation on the way in is :mod:`wiremesh.core.shape`'s job.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import msgpack
import pydantic
import pydantic_core

from wiremesh.errors import InvalidPayload

__all__ = ["CODECS", "CodecName", "decode", "encode", "to_plain"]

CodecName = Literal["msgpack", "json", "raw", "proto"]
CODECS: tuple[CodecName, ...] = ("msgpack", "json", "raw", "proto")


def to_plain(value: Any) -> Any:
    """Flatten one value msgpack cannot encode by itself (used as msgpack's ``default``)."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="python", by_alias=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return pydantic_core.to_jsonable_python(value)


_packb = msgpack.Packer(default=to_plain, use_bin_type=True, autoreset=True).pack


def encode(value: Any, codec: CodecName = "msgpack") -> bytes:
    """Bytes for ``value`` in ``codec``. Raises :class:`InvalidPayload` when it cannot."""
    try:
        if codec == "msgpack":
            return _packb(value)
        if codec == "json":
            return pydantic_core.to_json(value)
        if codec == "raw":
            if isinstance(value, bytes | bytearray | memoryview):
                return bytes(value)
            if value is None:
                return b""
            raise InvalidPayload(f"the raw codec carries bytes, not {type(value).__name__}")
        if codec == "proto":
            serialize = getattr(value, "SerializeToString", None)
            if serialize is None:
                raise InvalidPayload(f"the proto codec needs a protobuf message, not {value!r}")
            data: bytes = serialize()
            return data
    except (TypeError, ValueError, OverflowError, pydantic_core.PydanticSerializationError) as exc:
        raise InvalidPayload(f"cannot encode {type(value).__name__} as {codec}: {exc}") from exc
    raise InvalidPayload(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")


def decode(data: bytes | memoryview, codec: CodecName = "msgpack") -> Any:
    """The plain value in ``data``. Raises :class:`InvalidPayload` when it does not decode.

    An empty body is ``None`` (a call with no payload) in ``msgpack`` and ``json``; the
    ``raw`` and ``proto`` codecs hand the bytes over as they are, empty or not (as bytes:
    ``data`` may be a view into a larger message, which msgpack reads without a copy).
    """
    if codec not in CODECS:
        raise InvalidPayload(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    if codec == "raw" or codec == "proto":
        return data if type(data) is bytes else bytes(data)
    if not data:
        return None
    try:
        if codec == "msgpack":
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        if codec == "json":
            return pydantic_core.from_json(data if isinstance(data, bytes) else bytes(data))
    except msgpack.StackError as exc:  # (its own message is empty)
        raise InvalidPayload(f"payload is not valid {codec}: nested too deeply") from exc
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
    ) as exc:
        raise InvalidPayload(f"payload is not valid {codec}: {exc}") from exc
    raise InvalidPayload(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
