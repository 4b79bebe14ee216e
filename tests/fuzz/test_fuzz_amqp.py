"""AMQP messages a foreign publisher sends (messaging/amqp/topology.py; docs/protocol.md
§16, *Message properties* and *Headers*).

Any program with an AMQP client may publish to a mesh's exchanges and set any header, of
any AMQP type (pamqp decodes the wire; wiremesh reads what it decoded). Every message must
become an :class:`Envelope` (``wm-attempt`` an integer of at least 1, headers as text), a
dead letter must be described, and the copy wiremesh publishes to retry or dead-letter a
message must still be one AMQP can carry. The AMQP frames themselves are pamqp's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pamqp.decode
import pamqp.encode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import mutated
from wiremesh.messaging.amqp import topology as topo

FUZZ = settings.get_profile("wiremesh-fuzz")

#: a value of each type an AMQP field table carries (as pamqp decodes it)
_field_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(width=32, allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20).map(bytearray),
        st.decimals(places=2, min_value=-(10**6), max_value=10**6, allow_nan=False),
        st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=0)
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)
_attempts = st.one_of(
    st.integers(-(2**63), 2**63 - 2),
    st.integers(-(10**17), 10**17).map(str),
    st.sampled_from(["", "1.5", " 2", "+3", "٣", "1e3", "9" * 5000]),
    _field_values,
)
_deaths = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "reason": _field_values,
            "queue": _field_values,
            "time": _field_values,
            "count": _field_values,
        },
    ),
    max_size=2,
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        topo.ATTEMPT_HEADER: _attempts,
        topo.TOPIC_HEADER: _field_values,
        topo.DEAD_REASON_HEADER: _field_values,
        topo.DEAD_QUEUE_HEADER: _field_values,
        topo.DEAD_AMQP_QUEUE_HEADER: _field_values,
        topo.DIED_AT_HEADER: st.one_of(_field_values, st.just("1e999"), st.just("nan")),
        "x-death": st.one_of(_deaths, _field_values),
        "traceparent": _field_values,
    },
).flatmap(
    lambda own: st.dictionaries(st.text(min_size=1, max_size=10), _field_values, max_size=3).map(
        lambda other: {**other, **own}
    )
)


def encodable(headers: dict[str, Any]) -> bool:
    try:
        pamqp.encode.field_table(headers)
    except (TypeError, ValueError):
        return False
    return True


def received(headers: dict[str, Any], mutate: Any = None) -> dict[str, Any] | None:
    """``headers`` as a consumer sees them: encoded on the wire, then decoded by pamqp."""
    data = pamqp.encode.field_table(headers)
    if mutate is not None:
        data = mutate(data)
    try:
        return pamqp.decode.field_table(data)[1]
    except Exception:  # pamqp refused the frame: the message never reaches wiremesh
        return None


_properties = st.fixed_dictionaries(
    {
        "message_id": st.one_of(st.none(), st.text(max_size=40)),
        "message_type": st.one_of(st.none(), st.sampled_from(["event", "command", "x", ""])),
        "content_type": st.one_of(
            st.none(),
            st.sampled_from(
                ["application/json; charset=utf-8", "APPLICATION/MSGPACK", "text/plain", ";"]
            ),
            st.text(max_size=30),
        ),
        "routing_key": st.one_of(st.none(), st.text(max_size=30)),
        "default_kind": st.sampled_from(["event", "command"]),
    }
)


def check(headers: dict[str, Any] | None, properties: dict[str, Any]) -> None:
    """What wiremesh makes of a message with ``headers``: an envelope, a dead letter, and
    the headers of the copies it would publish, all AMQP can carry."""
    envelope = topo.envelope_from(body=b"\xc0", headers=headers, **properties)
    assert isinstance(envelope.attempt, int) and envelope.attempt >= 1
    assert all(isinstance(v, str) for v in envelope.headers.values())
    assert isinstance(envelope.topic, str) and isinstance(envelope.codec, str)
    letter = topo.dead_letter_from(topo.Topology("shop"), envelope, headers)
    assert isinstance(letter.reason, str) and isinstance(letter.queue, str)
    assert isinstance(letter.died_at, float)
    queue = topo.amqp_queue_of_dead(headers)
    assert queue is None or isinstance(queue, str)
    if envelope.attempt < 2**63 - 1:  # (past it the consumer dead-letters it: no retry)
        retry = topo.headers_for(replace(envelope, attempt=envelope.attempt + 1))
        assert encodable(retry), "the retry's copy cannot be published"
    assert encodable(topo.headers_for(envelope)), "the dead letter's copy cannot be published"


@FUZZ
@given(headers=_headers.filter(encodable), properties=_properties)
def test_any_message_a_publisher_sends_becomes_an_envelope(
    headers: dict[str, Any], properties: dict[str, Any]
) -> None:
    check(received(headers), properties)


@FUZZ
@given(
    headers=_headers.filter(encodable),
    data=st.data(),
    properties=_properties,
)
def test_any_header_table_pamqp_decodes_becomes_an_envelope(
    headers: dict[str, Any], data: st.DataObject, properties: dict[str, Any]
) -> None:
    table = received(headers, lambda wire: data.draw(mutated(wire)))
    if table is not None:
        check(table, properties)


@pytest.mark.parametrize("value", [Decimal("1E+1000000"), float("inf"), float("nan")])
def test_attempts_that_are_no_whole_number_count_as_the_first(value: Any) -> None:
    envelope = topo.envelope_from(
        body=b"",
        headers={topo.ATTEMPT_HEADER: value},
        message_id=None,
        message_type=None,
        content_type=None,
        routing_key="orders.created",
        default_kind="event",
    )
    assert envelope.attempt == 1


def test_an_attempt_past_64_bits_still_leaves_a_dead_letter_amqp_can_carry() -> None:
    check(
        {topo.ATTEMPT_HEADER: "99999999999999999999"},
        {
            "message_id": "1",
            "message_type": "event",
            "content_type": None,
            "routing_key": "orders.created",
            "default_kind": "event",
        },
    )
