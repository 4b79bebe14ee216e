"""``wiremesh.core.socket_session``: a browser session's rules, events in and actions out,
with no socket and no event loop."""

from __future__ import annotations

import doctest
import json
from typing import Any

import pytest

from wiremesh.core import socket_session
from wiremesh.core.bucket import TokenBucket
from wiremesh.core.socket_session import (
    ACCEPT,
    CHANNEL_COMMANDS,
    IDLE,
    INVALID_TOKEN,
    NO_PONG,
    NO_TOKEN,
    OTHER_PRINCIPAL,
    PING,
    RATE,
    REFRESH_FORBIDDEN,
    SLOW_CONSUMER,
    TEXT_REFUSED,
    TOKEN_EXPIRED,
    TOO_BIG,
    UNKNOWN_CONTROL,
    ChannelCommand,
    Close,
    Expiring,
    Refresh,
    SessionLimits,
    SessionRules,
)
from wiremesh.gateway.codes import CloseCode

LIMITS = SessionLimits(
    max_queued=3,
    max_queued_bytes=100,
    idle_timeout=60.0,
    refresh_before=30.0,
    ping_interval=20.0,
    ping_timeout=10.0,
)


def rules_of(
    *,
    limits: SessionLimits = LIMITS,
    rate: float = 1000.0,
    burst: float = 1000.0,
    max_bytes: int = 10,
    text: bool = False,
    expires_at: float = 10_000.0,
) -> SessionRules:
    """A session of ada's, opened at 0.0 (monotonic), its token valid until
    ``expires_at`` (wall)."""
    return SessionRules(
        limits,
        principal="ada",
        expires_at=expires_at,
        max_bytes=max_bytes,
        text=text,
        bucket=TokenBucket(rate, burst, now=0.0),
        now=0.0,
    )


def refresh(token: Any = "t") -> str:
    return json.dumps({"wm": "refresh", "token": token})


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(socket_session).failed == 0


@pytest.mark.parametrize(
    ("close", "code"),
    [
        (RATE, CloseCode.RATE_LIMITED),
        (TOO_BIG, CloseCode.MESSAGE_TOO_BIG),
        (TEXT_REFUSED, CloseCode.UNSUPPORTED_DATA),
        (UNKNOWN_CONTROL, CloseCode.UNSUPPORTED_DATA),
        (NO_TOKEN, CloseCode.TOKEN_EXPIRED),
        (INVALID_TOKEN, CloseCode.TOKEN_EXPIRED),
        (OTHER_PRINCIPAL, CloseCode.TOKEN_EXPIRED),
        (REFRESH_FORBIDDEN, CloseCode.REFUSED),
        (TOKEN_EXPIRED, CloseCode.TOKEN_EXPIRED),
        (IDLE, CloseCode.IDLE_TIMEOUT),
        (SLOW_CONSUMER, CloseCode.SLOW_CONSUMER),
        (NO_PONG, CloseCode.INTERNAL_ERROR),
    ],
    ids=lambda value: value.reason if isinstance(value, Close) else str(int(value)),
)
def test_each_close_carries_the_code_the_gateway_documents(close: Close, code: CloseCode) -> None:
    assert close.code == code
    assert close.reason and len(close.reason.encode()) <= 123  # fits a close frame


# ------------------------------------------------------------------ binary messages


def test_a_binary_message_within_the_limits_is_accepted_and_seen() -> None:
    rules = rules_of()
    assert rules.received(5, now=7.0) is ACCEPT
    assert rules.last_seen == 7.0


def test_a_message_of_exactly_max_bytes_fits_and_one_byte_more_closes_1009() -> None:
    rules = rules_of(max_bytes=10)
    assert rules.received(10, now=0.0) is ACCEPT
    assert rules.received(11, now=0.0) is TOO_BIG


def test_an_empty_message_is_accepted() -> None:
    assert rules_of().received(0, now=0.0) is ACCEPT


def test_messages_past_the_burst_close_4029_and_the_rate_refills() -> None:
    rules = rules_of(rate=2.0, burst=3.0)
    assert [rules.received(1, now=0.0) for _ in range(3)] == [ACCEPT] * 3
    assert rules.received(1, now=0.0) is RATE
    fresh = rules_of(rate=2.0, burst=3.0)
    for _ in range(3):
        fresh.received(1, now=0.0)
    assert fresh.received(1, now=0.5) is ACCEPT  # half a second: one token back


def test_the_rate_is_judged_before_the_size() -> None:
    rules = rules_of(rate=1.0, burst=1.0)
    assert rules.received(1, now=0.0) is ACCEPT
    assert rules.received(1000, now=0.0) is RATE


def test_an_oversized_message_still_spends_its_token() -> None:
    rules = rules_of(rate=1.0, burst=2.0)
    assert rules.received(11, now=0.0) is TOO_BIG
    assert rules.received(1, now=0.0) is ACCEPT
    assert rules.received(1, now=0.0) is RATE


def test_a_refused_message_is_still_seen() -> None:
    rules = rules_of(rate=1.0, burst=1.0)
    rules.received(1, now=0.0)
    assert rules.received(1, now=3.0) is ACCEPT
    assert rules.received(1, now=3.0) is RATE
    assert rules.last_seen == 3.0


def test_accepting_allocates_nothing_new() -> None:
    rules = rules_of()
    verdicts = {id(rules.received(1, now=float(i))) for i in range(100)}
    assert verdicts == {id(ACCEPT)}
    assert {id(rules_of(max_bytes=0).received(1, now=0.0)) for _ in range(3)} == {id(TOO_BIG)}


# ------------------------------------------------------------------ text messages


def test_text_to_a_service_that_takes_none_closes_1003() -> None:
    assert rules_of(text=False).received_text("hello", 5, now=0.0) is TEXT_REFUSED


def test_text_to_a_service_that_takes_text_is_accepted_within_the_size() -> None:
    rules = rules_of(text=True, max_bytes=10)
    assert rules.received_text("0123456789", 10, now=0.0) is ACCEPT
    assert rules.received_text("é" * 6, 12, now=0.0) is TOO_BIG  # bytes count, not characters


def test_the_rate_is_judged_before_a_text_message_is_read() -> None:
    rules = rules_of(rate=1.0, burst=1.0)
    rules.received(1, now=0.0)
    assert rules.received_text(refresh(), 20, now=0.0) is RATE
    assert rules.received_text("hello", 5, now=0.0) is RATE


def test_a_refresh_is_handed_out_whatever_the_size_limit() -> None:
    rules = rules_of(max_bytes=1)
    message = refresh("a.b.c")
    assert rules.received_text(message, len(message), now=2.0) == Refresh("a.b.c")
    assert rules.last_seen == 2.0


@pytest.mark.parametrize("token", [None, "", 42, ["a"]], ids=repr)
def test_a_refresh_without_a_token_closes_4001(token: Any) -> None:
    message = json.dumps({"wm": "refresh"}) if token is None else refresh(token)
    assert rules_of().received_text(message, len(message), now=0.0) is NO_TOKEN


@pytest.mark.parametrize("text", [True, False])
def test_an_unknown_control_message_closes_1003_even_where_text_is_taken(text: bool) -> None:
    message = json.dumps({"wm": "launch", "token": "t"})
    assert rules_of(text=text).received_text(message, 40, now=0.0) is UNKNOWN_CONTROL


@pytest.mark.parametrize("wm", [{"a": 1}, ["subscribe"], 3, None])
def test_a_control_message_whose_wm_is_not_text_closes_1003(wm: object) -> None:
    message = json.dumps({"wm": wm})
    assert rules_of().received_text(message, len(message), now=0.0) is UNKNOWN_CONTROL


@pytest.mark.parametrize("kind", sorted(CHANNEL_COMMANDS))
def test_a_channel_command_goes_to_the_gateways_channels(kind: str) -> None:
    message = json.dumps({"wm": kind, "channel": "room:1"})
    verdict = rules_of(text=False).received_text(message, len(message), now=0.0)
    assert verdict == ChannelCommand({"wm": kind, "channel": "room:1"})


@pytest.mark.parametrize(
    "message",
    ['{"no": "wm"}', "[1, 2]", "{not json", '{"wm": ' + "[" * 60_000],
    ids=["an object without wm", "an array", "not JSON", "nested too deeply"],
)
def test_text_that_is_no_control_message_is_ordinary_text(message: str) -> None:
    size = len(message.encode())
    assert rules_of(text=False).received_text(message, size, now=0.0) is TEXT_REFUSED
    assert rules_of(text=True, max_bytes=size).received_text(message, size, now=0.0) is ACCEPT


# ------------------------------------------------------------------ token refresh


def test_a_refresh_for_the_same_principal_moves_the_expiry_and_warns_again() -> None:
    rules = rules_of(expires_at=100.0)
    assert isinstance(rules.due(now=0.0, wall=80.0), Expiring)
    assert rules.due(now=0.0, wall=81.0) is ACCEPT  # warned once
    assert rules.token_refreshed("ada", 200.0, allowed=True) is ACCEPT
    assert rules.expires_at == 200.0
    assert rules.due(now=0.0, wall=150.0) is ACCEPT
    assert rules.due(now=0.0, wall=170.0) == Expiring(200.0)
    assert rules.due(now=0.0, wall=200.0) is TOKEN_EXPIRED


def test_a_refreshed_token_that_expires_earlier_shortens_the_session() -> None:
    rules = rules_of(expires_at=1000.0)
    assert rules.token_refreshed("ada", 500.0, allowed=True) is ACCEPT
    assert rules.expires_at == 500.0
    assert rules.due(now=0.0, wall=499.0) == Expiring(500.0)
    assert rules.due(now=0.0, wall=500.0) is TOKEN_EXPIRED


def test_a_refresh_for_another_principal_closes_4001_and_changes_nothing() -> None:
    rules = rules_of(expires_at=100.0)
    assert rules.token_refreshed("mallory", 900.0, allowed=True) is OTHER_PRINCIPAL
    assert rules.expires_at == 100.0


def test_another_principal_is_judged_before_the_access_rules() -> None:
    assert rules_of().token_refreshed("mallory", 900.0, allowed=False) is OTHER_PRINCIPAL


def test_a_refresh_the_access_rules_refuse_closes_4003() -> None:
    rules = rules_of(expires_at=100.0)
    assert rules.token_refreshed("ada", 900.0, allowed=False) is REFRESH_FORBIDDEN
    assert rules.expires_at == 100.0


def test_a_token_that_proves_nothing_closes_4001() -> None:
    assert rules_of().token_refused() is INVALID_TOKEN


# ------------------------------------------------------------------ the backlog


def test_the_queue_takes_max_queued_messages_and_closes_4008_on_one_more() -> None:
    rules = rules_of()  # 3 messages, 100 bytes
    assert [rules.queued(1) for _ in range(3)] == [ACCEPT] * 3
    assert (rules.queued_messages, rules.queued_bytes) == (3, 3)
    assert rules.queued(1) is SLOW_CONSUMER


def test_the_queue_takes_exactly_max_queued_bytes_and_closes_4008_past_them() -> None:
    rules = rules_of()
    assert rules.queued(60) is ACCEPT
    assert rules.queued(40) is ACCEPT  # exactly 100
    fuller = rules_of()
    fuller.queued(60)
    assert fuller.queued(41) is SLOW_CONSUMER
    assert (fuller.queued_messages, fuller.queued_bytes) == (1, 60)  # nothing counted


def test_a_message_alone_in_the_queue_always_fits() -> None:
    rules = rules_of()
    assert rules.queued(10_000) is ACCEPT
    assert rules.queued(1) is SLOW_CONSUMER


def test_written_messages_make_room_and_a_drained_queue_starts_again() -> None:
    rules = rules_of()
    for size in (50, 50):
        rules.queued(size)
    rules.dequeued(50)
    assert (rules.queued_messages, rules.queued_bytes) == (1, 50)
    assert rules.queued(50) is ACCEPT
    rules.drained()
    assert (rules.queued_messages, rules.queued_bytes) == (0, 0)
    assert [rules.queued(1) for _ in range(3)] == [ACCEPT] * 3


# ------------------------------------------------------------------ the timer


def test_nothing_is_due_in_a_fresh_session() -> None:
    assert rules_of().due(now=1.0, wall=0.0) is ACCEPT


def test_the_token_expires_at_its_exp_exactly() -> None:
    rules = rules_of(expires_at=100.0)
    rules.warned = True
    assert rules.due(now=0.0, wall=99.999) is ACCEPT
    assert rules.due(now=0.0, wall=100.0) is TOKEN_EXPIRED


def test_the_warning_comes_once_refresh_before_the_expiry() -> None:
    rules = rules_of(expires_at=100.0)  # refresh_before 30
    assert rules.due(now=0.0, wall=69.9) is ACCEPT
    assert rules.due(now=0.0, wall=70.0) == Expiring(100.0)
    assert rules.warned
    assert rules.due(now=0.0, wall=71.0) is ACCEPT


def test_expiry_comes_before_the_idle_timeout_and_the_warning() -> None:
    rules = rules_of(expires_at=100.0)
    assert rules.due(now=1000.0, wall=100.0) is TOKEN_EXPIRED


def test_the_idle_timeout_counts_from_the_last_message_and_is_strict() -> None:
    rules = rules_of()  # idle_timeout 60
    rules.received(1, now=10.0)
    assert rules.due(now=70.0, wall=0.0) is ACCEPT  # exactly 60 s
    assert rules.due(now=70.001, wall=0.0) is IDLE


def test_the_idle_timeout_comes_before_the_warning() -> None:
    rules = rules_of(expires_at=100.0)
    assert rules.due(now=61.0, wall=80.0) is IDLE
    assert not rules.warned


def test_an_idle_timeout_of_0_never_closes() -> None:
    limits = SessionLimits(
        max_queued=1,
        max_queued_bytes=1,
        idle_timeout=0.0,
        refresh_before=0.0,
        ping_interval=0.0,
        ping_timeout=1.0,
    )
    assert rules_of(limits=limits).due(now=1e9, wall=0.0) is ACCEPT


# ------------------------------------------------------------------ keepalive


def test_a_ping_goes_out_after_ping_interval_without_a_message_or_a_ping() -> None:
    rules = rules_of()  # ping_interval 20, timeout 10
    assert rules.keepalive(now=19.9, ping_pending_since=0.0, last_ping_sent=0.0) is ACCEPT
    assert rules.keepalive(now=20.0, ping_pending_since=0.0, last_ping_sent=0.0) is PING


def test_a_message_or_a_recent_ping_puts_the_next_ping_off() -> None:
    rules = rules_of()
    rules.received(1, now=15.0)
    assert rules.keepalive(now=30.0, ping_pending_since=0.0, last_ping_sent=0.0) is ACCEPT
    assert rules.keepalive(now=35.0, ping_pending_since=0.0, last_ping_sent=0.0) is PING
    assert rules.keepalive(now=40.0, ping_pending_since=0.0, last_ping_sent=30.0) is ACCEPT


def test_a_ping_unanswered_past_ping_timeout_ends_the_connection_with_1011() -> None:
    rules = rules_of()
    assert rules.keepalive(now=30.0, ping_pending_since=20.0, last_ping_sent=20.0) is ACCEPT
    assert rules.keepalive(now=30.001, ping_pending_since=20.0, last_ping_sent=20.0) is NO_PONG


def test_no_ping_with_a_ping_interval_of_0() -> None:
    limits = SessionLimits(
        max_queued=1,
        max_queued_bytes=1,
        idle_timeout=0.0,
        refresh_before=0.0,
        ping_interval=0.0,
        ping_timeout=1.0,
    )
    rules = rules_of(limits=limits)
    assert rules.keepalive(now=1e9, ping_pending_since=1.0, last_ping_sent=0.0) is ACCEPT
