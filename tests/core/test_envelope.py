from __future__ import annotations

import pytest

from wiremesh.core import envelope


def test_round_trips() -> None:
    assert envelope.parse_request(envelope.request(7, b"hi")) == (envelope.REQUEST, 7, b"hi")
    assert envelope.parse(envelope.reply(2**32 - 1, b"")) == (envelope.REPLY, 2**32 - 1, b"")
    assert envelope.parse(envelope.error(1, "nope")) == (envelope.ERROR, 1, b"nope")


def test_wire_bytes_are_the_contract() -> None:
    assert envelope.request(0x01020304, b"x") == b"R\x01\x02\x03\x04x"
    assert envelope.reply(5, b"ok") == b"A\x00\x00\x00\x05ok"
    assert envelope.error(5, "é") == b"E\x00\x00\x00\x05\xc3\xa9"


@pytest.mark.parametrize("message", [b"", b"R\x00\x00\x00", b"hello", b"X\x00\x00\x00\x01"])
def test_ordinary_messages_are_not_envelopes(message: bytes) -> None:
    assert envelope.parse(message) is None


def test_a_reply_is_not_a_request_and_ids_are_uint32() -> None:
    assert envelope.parse_request(envelope.reply(1, b"")) is None
    with pytest.raises(ValueError):
        envelope.request(2**32, b"")
    with pytest.raises(ValueError):
        envelope.reply(-1, b"")
