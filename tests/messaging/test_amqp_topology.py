"""The AMQP topology's names, arguments and message mapping, without a broker."""

from __future__ import annotations

import datetime

import pytest

from wiremesh.messaging.amqp import topology as topo
from wiremesh.messaging.base import Binding, Envelope

T = topo.Topology("demo")


def binding(delivery: str = "pool", kind: str = "event") -> Binding:
    patterns = ("billing.charge",) if kind == "command" else ("orders.*",)
    return Binding("billing", "on_order", kind, patterns, delivery, "billing-1a2b", 8)  # type: ignore[arg-type]


def test_names_of_a_mesh() -> None:
    assert (T.events, T.commands, T.dead, T.delay) == (
        "wm.demo.events",
        "wm.demo.commands",
        "wm.demo.dead",
        "wm.demo.delay",
    )
    assert T.queue(binding("pool")) == "wm.demo.event.billing.on_order"
    assert T.queue(binding("singleton")) == "wm.demo.event.billing.on_order"
    assert T.queue(binding("broadcast")) == "wm.demo.event.billing.on_order@billing-1a2b"
    assert T.queue(binding(kind="command")) == "wm.demo.command.billing.charge"
    assert T.delay_queue(800) == "wm.demo.delay.800"


def test_display_names_match_the_bindings() -> None:
    for b in (binding("pool"), binding("broadcast")):
        assert T.display_name(T.queue(b)) == b.queue
    assert T.display_name("wm.demo.command.billing.charge") == "billing/charge"
    assert T.display_name("someone.else") == "someone.else"


def test_queue_arguments() -> None:
    assert topo.queue_arguments(T, binding("pool"), quorum=False) == {
        "x-dead-letter-exchange": "wm.demo.dead"
    }
    assert topo.queue_arguments(T, binding("singleton"), quorum=True) == {
        "x-dead-letter-exchange": "wm.demo.dead",
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
    }
    # an exclusive queue cannot be a quorum queue
    assert "x-queue-type" not in topo.queue_arguments(T, binding("broadcast"), quorum=True)
    assert topo.queue_arguments(T, None, quorum=True)["x-queue-type"] == "quorum"
    assert topo.delay_queue_arguments(800, quorum=False) == {
        "x-message-ttl": 800,
        "x-dead-letter-exchange": "",
    }


@pytest.mark.parametrize(
    ("delay", "bucket"),
    [
        (0.0, 50),
        (-1.0, 50),
        (0.05, 50),
        (0.5, 500),
        (1.0, 1000),
        (1.1, 1189),
        (2.0, 2000),
        (60.0, 64000),
    ],
)
def test_delay_buckets(delay: float, bucket: int) -> None:
    assert topo.delay_bucket(delay) == bucket


def test_delay_buckets_stay_close_to_the_delay() -> None:
    for ms in range(60, 600_000, 997):
        bucket = topo.delay_bucket(ms / 1000)
        assert abs(bucket - ms) / ms < 0.1, (ms, bucket)
    assert topo.delay_bucket(10**9) == topo.delay_bucket(10**10)  # capped


@pytest.mark.parametrize(
    ("content_type", "codec"),
    [
        (None, "msgpack"),
        ("", "msgpack"),
        ("application/msgpack", "msgpack"),
        ("application/x-msgpack", "msgpack"),
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("Application/JSON", "json"),
        ("application/octet-stream", "raw"),
        ("application/x-protobuf", "proto"),
        ("text/plain", "text/plain"),  # unknown: the consumer dead-letters it as undecodable
    ],
)
def test_codec_for_content_type(content_type: str | None, codec: str) -> None:
    assert topo.codec_for(content_type) == codec


def test_envelope_round_trip_through_headers() -> None:
    envelope = Envelope(
        "ab" * 16, "event", "orders.created", b"\x80", "msgpack", {"traceparent": "00-x"}, 3
    )
    headers = topo.headers_for(envelope)
    assert headers == {"traceparent": "00-x", "wm-attempt": 3, "wm-topic": "orders.created"}
    back = topo.envelope_from(
        body=envelope.body,
        headers=headers,
        message_id=envelope.id,
        message_type="event",
        content_type="application/msgpack",
        routing_key="wm.demo.event.billing.on_order",  # a retry comes back by queue name
        default_kind="command",
    )
    assert back == envelope


def test_envelope_from_a_foreign_message() -> None:
    envelope = topo.envelope_from(
        body=b"{}",
        headers={"x-death": [{}], "app": b"shop", "n": 5},
        message_id=None,
        message_type=None,
        content_type="application/json",
        routing_key="orders.created",
        default_kind="event",
    )
    assert envelope.kind == "event"
    assert envelope.topic == "orders.created"
    assert envelope.codec == "json"
    assert envelope.attempt == 1
    assert len(envelope.id) == 32
    assert envelope.headers == {"app": "shop", "n": "5"}


@pytest.mark.parametrize(("value", "attempt"), [(2, 2), ("4", 4), (b"5", 5), ("x", 1), (0, 1)])
def test_attempt_header_is_read_leniently(value: object, attempt: int) -> None:
    envelope = topo.envelope_from(
        body=b"",
        headers={"wm-attempt": value},
        message_id="m",
        message_type="command",
        content_type=None,
        routing_key="billing.charge",
        default_kind="event",
    )
    assert envelope.attempt == attempt
    assert envelope.kind == "command"


def test_dead_letter_from_wiremesh_headers() -> None:
    envelope = Envelope("m", "event", "orders.created", b"", "msgpack")
    letter = topo.dead_letter_from(
        T,
        envelope,
        {
            "wm-dead-reason": "bad field 'sku'",
            "wm-dead-queue": "billing/on_order",
            "wm-died-at": "12.5",
        },
    )
    assert (letter.reason, letter.queue, letter.died_at) == (
        "bad field 'sku'",
        "billing/on_order",
        12.5,
    )


def test_dead_letter_from_the_brokers_own_dead_lettering() -> None:
    death = {
        "reason": "rejected",
        "queue": "wm.demo.event.billing.on_order",
        "time": datetime.datetime.fromtimestamp(100, datetime.UTC),
    }
    headers = {"x-death": [death]}
    letter = topo.dead_letter_from(T, Envelope("m", "event", "t", b"", "msgpack"), headers)
    assert letter.reason == "dead-lettered by the broker: rejected"
    assert letter.queue == "billing/on_order"
    assert letter.died_at == 100.0
    assert topo.amqp_queue_of_dead(headers) == "wm.demo.event.billing.on_order"
    assert topo.amqp_queue_of_dead({"wm-dead-amqp-queue": "q"}) == "q"
    assert topo.amqp_queue_of_dead({}) is None
