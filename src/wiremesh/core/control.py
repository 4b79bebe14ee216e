"""The gateway's control channel: text messages that are a JSON object with a ``"wm"``
key (no I/O).

From the browser, ``{"wm": "refresh", "token": "<JWT>"}``; from the gateway,
``{"wm": "refreshed", "exp": ...}`` and ``{"wm": "expiring", "exp": ...}``. Any other text
message is an ordinary one (``docs/protocol.md``, 13.3)::

    >>> parse('{"wm": "refresh", "token": "t"}')
    {'wm': 'refresh', 'token': 't'}
    >>> parse("hello") is None
    True

The decoder is bounded in depth (pydantic-core's, which gives up past about 200 levels
with a ``ValueError``): a text nested deeper than that is an ordinary text message, never
a ``RecursionError`` in the middle of reading a socket::

    >>> parse('{"wm": ' + "[" * 60_000) is None
    True
"""

from __future__ import annotations

from typing import Any

import pydantic_core

__all__ = ["parse"]


def parse(text: str) -> dict[str, Any] | None:
    """The control message ``text`` is, or None when it is an ordinary text message (not
    JSON, nested too deeply, or not an object with a ``"wm"`` key)."""
    if not text.startswith("{"):
        return None
    try:
        command = pydantic_core.from_json(text)
    except ValueError:  # not JSON, or nested too deeply: the decoder stops at its bound
        return None
    if isinstance(command, dict) and "wm" in command:
        return command
    return None
