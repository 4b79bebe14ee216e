"""When a failed call is tried again, and when a restarted node waits.

Retry rule: only methods marked idempotent are retried, only when the node was
unavailable (it never ran the handler as far as the caller can tell, or it died), only on
another node, and only while the deadline leaves time. Everything else fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wiremesh.core.defaults import RESTART_INITIAL_BACKOFF, RESTART_MAX_BACKOFF, RESTART_RESET_AFTER
from wiremesh.errors import Status

__all__ = ["Backoff", "Draws", "should_retry"]

MAX_ATTEMPTS = 3


class Draws(Protocol):
    """Where a jitter's uniform draw in [0, 1) comes from: the caller's ``random.Random()``
    (the core reads no random source of its own)."""

    def random(self) -> float: ...


def should_retry(
    status: Status,
    *,
    idempotent: bool,
    attempt: int,
    remaining: float,
    nodes_left: int,
    max_attempts: int = MAX_ATTEMPTS,
) -> bool:
    """Whether a call that failed with ``status`` on its ``attempt``-th try (1-based) goes on."""
    return (
        idempotent
        and status is Status.UNAVAILABLE
        and attempt < max_attempts
        and remaining > 0
        and nodes_left > 0
    )


@dataclass
class Backoff:
    """Exponential backoff with full jitter for restarting a node that keeps dying.

    ``next_delay()`` gives the wait before the next start; a node that ran for
    ``reset_after`` seconds is healthy again and its next failure starts from scratch.
    """

    initial: float = RESTART_INITIAL_BACKOFF
    maximum: float = RESTART_MAX_BACKOFF
    reset_after: float = RESTART_RESET_AFTER
    failures: int = 0

    def next_delay(self, ran_for: float, rng: Draws) -> float:
        """The wait before the next start; ``rng`` gives the jitter's uniform draw."""
        if ran_for >= self.reset_after:
            self.failures = 0
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.failures, 64))
        self.failures += 1
        low = self.initial / 2
        return low + rng.random() * max(0.0, ceiling - low)
