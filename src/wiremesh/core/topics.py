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
    """Whether ``topic`` matches ``pattern``. Time grows with the product of their word
    counts at worst, memory not at all: no recursion, no copies, whatever their length
    (topics reach here from other processes unchecked)."""
    if len(pattern) + len(topic) > _CACHED_UP_TO:
        return _match_words(pattern.split("."), topic.split("."))
    return _cached(pattern, topic)


#: longest pattern and topic (together, in characters) whose answer is remembered: the
#: cache then holds at most 16,384 such pairs, a few MB, whatever the traffic
_CACHED_UP_TO = 256


@lru_cache(maxsize=16384)
def _cached(pattern: str, topic: str) -> bool:
    return _match_words(pattern.split("."), topic.split("."))


def _match_words(pattern: list[str], topic: list[str]) -> bool:
    """Wildcard matching, one pass with one point to go back to: ``#`` is any run of
    words (the last ``#`` seen is where a mismatch resumes, one word further each time),
    ``*`` exactly one word."""
    p = t = 0
    hash_at, resume = -1, 0  # the last '#' of the pattern, and where its run ends now
    while t < len(topic):
        if p < len(pattern) and pattern[p] == "#":
            hash_at, resume = p, t
            p += 1
        elif p < len(pattern) and pattern[p] in ("*", topic[t]):
            p += 1
            t += 1
        elif hash_at >= 0:  # let the last '#' take one more word, and try again
            resume += 1
            p, t = hash_at + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "#":
        p += 1
    return p == len(pattern)


def matching(patterns: Iterable[str], topic: str) -> bool:
    """Whether any of ``patterns`` matches ``topic``."""
    return any(matches(p, topic) for p in patterns)
