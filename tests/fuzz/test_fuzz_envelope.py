"""What a browser sends: the request/reply envelope inside binary messages (core/envelope.py)
and the text messages of the gateway's control channel, with the tokens they carry
(gateway/connection.py, gateway/auth.py; docs/protocol.md §13.3).

A browser is the least trusted peer of all. A binary message is an envelope or an ordinary
message, never an error; a text message is a control message, an ordinary text message or
a close with a documented code (1003, 4001, 4003), never an exception in the middle of
reading a socket; a token is an identity or ``Unauthenticated``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import Pipe, a_gateway, a_session, json_values, mutated
from wiremesh.core import envelope
from wiremesh.errors import Unauthenticated
from wiremesh.gateway.auth import mint_token
from wiremesh.gateway.connection import Connection
from wiremesh.gateway.frame_stream import FrameStream
from wiremesh.testing import gateway_settings

FUZZ = settings.get_profile("wiremesh-fuzz")

# ------------------------------------------------------------------ the binary envelope


_kinded = st.builds(
    lambda kind, rest: bytes((kind,)) + rest, st.sampled_from(b"RAE"), st.binary(max_size=40)
)


@FUZZ
@given(message=st.one_of(st.binary(max_size=40), _kinded))
def test_any_binary_message_is_an_envelope_or_an_ordinary_message(message: bytes) -> None:
    found = envelope.parse(message)
    if found is None:
        assert len(message) < 5 or message[0] not in (envelope.REQUEST, envelope.REPLY, 0x45)
        return
    assert found.kind == message[0]
    assert 0 <= found.id < 2**32
    assert envelope.request(found.id, found.payload)[1:] == message[1:]
    assert (envelope.parse_request(message) is not None) == (found.kind == envelope.REQUEST)


@FUZZ
@given(correlation=st.integers(0, 2**32 - 1), payload=st.binary(max_size=40))
def test_an_envelope_reads_back_as_it_was_written(correlation: int, payload: bytes) -> None:
    for kind, wrap in ((envelope.REQUEST, envelope.request), (envelope.REPLY, envelope.reply)):
        assert envelope.parse(wrap(correlation, payload)) == (kind, correlation, payload)


# ------------------------------------------------------------------ the control channel

SECRET = "fuzz-secret-" + "x" * 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: Any, claims: Any) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.c2ln"


_good = st.builds(
    lambda subject, ttl: mint_token(SECRET, subject=subject, ttl=ttl),
    subject=st.sampled_from(["ada", "bob", ""]),
    ttl=st.floats(-10, 3600),
)
_tokens = st.one_of(
    st.text(max_size=60),
    _good,
    _good.flatmap(lambda t: mutated(t.encode())).map(lambda b: b.decode("ascii", "replace")),
    st.builds(
        _forged,
        header=st.one_of(
            st.fixed_dictionaries({"alg": st.sampled_from(["HS256", "none", "RS256", "ES256"])}),
            json_values,
        ),
        claims=st.one_of(
            st.dictionaries(st.sampled_from(["sub", "exp", "nbf"]), json_values), json_values
        ),
    ),
    st.integers(1, 3000).map(lambda depth: f"{_b64(b'[' * depth)}.{_b64(b'{}')}.c2ln"),
)
_controls = st.one_of(
    st.text(max_size=40),
    json_values.map(json.dumps),
    st.builds(lambda token: json.dumps({"wm": "refresh", "token": token}), _tokens),
    st.fixed_dictionaries({"wm": json_values}, optional={"token": json_values}).map(json.dumps),
    json_values.map(lambda v: json.dumps({"wm": "refresh", "token": v}))
    .flatmap(lambda t: mutated(t.encode()))
    .map(lambda b: b.decode("utf-8", "replace")),
    st.integers(1, 100_000).map(lambda depth: '{"wm": ' + "[" * depth),
)

#: what a text message may end a session with (docs/protocol.md §13.4)
CONTROL_CLOSES = {1003, 4001, 4003}


async def read_text(
    messages: list[str], *, takes_text: bool
) -> tuple[Connection, list[dict[str, Any]]]:
    """Hand ``messages`` to a session of ada's, as its WebSocket would; the session, and
    what its browser was sent."""
    sent: list[dict[str, Any]] = []

    async def asgi_send(event: dict[str, Any]) -> None:
        sent.append(event)

    async with a_gateway(auth={"secret": SECRET}) as gateway:
        stream = FrameStream(Pipe([]), local_id="gw-1", on_batch=lambda s, f: None)
        connection = a_session(gateway, stream, 1, "ada", asgi_send, text=takes_text)
        for message in messages:
            connection.on_message(message)
        await asyncio.sleep(0)
    return connection, sent


@FUZZ
@given(messages=st.lists(_controls, min_size=1, max_size=3), takes_text=st.booleans())
def test_any_text_message_is_control_text_or_a_documented_close(
    messages: list[str], takes_text: bool
) -> None:
    connection, sent = asyncio.run(read_text(messages, takes_text=takes_text))
    if connection.closed:
        assert connection.close_code in CONTROL_CLOSES
    elif not takes_text:  # every message was a good refresh, and was answered
        assert sent and all(json.loads(e["text"])["wm"] == "refreshed" for e in sent)


def test_a_control_message_nested_60000_deep_closes_the_session_1003() -> None:
    # issue 14, item 14: it raised RecursionError inside the protocol's data_received
    connection, _ = asyncio.run(read_text(['{"wm": ' + "[" * 60_000], takes_text=False))
    assert connection.close_code == 1003


@FUZZ
@given(token=_tokens)
def test_any_token_is_an_identity_or_unauthenticated(token: str) -> None:
    from wiremesh.gateway.auth import TokenVerifier

    verifier = TokenVerifier(gateway_settings(auth={"secret": SECRET}).auth)
    try:
        identity = verifier.verify(token)
    except Unauthenticated as exc:
        assert len(token) < 16 or token not in exc.message  # the reason, never the token
        return
    assert isinstance(identity.principal, str) and identity.principal
    assert isinstance(identity.expires_at, float)
