"""The optional request/reply envelope inside binary browser messages (no I/O).

A browser's ``request()`` sends ``R`` + a 4-byte big-endian correlation id + the payload;
the node answers ``A`` + the same id + the reply, or ``E`` + the id + a UTF-8 message.
Messages that start with none of these bytes are ordinary messages::

    >>> parse_request(request(7, b"hi"))
    Envelope(kind=82, id=7, payload=b'hi')
    >>> reply(7, b"ok")
    b'A\\x00\\x00\\x00\\x07ok'
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ERROR",
    "REPLY",
    "REQUEST",
    "Envelope",
    "error",
    "parse",
    "parse_request",
    "reply",
    "request",
]

REQUEST = 0x52  # "R"
REPLY = 0x41  # "A"
ERROR = 0x45  # "E"
_KINDS = (REQUEST, REPLY, ERROR)
_MAX_ID = 2**32 - 1


class Envelope(NamedTuple):
    kind: int
    id: int
    payload: bytes


def _wrap(kind: int, correlation: int, payload: bytes) -> bytes:
    if not 0 <= correlation <= _MAX_ID:
        raise ValueError(f"a correlation id is a uint32, not {correlation}")
    return bytes((kind,)) + correlation.to_bytes(4, "big") + payload


def request(correlation: int, payload: bytes) -> bytes:
    return _wrap(REQUEST, correlation, payload)


def reply(correlation: int, payload: bytes) -> bytes:
    return _wrap(REPLY, correlation, payload)


def error(correlation: int, message: str) -> bytes:
    return _wrap(ERROR, correlation, message.encode("utf-8", "replace"))


def parse(message: bytes) -> Envelope | None:
    """The envelope ``message`` carries, or None for an ordinary message."""
    if len(message) < 5 or message[0] not in _KINDS:
        return None
    return Envelope(message[0], int.from_bytes(message[1:5], "big"), bytes(message[5:]))


def parse_request(message: bytes) -> Envelope | None:
    """The request ``message`` carries, or None when it is not a request."""
    found = parse(message)
    return found if found is not None and found.kind == REQUEST else None
