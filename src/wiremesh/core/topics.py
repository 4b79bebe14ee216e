"""Topic patterns for publish: ``prices.*`` and ``prices.#``.

Topics are dot-separated words (``prices.eu.sku-1``). In a pattern, ``*`` stands for
exactly one word and ``#`` for zero or more words — the same rules as an AMQP topic
exchange, so that a pattern means the same thing for publish and for durable events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from wiremesh.errors import InvalidPayload

__all__ = ["check_pattern", "check_topic", "matches", "matching"]

_WORD = re.compile(r"^[A-Za-z0-9_:-]+$")


def check_topic(topic: str) -> str:
    """``topic`` if it is a valid topic to publish to, else :class:`InvalidPayload`."""
    words = topic.split(".")
    if not topic or not all(_WORD.fullmatch(w) for w in words):
        raise InvalidPayload(
            f"bad topic {topic!r}: dot-separated words of letters, digits, '_', ':' and '-'"
        )
    return topic


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a valid subscription pattern, else :class:`InvalidPayload`."""
    words = pattern.split(".")
    if not pattern or not all(w in ("*", "#") or _WORD.fullmatch(w) for w in words):
        raise InvalidPayload(
            f"bad topic pattern {pattern!r}: dot-separated words, '*' for one word, "
            "'#' for any number of words"
        )
    return pattern


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern``."""
    return _match_words(tuple(pattern.split(".")), tuple(topic.split(".")))


@lru_cache(maxsize=16384)
def _match_words(pattern: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match_words(rest, topic[i:]) for i in range(len(topic) + 1))
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and _match_words(rest, topic[1:])


def matching(patterns: Iterable[str], topic: str) -> bool:
    """Whether any of ``patterns`` matches ``topic``."""
    return any(matches(p, topic) for p in patterns)
